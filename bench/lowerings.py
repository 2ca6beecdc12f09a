"""The memory lowerings on the networks beyond DenseNet-BC: equal to naive, and what they save.

For group norm + SiLU DenseNet-BC, PeleeNet's two-way layers, FC-DenseNet's skips and a 3D
DenseNet, on the CPU or CUDA:
  1. one float32 training step of each lowering against naive (same weights, input and dropout; TF32
     off): the relative difference of the output and all gradients (naive against itself shows the
     device's own run-to-run noise), and each one's error against naive in float64 (a lowering whose
     arithmetic runs in another order, as fused's does, is held to naive's own float32 error);
  2. one bf16-autocast step on CUDA: a finite loss;
  3. the peak memory of a step (CUDA: max_memory_allocated above the model; CPU: not measured) and
     the median step time, the lowerings interleaved step by step so that drift cancels.

    python bench/lowerings.py --device cuda --out bench/results
    python bench/lowerings.py --small          # a quick run at reduced sizes (what the tests run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import hubconf  # noqa: F401 - this checkout as `dnetc` where dnetc is not installed
from dnetc import compiler, dsl
from dnetc.compiler.lowerings import LOWERINGS as RECORDS

LOWERINGS = tuple(RECORDS)  # naive first: the baseline
CASES = {  # name: (spec, overrides, batch); --small shrinks them
    "densenet_bc group(2) silu": ("densenet_bc", {"norm": "group(2)", "act": "silu"}, 64),
    "peleenet": ("peleenet", {}, 32),
    "fc_densenet103": ("fc_densenet103", {}, 4),
    "densenet121_3d": ("densenet121_3d", {"size": 64}, 2),
}
SMALL = {
    "densenet_bc": {"depth": 16, "size": 16},
    "peleenet": {"blocks": [1, 1, 1, 1], "size": 64},
    "fc_densenet103": {"down": [2, 2], "middle": 2, "up": [2, 2], "size": 32},
    "densenet121_3d": {"blocks": [1, 1, 1, 1], "size": 32},
}


def step(model: torch.nn.Module, x: torch.Tensor, autocast: bool = False) -> tuple[torch.Tensor, list]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks for every lowering
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    loss = out.float().square().mean()
    loss.backward()
    return loss.detach(), [out.detach().float(), *(p.grad.float() for p in model.parameters())]


def relative(a: list, b: list) -> float:
    """||a - b|| / ||b|| over the output and every gradient together. (Per tensor, biases that feed a
    batch norm, whose gradients are zero but for rounding, would make noise look like error.)"""
    got, want = torch.cat([x.flatten() for x in a]), torch.cat([y.flatten() for y in b])
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def run_case(name: str, spec: str, overrides: dict, batch: int, device: str, steps: int) -> dict:
    net = dsl.load(spec, **overrides)
    shape = tuple(compiler.build_graph(net).nodes["input"]["shape"])
    torch.manual_seed(0)
    models = {m: compiler.compile(net, memory=m).to(device) for m in LOWERINGS}
    state = models["naive"].state_dict()
    for m in LOWERINGS:
        models[m].load_state_dict(state)
    x = torch.randn(batch, *shape, device=device)
    row: dict = {"name": name, "batch": batch, "input": "x".join(map(str, shape)), "lowerings": {}}
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    _, reference = step(models["naive"], x)
    exact = compiler.compile(net).to(device, torch.float64)  # naive in float64: the truth to ~1e-15
    exact.load_state_dict(state)
    _, truth = step(exact, x.double())
    del exact
    for m in LOWERINGS:
        _, got = step(models[m], x)
        row["lowerings"][m] = {
            "max_relative_difference": relative(got, reference),
            "error_vs_float64": relative([g.double() for g in got], truth),
        }
    if device == "cuda":
        for m in LOWERINGS:
            loss, _ = step(models[m], x, autocast=True)
            row["lowerings"][m]["bf16_loss_finite"] = bool(torch.isfinite(loss))
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    times: dict[str, list[float]] = {m: [] for m in LOWERINGS}
    peaks: dict[str, int] = {}
    for i in range(steps + 1):  # the first round warms up
        for m in LOWERINGS:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            step(models[m], x)
            if device == "cuda":
                torch.cuda.synchronize()
                peaks[m] = torch.cuda.max_memory_allocated() - base
            if i:
                times[m].append(time.perf_counter() - t0)
    for m in LOWERINGS:
        entry = row["lowerings"][m]
        entry["step_s"] = statistics.median(times[m])
        entry["step_vs_naive"] = entry["step_s"] / statistics.median(times["naive"])
        if peaks:
            entry["peak_mib"] = peaks[m] / 2**20
            entry["peak_vs_naive"] = peaks[m] / peaks["naive"]
    del models
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict], device: str) -> str:
    lines = [
        f"Lowerings beyond DenseNet-BC, {device}: one step each, float32 (bf16 autocast checked on CUDA)",
        "",
        "| network | batch | lowering | rel. difference vs naive | error vs float64 | peak memory | vs naive | step "
        "| vs naive |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for m, e in r["lowerings"].items():
            peak = f"{e['peak_mib']:,.0f} MiB" if "peak_mib" in e else "-"
            ratio = f"{e['peak_vs_naive']:.2f}x" if "peak_vs_naive" in e else "-"
            lines.append(
                f"| {r['name']} ({r['input']}) | {r['batch']} | {m} | {e['max_relative_difference']:.1e} | "
                f"{e['error_vs_float64']:.1e} | {peak} | "
                f"{ratio} | {e['step_s']:.3f} s | {e['step_vs_naive']:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--small", action="store_true", help="reduced networks and batches: a quick check")
    p.add_argument("--out", help="write lowerings-<device>.json and .md here")
    args = p.parse_args()
    rows = []
    for name, (spec, overrides, batch) in CASES.items():
        if args.small:
            overrides, batch = {**overrides, **SMALL[spec]}, 2
        row = run_case(name, spec, overrides, batch, args.device, args.steps)
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = markdown(rows, torch.cuda.get_device_name() if args.device == "cuda" else args.device)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"lowerings-{args.device}.json").write_text(json.dumps(rows, indent=2))
        (out / f"lowerings-{args.device}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
