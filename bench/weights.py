"""Other tools' weights in dnetc's networks of the same name: each reference model, randomly
initialised, is saved as a torch file and as a safetensors file, loaded into dnetc's network with
`--weights`'s loader, and both are run on the same batch. The table gives how the names were mapped
and the largest difference of the outputs.

    python bench/weights.py --out bench/results                        # timm's, where installed
    python bench/weights.py --hardnet ~/Pytorch-HarDNet --out bench/results   # and PingoLH's HarDNet

`--hardnet` is a checkout of github.com/PingoLH/Pytorch-HarDNet (the paper's code and torch.hub
weights); its `hardnet.py` is imported from there, never copied.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed

sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from common import machine  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from dnetc import compiler  # noqa: E402
from dnetc.runtime import weights  # noqa: E402

TIMM = [
    "densenet121",
    "densenetblur121d",
    "vovnet39a",
    "vovnet57a",
    "ese_vovnet19b_dw",
    "ese_vovnet39b",
    "dpn68",
    "dpn92",
]
# PingoLH's HarDNet(depth_wise, arch) for each of dnetc's HarDNets
HARDNET = {"hardnet68": (False, 68), "hardnet85": (False, 85), "hardnet68ds": (True, 68), "hardnet39ds": (True, 39)}


def references(hardnet: Path | None) -> Iterator[tuple[str, str, Callable[[], torch.nn.Module]]]:
    """(tool, dnetc's name, a builder of the tool's model) for what is at hand."""
    try:
        import timm
    except ImportError:
        print("timm is not installed: its models are left out", file=sys.stderr)
    else:
        for name in TIMM:
            yield "timm", name, lambda name=name: timm.create_model(name, pretrained=False)
    if hardnet is not None:
        sys.path.insert(0, str(hardnet))
        import hardnet as pingolh

        for name, (depth_wise, arch) in HARDNET.items():
            yield "PingoLH", name, lambda d=depth_wise, a=arch: pingolh.HarDNet(depth_wise=d, arch=a, pretrained=False)


def compare(build: Callable[[], torch.nn.Module], name: str, size: int, folder: Path) -> list[dict]:
    torch.manual_seed(0)
    reference = build().eval()
    state = reference.state_dict()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
    rows = []
    for kind in ("pth", "safetensors"):
        path = folder / f"{name}.{kind}"
        if kind == "pth":
            torch.save(state, path)
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, path)
        model = compiler.compile(name).eval()
        try:
            given = weights.read(path)
            found = weights.renamed(model.state_dict(), given) if set(given) != set(model.state_dict()) else None
            mapped, given = (found[1], found[0]) if found else ("by name", given)
            count = weights.load_into(model, given)
        except weights.WeightsError as e:
            rows.append({"file": kind, "tensors": len(state), "mapped": "refused", "diff": None, "why": str(e)[:200]})
            continue
        with torch.no_grad():
            diff = (model(x) - expected).abs().max().item()
        rows.append({"file": kind, "tensors": count, "mapped": mapped, "diff": diff})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hardnet", type=Path, help="a checkout of PingoLH/Pytorch-HarDNet")
    p.add_argument("--models", nargs="+", help="only these of dnetc's names (default: every one at hand)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for tool, name, build in references(args.hardnet):
            if args.models and name not in args.models:
                continue
            for row in compare(build, name, args.size, Path(folder)):
                results.append({"tool": tool, "model": name, **row})
                print(results[-1], flush=True)
    command = "python bench/weights.py" + (" --hardnet PATH" if args.hardnet else "")
    lines = [
        f"Machine: {machine('cpu')}. torch {torch.__version__}. Command: `{command}`.",
        f"Batch of 2 at {args.size}x{args.size}, float32; weights randomly initialised by the tool.",
        "",
        "| tool | model | file | tensors | names mapped | max abs diff of outputs |",
        "|---|---|---|---:|---|---:|",
    ]
    for r in results:
        diff = "refused" if r["diff"] is None else f"{r['diff']:.1e}"
        lines.append(f"| {r['tool']} | {r['model']} | {r['file']} | {r['tensors']} | {r['mapped']} | {diff} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "weights-cpu.json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    (args.out / "weights-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
