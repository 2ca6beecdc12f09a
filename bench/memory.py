"""Benchmark: peak training memory and step time of each lowering, side by side.

    python bench/memory.py                      # CPU (and CUDA when present), writes bench/results/
    python bench/memory.py --quick              # a small run to try it out

Peak memory: each (model, lowering) in a fresh subprocess, one warm-up step, then the rise of
`torch.cuda.max_memory_allocated` (CUDA) or of the peak resident set size (CPU, the peak reset
through /proc/self/clear_refs) during the next step, above the parameters and optimizer state held
before it (activations, gradients, scratch). Step time: the
three lowerings of a model in one subprocess, interleaved step by step so that drift cancels, the
median over the rounds (forward, backward and SGD step). The graph's estimate is reported beside
each measurement. Writes JSON, a Markdown table and a PNG of memory against depth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import machine  # noqa: E402

import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed
from dnetc.compiler.lowerings import LOWERINGS  # noqa: E402

# glibc keeps freed blocks of up to 32 MB in its heap once its thresholds adapt, so that the resident
# set stays high after tensors are freed; fixed thresholds return every large block to the system,
# and the peak resident set then follows the bytes the step really holds.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def suite(quick: bool, device: str) -> list[dict]:
    """(spec, overrides, batch) of every run: DenseNet-BC over depth at k=12 and k=40, then zoo models."""
    gpu = device == "cuda"
    runs = []
    for d in [40, 100] if quick else [40, 70, 100, 160, 250]:
        runs.append({"spec": "densenet_bc", "set": {"depth": d, "growth": 12}, "batch": 16 if quick else 64})
    for d in [40] if quick else [40, 100, 190]:
        runs.append({"spec": "densenet_bc", "set": {"depth": d, "growth": 40}, "batch": 64 if gpu else 8})
    if not quick:
        for name in ("densenet_40_12", "wide_densenet_bc_40_36"):
            runs.append({"spec": name, "set": {}, "batch": 64})
        for name in ("densenet121", "densenet169"):
            runs.append({"spec": name, "set": {}, "batch": 256 if gpu else 8})
    return runs


def _status(field: str) -> int:
    """A size from /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def feature_bytes(g, batch: int) -> int:
    """The total size of the feature maps the dense blocks produce (each block's full output), float32."""
    return sum(4 * batch * _prod(d["shape"]) for _, d in g.nodes(data=True) if d["op"] == "concat" and not d["layer"])


def _setup(spec: str, overrides: dict, batch: int, lowering: str, device: str):
    import torch

    from dnetc import compiler, dsl

    torch.manual_seed(0)
    network = dsl.load(spec, **overrides)
    g = compiler.build_graph(network)
    model = compiler.compile(network, memory=lowering).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, *g.nodes["input"]["shape"], device=device)
    y = torch.randint(0, g.nodes[g.graph["output"]]["shape"][0], (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return g, step, model


def peak_memory(spec: str, overrides: dict, batch: int, lowering: str, device: str) -> dict:
    """Peak memory of a training step above what was held before it, after a warm-up step."""
    import gc

    import torch

    from dnetc.compiler.estimate import estimate

    g, step, model = _setup(spec, overrides, batch, lowering, device)
    step()  # warm-up: one-time allocations, optimizer state
    model.zero_grad(set_to_none=True)  # what the step holds above the parameters and optimizer state
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size
        before = _status("VmRSS")
        step()
        peak = _status("VmHWM") - before
    return {
        "peak_bytes": peak,
        "estimated_bytes": estimate(g, lowering, batch, "float32", device).training,
        "params": g.graph["params"],
        "feature_bytes": feature_bytes(g, batch),
    }


def step_times(spec: str, overrides: dict, batch: int, device: str, rounds: int) -> dict[str, float]:
    """Median step time of each lowering, interleaved round by round so that drift cancels."""
    steps = {lowering: _setup(spec, overrides, batch, lowering, device)[1] for lowering in LOWERINGS}
    times: dict[str, list[float]] = {lowering: [] for lowering in LOWERINGS}
    for step in steps.values():
        step()
    for _ in range(rounds):
        for lowering, step in steps.items():
            t = time.perf_counter()
            step()
            times[lowering].append(time.perf_counter() - t)
    return {lowering: statistics.median(ts) for lowering, ts in times.items()}


def child(args: argparse.Namespace) -> None:
    run = json.loads(args.child)
    if run["what"] == "memory":
        out = peak_memory(run["spec"], run["set"], run["batch"], run["lowering"], run["device"])
    else:
        out = step_times(run["spec"], run["set"], run["batch"], run["device"], args.steps)
    print(json.dumps(out))


def _subprocess(run: dict, steps: int) -> dict | None:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(run), "--steps", str(steps)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            **(MALLOC if run["what"] == "memory" else {}),
        },
    )
    if proc.returncode != 0:
        print(f"failed: {run}\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict], device: str, machine_name: str) -> str:
    lines = [
        f"Training step of each lowering, {device} ({machine_name}), float32, SGD with Nesterov momentum:",
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
            ratio = f"{peak / base['peak_bytes']:.2f}x" if base else ""
            err = f"{(r['estimated_bytes'] - peak) / peak:+.0%}"
            speed = f"{r['step_s'] / base['step_s']:.2f}x" if base else ""
            lines.append(
                f"| {name} | {r['batch']} | {lowering} | {peak / 2**20:,.0f} MiB | {ratio} | {err} "
                f"| {r['step_s']:.3f} s | {speed} |"
            )
    lines += ["", *growth(results)]
    return "\n".join(lines)


def growth(results: list[dict]) -> list[str]:
    """How memory grows with depth against the feature maps, for each DenseNet-BC series measured."""
    out = []
    for k in (12, 40):
        series = sorted(
            (r for r in results if r["spec"] == "densenet_bc" and r["growth"] == k), key=lambda r: r["depth"] or 0
        )
        if len({r["depth"] for r in series}) < 2:
            continue
        depths = [r["depth"] for r in series]
        lo, hi = (100 if 100 in depths else depths[0]), depths[-1]
        at = {(r["depth"], r["lowering"]): r for r in series}
        feat = at[(hi, "naive")]["feature_bytes"] / at[(lo, "naive")]["feature_bytes"]
        grow = ", ".join(
            f"{x} x{at[(hi, x)]['peak_bytes'] / at[(lo, x)]['peak_bytes']:.2f}" for x in LOWERINGS if (hi, x) in at
        )
        out.append(f"DenseNet-BC k={k}, L={lo} to L={hi}: feature maps x{feat:.2f}; peak memory {grow}.")
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, growth in zip(axes, (12, 40), strict=True):
        rows = [r for r in results if r["spec"] == "densenet_bc" and r["growth"] == growth]
        for lowering, style in zip(LOWERINGS, ("o-", "s--", "^-", "d-"), strict=True):
            pts = sorted((r["depth"], r["peak_bytes"] / 2**30) for r in rows if r["lowering"] == lowering)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=lowering)
        batch = rows[0]["batch"] if rows else "?"
        ax.set(title=f"DenseNet-BC, k={growth}, batch {batch}", xlabel="depth L", ylabel="peak training memory (GiB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(stem: Path, device: str, name: str, results: list[dict]) -> None:
    stem.with_suffix(".json").write_text(json.dumps({"machine": name, "results": results}, indent=2))
    stem.with_suffix(".md").write_text(table(results, device, name) + "\n")
    plot(results, stem.with_suffix(".png"))
    print(table(results, device, name))


def rerender(out: Path) -> None:
    from dnetc import compiler, dsl
    from dnetc.compiler.estimate import estimate

    for path in sorted(out.glob("memory-*.json")):
        data = json.loads(path.read_text())
        for r in data["results"]:
            g = compiler.build_graph(dsl.load(r["spec"], **r["set"]))
            r["estimated_bytes"] = estimate(g, r["lowering"], r["batch"], "float32", r["device"]).training
            r["feature_bytes"] = feature_bytes(g, r["batch"])
        write(path.with_suffix(""), data["results"][0]["device"], data["machine"], data["results"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few small runs")
    p.add_argument("--steps", type=int, default=5, help="timed rounds after a warm-up step (default 5)")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--rerender",
        action="store_true",
        help="redo the estimates, table and plot of the stored measurements with the current estimator",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.rerender:
        return rerender(args.out)
    import torch

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    args.out.mkdir(parents=True, exist_ok=True)
    for device in devices:
        results = []
        stem = args.out / f"memory-{device}{'-quick' if args.quick else ''}"
        for run in suite(args.quick, device):
            name = run["spec"] + "".join(f" {k}={v}" for k, v in run["set"].items())
            times = _subprocess({**run, "what": "time", "device": device}, args.steps)
            for lowering in LOWERINGS:
                mem = _subprocess({**run, "what": "memory", "device": device, "lowering": lowering}, args.steps)
                if mem is None or times is None:
                    continue
                r = {**run, **mem, "name": name, "lowering": lowering, "device": device, "step_s": times[lowering]}
                r |= {"depth": run["set"].get("depth"), "growth": run["set"].get("growth")}
                results.append(r)
                print(
                    f"{device} {name:<34} batch {r['batch']:>3} {lowering:<10} "
                    f"{r['peak_bytes'] / 2**20:>10,.0f} MiB {r['step_s']:.3f} s",
                    flush=True,
                )
            # what was measured so far survives an interrupted run (--rerender makes the table)
            stem.with_suffix(".json").write_text(json.dumps({"machine": machine(device), "results": results}))
        write(stem, device, machine(device), results)


if __name__ == "__main__":
    main()
