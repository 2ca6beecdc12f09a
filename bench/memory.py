"""Benchmark: peak training memory and step time of each lowering, side by side.

    python bench/memory.py                      # CPU (and CUDA when present), writes bench/results/
    python bench/memory.py --quick              # a small run to try it out

Each (model, lowering) runs in a fresh subprocess, so that its peak memory is its own: on CUDA
`torch.cuda.max_memory_allocated` above what was allocated before the step, on the CPU the rise of
the peak resident set size during the first step. Step time is the median of the timed steps that
follow a warm-up step (forward, backward and SGD step). The graph's estimate is reported beside
each measurement. Writes JSON, a Markdown table and a PNG of memory against depth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOWERINGS = ("naive", "checkpoint", "shared")
# glibc keeps freed blocks of up to 32 MB in its heap once its thresholds adapt, so that the resident
# set stays high after tensors are freed; fixed thresholds return every large block to the system,
# and the peak resident set then follows the bytes the step really holds.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def suite(quick: bool, device: str) -> list[dict]:
    """(spec, overrides, batch) of every run: DenseNet-BC over depth at k=12 and k=40, then zoo models."""
    gpu = device == "cuda"
    runs = []
    depths12 = [40, 100] if quick else [40, 70, 100, 160, 250]
    depths40 = [40] if quick else [40, 100, 190]
    for d in depths12:
        runs.append({"spec": "densenet_bc", "set": {"depth": d, "growth": 12}, "batch": 64 if not quick else 16})
    for d in depths40:
        runs.append({"spec": "densenet_bc", "set": {"depth": d, "growth": 40}, "batch": 64 if gpu else 8})
    if not quick:
        for name in ("densenet_40_12", "wide_densenet_bc_40_36"):
            runs.append({"spec": name, "set": {}, "batch": 64})
        for name in ("densenet121", "densenet169"):
            runs.append({"spec": name, "set": {}, "batch": 256 if gpu else 8})
    return runs


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(spec: str, overrides: dict, batch: int, lowering: str, device: str, steps: int) -> dict:
    """One (model, lowering) in this process: peak memory of the first step, median step time."""
    import torch

    import compiler
    import dsl
    from compiler.estimate import estimate

    torch.manual_seed(0)
    network = dsl.load(spec, **overrides)
    g = compiler.build_graph(network)
    model = compiler.compile(network, memory=lowering).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, *g.nodes["input"]["shape"], device=device)
    classes = g.nodes[g.graph["output"]]["shape"][0]
    y = torch.randint(0, classes, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        import gc

        gc.collect()
        before = _rss()
        high_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = high - before if high > high_before else None
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    est = estimate(g, lowering, batch, "float32", device)
    return {
        "spec": spec,
        "set": overrides,
        "name": g.graph["name"] + "".join(f" {k}={v}" for k, v in overrides.items()),
        "depth": overrides.get("depth"),
        "growth": overrides.get("growth"),
        "batch": batch,
        "lowering": lowering,
        "device": device,
        "params": g.graph["params"],
        "peak_bytes": peak,
        "estimated_bytes": est.training,
        "feature_bytes": sum(4 * batch * _prod(d["shape"]) for n, d in g.nodes(data=True) if n.endswith(".cat")),
        "step_s": statistics.median(times),
    }


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def child(args: argparse.Namespace) -> None:
    run = json.loads(args.child)
    print(json.dumps(measure(run["spec"], run["set"], run["batch"], run["lowering"], run["device"], args.steps)))


def machine(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def table(results: list[dict], device: str) -> str:
    lines = [
        f"Peak training-step memory and step time, {device} ({machine(device)}), float32, SGD:",
        "",
        "| model | batch | lowering | peak memory | vs naive | estimate error | step time | vs naive |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    by_model: dict[str, dict[str, dict]] = {}
    for r in results:
        by_model.setdefault(r["name"], {})[r["lowering"]] = r
    for name, rows in by_model.items():
        base = rows.get("naive")
        for lowering in LOWERINGS:
            r = rows.get(lowering)
            if r is None:
                continue
            peak = r["peak_bytes"]
            mem = f"{peak / 2**20:,.0f} MiB" if peak else "n/a"
            ratio = f"{peak / base['peak_bytes']:.2f}x" if peak and base and base["peak_bytes"] else ""
            err = f"{(r['estimated_bytes'] - peak) / peak:+.0%}" if peak else ""
            speed = f"{r['step_s'] / base['step_s']:.2f}x" if base else ""
            lines.append(
                f"| {name} | {r['batch']} | {lowering} | {mem} | {ratio} | {err} | {r['step_s']:.3f} s | {speed} |"
            )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, growth in zip(axes, (12, 40), strict=True):
        rows = [r for r in results if r["spec"] == "densenet_bc" and r["growth"] == growth and r["peak_bytes"]]
        for lowering, style in zip(LOWERINGS, ("o-", "s--", "^-"), strict=True):
            pts = sorted((r["depth"], r["peak_bytes"] / 2**30) for r in rows if r["lowering"] == lowering)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=lowering)
        batch = rows[0]["batch"] if rows else "?"
        ax.set(title=f"DenseNet-BC, k={growth}, batch {batch}", xlabel="depth L", ylabel="peak training memory (GiB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few small runs")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step (default 3)")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import torch

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    args.out.mkdir(parents=True, exist_ok=True)
    for device in devices:
        results = []
        for run in suite(args.quick, device):
            for lowering in LOWERINGS:
                spec = json.dumps({**run, "lowering": lowering, "device": device})
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", spec, "--steps", str(args.steps)],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT), **MALLOC},
                )
                if proc.returncode != 0:
                    print(f"failed: {spec}\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(r)
                peak = f"{r['peak_bytes'] / 2**20:,.0f} MiB" if r["peak_bytes"] else "n/a"
                print(
                    f"{device} {r['name']:<34} batch {r['batch']:>3} {lowering:<10} {peak:>12} {r['step_s']:.3f} s",
                    flush=True,
                )
        stem = args.out / f"memory-{device}{'-quick' if args.quick else ''}"
        stem.with_suffix(".json").write_text(json.dumps({"machine": machine(device), "results": results}, indent=2))
        stem.with_suffix(".md").write_text(table(results, device) + "\n")
        plot(results, stem.with_suffix(".png"))
        print(table(results, device))


if __name__ == "__main__":
    main()
