"""Which training steps the trainer captures as CUDA graphs, and whether the graphs train as the
eager steps do: every lowering x dropout x precision, the trainer run twice from the same seed,
with and without graphs, for the same steps; what the trainer said when it could not capture.

    python bench/graphs.py --device cuda --out bench/results     # an H200: about a minute

Compares the final parameters (the largest difference relative to the tensor's largest value) and
the training loss the two runs report. With dropout the graph draws its masks from other offsets of
the same generator, so those rows differ by more than rounding and are compared by loss only.
On the CPU there are no graphs: the rows say so (a dry run of the script).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed

sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402

from dnetc.runtime.launch import plan  # noqa: E402
from dnetc.runtime.train import Trainer  # noqa: E402


def trained(
    lowering: str, dropout: float, precision: str, graphs: bool, device: str, steps: int, depth: int, batch: int
) -> dict[str, Any]:
    said = io.StringIO()
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(said):
        flags = {"device": device, "precision": precision, "memory": lowering, "cuda_graphs": None if graphs else False}
        flags |= {"max_steps": steps, "epochs": 1, "channels_last": precision == "bf16", "batch_size": batch}
        overrides = {"depth": depth, "growth": 12, "dropout": dropout}
        t = Trainer(plan("densenet_bc", "fake_cifar", overrides=overrides, flags=flags, out=out))
        started = time.perf_counter()
        result = t.train()
        seconds = time.perf_counter() - started
        loss = t.meter.read()
    return {
        "captured": len(t.train_step.graphs),
        "said": [line for line in said.getvalue().splitlines() if "graph" in line],
        "params": {k: v.detach().float().cpu() for k, v in t.model.state_dict().items() if v.is_floating_point()},
        "train_loss": loss.loss / max(loss.seen, 1),
        "s_per_step": result.get("s_per_step"),
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lowerings", default="naive,checkpoint,shared")
    p.add_argument("--depth", type=int, default=40, help="of the DenseNet-BC (k = 12)")
    p.add_argument("--dropouts", default="0.0,0.2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows = []
    for lowering in args.lowerings.split(","):
        for dropout in map(float, args.dropouts.split(",")):
            for precision in args.precisions.split(","):
                graph = trained(lowering, dropout, precision, True, args.device, args.steps, args.depth, args.batch)
                eager = trained(lowering, dropout, precision, False, args.device, args.steps, args.depth, args.batch)
                worst = max(
                    float(
                        (graph["params"][k] - eager["params"][k]).abs().max()
                        / eager["params"][k].abs().max().clamp_min(1e-12)
                    )
                    for k in eager["params"]
                )
                rows.append(
                    {
                        "lowering": lowering,
                        "dropout": dropout,
                        "precision": precision,
                        "batch": args.batch,
                        "graphs_captured": graph["captured"],
                        "said": graph["said"],
                        "max_relative_difference": worst,
                        "train_loss_graph": graph["train_loss"],
                        "train_loss_eager": eager["train_loss"],
                        "s_per_step_graph": graph["s_per_step"],
                        "s_per_step_eager": eager["s_per_step"],
                    }
                )
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "said"}), flush=True)
                if args.out:  # after each row: a run cut short keeps what it measured
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / f"graphs-{args.device}.json").write_text(json.dumps(rows, indent=2))
                    table = markdown(rows, args.device, args.steps, args.depth)
                    (args.out / f"graphs-{args.device}.md").write_text(table + "\n")
    print(markdown(rows, args.device, args.steps, args.depth))


def markdown(rows: list[dict[str, Any]], device: str, steps: int, depth: int) -> str:
    lines = [
        f"CUDA graphs in the trainer on {machine(device)}, torch {torch.__version__}: DenseNet-BC-{depth}-12 at "
        f"batch {rows[0]['batch'] if rows else 64} on fake_cifar, {steps} steps with graphs and without",
        "",
        "| lowering | dropout | precision | graphs | params vs eager | train loss, graph / eager "
        "| s/step, graph / eager |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        pace = (
            f"{r['s_per_step_graph']:.4f} / {r['s_per_step_eager']:.4f}"
            if r["s_per_step_graph"] and r["s_per_step_eager"]
            else "-"
        )
        lines.append(
            f"| {r['lowering']} | {r['dropout']} | {r['precision']} | {r['graphs_captured']} | "
            f"{r['max_relative_difference']:.1e} | {r['train_loss_graph']:.5f} / {r['train_loss_eager']:.5f} | {pace} |"
        )
    notes = sorted({line for r in rows for line in r["said"] if "cannot" in line or "no CUDA graphs" in line})
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


if __name__ == "__main__":
    main()
