"""GPU training benchmark: DenseNet-BC-100-12 on CIFAR-shaped fake data, each speed configuration
side by side, against the authors' TitanX (0.156 s/iter, 5452 MB at batch 64); then dnetc's
densenet121 against torchvision's at ImageNet size with the same settings.

    python bench/gpu.py --out bench/results          # on a CUDA machine (one call, a few minutes)
    python bench/gpu.py --device cpu --steps 3       # a dry run anywhere

Each configuration trains for a fixed number of steps after warm-up (SGD, Nesterov) and reports the
median s/iter, the peak memory of the timed steps (`torch.cuda.max_memory_allocated`; on the CPU, a
dry run, memory is not reported: bench/memory.py measures it) and the model FLOP utilisation: 6 x
MACs x batch FLOPs a step (forward 2 x MACs, backward twice that) over the device's dense bf16 peak.
Configurations run in turn in one process, each after the others' memory is freed. Writes
gpu-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import mfu, peak_tflops, torchvision_model  # noqa: E402

import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed
from dnetc import compiler, dsl  # noqa: E402

CONFIGS = [
    {"name": "fp32, naive", "precision": None, "channels_last": False, "compile": False, "memory": "naive"},
    {
        "name": "bf16 + channels_last",
        "precision": torch.bfloat16,
        "channels_last": True,
        "compile": False,
        "memory": "naive",
    },
    {
        "name": "bf16 + channels_last + compile",
        "precision": torch.bfloat16,
        "channels_last": True,
        "compile": True,
        "memory": "naive",
    },
    {
        "name": "bf16 + channels_last, shared",
        "precision": torch.bfloat16,
        "channels_last": True,
        "compile": False,
        "memory": "shared",
    },
    {"name": "fp32, shared", "precision": None, "channels_last": False, "compile": False, "memory": "shared"},
    {
        "name": "fp32 + compile, CUDA graphs",
        "precision": None,
        "channels_last": False,
        "compile": "reduce-overhead",
        "memory": "naive",
    },
]
AUTHORS = {"s_per_iter": 0.156, "memory_mb": 5452}  # Lua Torch, TitanX, no memory sharing


def measure(cfg: dict, device: str, batch: int, steps: int, spec: str, torchvision: bool = False) -> dict:
    torch.manual_seed(0)
    if torchvision:
        model = torchvision_model(spec).to(device)
    else:
        model = compiler.compile(spec, memory=cfg["memory"]).to(device)
    shape = compiler.build_graph(dsl.load(spec)).nodes["input"]["shape"]
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    mode = cfg["compile"] if isinstance(cfg["compile"], str) else None
    run = torch.compile(model, mode=mode) if cfg["compile"] else model
    x = torch.randn(batch, *shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    dtype = cfg["precision"]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(run(x), y)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: cudnn autotuning, compilation
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"config": cfg["name"], "s_per_iter": statistics.median(times), "peak_mb": peak}


def _mb(mb: float | None) -> str:
    return f"{mb:,.0f} MB" if mb is not None else "n/a"


def _mfu(row: dict, macs: int, batch: int, peak: float | None) -> str:
    u = mfu(macs, batch, row["s_per_iter"], peak)
    return "n/a" if u is None else f"{100 * u:.1f}%"


def compare(device: str, batch: int, steps: int, spec: str) -> list[dict]:
    """dnetc's `spec` against torchvision's model of the same name, eager, each setting."""
    settings = [CONFIGS[0], CONFIGS[1]]
    rows = []
    for cfg in settings:
        for tv in (True, False):
            r = measure(cfg, device, batch, steps, spec, torchvision=tv)
            r["config"] = f"{'torchvision' if tv else 'dnetc'} {spec}, {cfg['name'].removesuffix(', naive')}"
            rows.append(r)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            print(f"{r['config']:<50} {r['s_per_iter']:.4f} s/iter  {_mb(r['peak_mb'])}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--spec", default="densenet_bc_100_12")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--compare", default="densenet121", help="a model torchvision also has ('' for none)")
    p.add_argument("--compare-batch", type=int, help="default 256 on CUDA, 2 for a CPU dry run")
    p.add_argument("--only", nargs="*", help="configurations to run, by name (default: all)")
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    rows = []
    for cfg in CONFIGS:
        if args.only and cfg["name"] not in args.only:
            continue
        if cfg["compile"] and args.device == "cpu":
            continue  # inductor on the CPU takes minutes to compile: a GPU measurement
        r = measure(cfg, args.device, args.batch, args.steps, args.spec)
        gc.collect()  # the configuration's model and optimizer went with measure()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        rows.append(r)
        print(f"{r['config']:<34} {r['s_per_iter']:.4f} s/iter  {_mb(r['peak_mb'])}", flush=True)
    peak = peak_tflops(name)
    macs = compiler.build_graph(dsl.load(args.spec)).graph["macs"]
    base = rows[0]["s_per_iter"]
    lines = [
        f"{args.spec}, batch {args.batch}, {name}, torch {torch.__version__}:",
        "",
        "| configuration | s/iter | vs fp32 naive | peak memory | MFU |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r['config']} | {r['s_per_iter']:.4f} | {r['s_per_iter'] / base:.2f}x | {_mb(r['peak_mb'])} "
            f"| {_mfu(r, macs, args.batch, peak)} |"
            for r in rows
        ),
        f"| authors (Lua Torch, TitanX) | {AUTHORS['s_per_iter']} | | {AUTHORS['memory_mb']:,} MB | |",
    ]
    args.compare_batch = args.compare_batch or (256 if args.device == "cuda" else 2)
    versus = compare(args.device, args.compare_batch, args.steps, args.compare) if args.compare else []
    if versus:
        macs = compiler.build_graph(dsl.load(args.compare)).graph["macs"]
        lines += [
            "",
            f"{args.compare}, batch {args.compare_batch}, eager, the same settings for both:",
            "",
            "| model, configuration | s/iter | images/s | dnetc vs torchvision | peak memory | MFU |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for tv, mine in zip(versus[::2], versus[1::2], strict=True):
            for r in (tv, mine):
                speedup = f"{tv['s_per_iter'] / r['s_per_iter']:.2f}x"
                lines.append(
                    f"| {r['config']} | {r['s_per_iter']:.4f} | {args.compare_batch / r['s_per_iter']:,.0f} "
                    f"| {speedup} | {_mb(r['peak_mb'])} | {_mfu(r, macs, args.compare_batch, peak)} |"
                )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu-{args.device}"
    stem.with_suffix(".json").write_text(
        json.dumps({"device": name, "batch": args.batch, "rows": rows, "compare": versus}, indent=2)
    )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
