"""Benchmark: the fused lowering against naive and shared, side by side in one process (issue 15's targets).

    python bench/fused.py --device cuda --out bench/results     # the GPU run (bench/gpu.sh OUT fused)
    python bench/fused.py --device cpu --out bench/results      # this machine: DenseNet-BC-100-12, densenet121
    python bench/fused.py --small                               # a quick try at reduced sizes

For each case: first an equality check on the device (one float32 step of every variant against
naive, TF32 off: the largest relative difference of any gradient, BN statistic or output). Then the
training step's time (forward, backward; the optimizer is the same for all and left out), the
variants interleaved round by round so that drift cancels, the median reported as a ratio to naive's;
on CUDA eagerly and as one CUDA graph per step, and the peak memory above the model
(max_memory_allocated). The variants: naive, shared, fused with its ATen path, fused with its Triton
kernels (CUDA), and for densenet121 torchvision's model eagerly and under
torch.compile(mode="max-autotune"). On CUDA, the ceilings measured on the machine (a large device
copy, a large bf16 matrix product) turn each time into MFU and the floor of docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import machine  # noqa: E402

import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed
from dnetc import compiler, dsl  # noqa: E402

CASES = {  # name: (spec, overrides, batch, input side) at full size; --small shrinks them
    "densenet121": ("densenet121", {}, 256, 224),
    "densenet_bc_100_12": ("densenet_bc_100_12", {}, 64, 32),
    "densenet_bc_190_40": ("densenet_bc_190_40", {}, 64, 32),  # the GPU only: a minute a step on 2 cores
}
CPU_CASES = ("densenet121", "densenet_bc_100_12")
CPU_BATCH = {"densenet121": 8, "densenet_bc_100_12": 64}
GRAPHED = ("naive", "shared", "fused (auto)", "fused (triton)")  # timed as one CUDA graph per step too
SMALL = {
    "densenet121": ({"blocks": [2, 2, 2, 2]}, 4, 64),
    "densenet_bc_100_12": ({"depth": 16}, 8, 16),
    "densenet_bc_190_40": ({"depth": 16}, 8, 16),
}


@contextlib.contextmanager
def kernels(mode: str):
    """DNETC_KERNELS for the fused lowering's first stages: triton, aten or auto."""
    old = os.environ.get("DNETC_KERNELS")
    os.environ["DNETC_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DNETC_KERNELS", None)
        else:
            os.environ["DNETC_KERNELS"] = old


def variants(device: str, name: str) -> dict[str, tuple[str, str]]:
    """label: (lowering or torchvision variant, kernel mode)."""
    out = {"naive": ("naive", "aten"), "shared": ("shared", "aten"), "fused (aten)": ("fused", "aten")}
    if device == "cuda":
        out["fused (triton)"] = ("fused", "triton")
        out["fused (auto)"] = ("fused", "auto")
        if name == "densenet121":
            out["torchvision"] = ("torchvision", "aten")
            out["torchvision max-autotune"] = ("torchvision-compiled", "aten")
    return out


def build(kind: str, net: dsl.Network, state: dict, device: str, channels_last: bool) -> torch.nn.Module:
    if kind.startswith("torchvision"):
        import torchvision

        model = torchvision.models.densenet121()
    else:
        model = compiler.compile(net, memory=kind)
        model.load_state_dict(state)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    return torch.compile(model, mode="max-autotune") if kind == "torchvision-compiled" else model


def make_step(model: torch.nn.Module, x: torch.Tensor, mode: str, precision: str | None) -> Callable[[], None]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision or "")

    def step() -> None:
        with kernels(mode), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            for p in model.parameters():
                p.grad = None
            loss = model(x).float().square().mean()
        with kernels(mode):
            loss.backward()

    return step


def graphed(step: Callable[[], None]) -> Callable[[], None]:
    """The same step as one CUDA graph, captured after three warm-up steps on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def equality(net: dsl.Network, state: dict, x: torch.Tensor, labels: dict, channels_last: bool) -> dict[str, float]:
    """Each variant's float32 step (TF32 off) against naive's in float64: the error of all its outputs,
    gradients and BN statistics together, relative to their norm (per tensor, a gradient that cancels
    to a few digits, such as norm0's γ, would decide it for every variant alike)."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def one_step(kind: str, mode: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        model = build(kind, net, state, x.device.type, channels_last).to(dtype)
        with kernels(mode):
            out = model(x.to(dtype))
            out.float().square().mean().backward()
        got = {"output": out.detach(), **{k: p.grad for k, p in model.named_parameters()}}
        got |= {k: b for k, b in model.named_buffers() if b.is_floating_point()}
        return {k: v.double() for k, v in got.items()}

    try:
        reference = one_step("naive", "aten", torch.float64)
        errors = {}
        for label, (kind, mode) in labels.items():
            if not kind.startswith("torchvision"):
                got = one_step(kind, mode, torch.float32)
                diff = torch.cat([(got[k] - e).flatten() for k, e in reference.items()])
                errors[label] = float(diff.norm() / torch.cat([e.flatten() for e in reference.values()]).norm())
        return errors
    finally:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True


def ceilings(device: str) -> dict[str, float]:
    """What this GPU reaches: a 4 GiB device copy (GB/s, read + write) and an 8192³ bf16 matmul (TFLOP/s)."""
    a = torch.empty(2**31, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    m = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)

    def timed(fn: Callable[[], object], n: int = 10) -> float:
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / n

    copy = timed(lambda: b.copy_(a))
    matmul = timed(lambda: m @ m)
    return {"copy_GBps": 2 * 2**31 * 2 / copy / 1e9, "bf16_matmul_TFLOPs": 2 * 8192**3 / matmul / 1e12}


def floor(g: object, batch: int, element_bytes: int) -> dict[str, float]:
    """The step's least work with everything fused (docs/performance.md derives it): the matrix products'
    FLOPs (forward and backward: 3x the forward's 2·MACs) and the bytes no fusion avoids. Per layer, its
    prefix is read 3 times (forward prologue, input-gradient epilogue, weight-gradient prologue) and the
    gradient accumulator's prefix read and written (5 passes); the bottleneck written, its statistics
    read, read by the 3x3 conv, read twice in backward and its gradient written and read (7); the new
    channels written, their statistics read, their gradient read twice (4); outside the blocks, 6."""
    import math

    prefix = bottleneck = new = outside = 0
    for n, d in g.nodes(data=True):
        size = math.prod(d["shape"])
        if d["layer"] is None:
            outside += size
        elif n.endswith(".conv1"):
            (source,) = g.predecessors(n)
            prefix += math.prod(g.nodes[source]["shape"])
            bottleneck += size
        elif n.endswith(".conv2"):
            new += size
    traffic = batch * element_bytes * (5 * prefix + 7 * bottleneck + 4 * new + 6 * outside)
    return {"flop": 6 * g.graph["macs"] * batch, "bytes": traffic}


def run_case(
    name: str, device: str, rounds: int, small: bool, precision: str | None, channels_last: bool, only: list | None
) -> dict:
    spec, overrides, batch, side = CASES[name]
    if small:
        overrides, batch, side = SMALL[name]
    elif device == "cpu":
        batch = CPU_BATCH[name]
    net = dsl.load(spec, **overrides, **({"size": side} if "size" in dsl.load(spec).parameters else {}))
    g = compiler.build_graph(net)
    torch.manual_seed(0)
    state = compiler.compile(net).state_dict()
    labels = {k: v for k, v in variants(device, name).items() if not only or k in only or k == "naive"}
    shape = (batch, *g.nodes["input"]["shape"])
    x = torch.randn(shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    row: dict = {"name": name, "batch": batch, "input": "x".join(map(str, shape[1:])), "precision": precision}
    row["channels_last"] = channels_last
    try:
        row["error_vs_float64"] = equality(net, state, x[: min(batch, 8)], labels, channels_last)
    except Exception as e:
        row["error_vs_float64"] = {}
        row["equality_failed"] = f"{type(e).__name__}: {str(e)[:300]}"
    steps: dict[str, dict[str, Callable[[], None]]] = {"eager": {}, "graph": {}}
    peaks: dict[str, int] = {}
    row["failed"] = {}
    for label, (kind, mode) in labels.items():
        try:  # a variant that fails (a kernel that does not compile here) is reported, and the rest go on
            model = build(kind, net, state, device, channels_last)
            step = make_step(model, x, mode, precision)
            if device == "cuda":
                step()  # warm-up: cuDNN's autotuning, the fused lowering's kernel choices, compilation
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step()
                torch.cuda.synchronize()
                peaks[label] = torch.cuda.max_memory_allocated() - base
                if label in GRAPHED:  # each graph keeps a memory pool of its own: the main variants only
                    steps["graph"][label] = graphed(step)
            steps["eager"][label] = step
        except Exception as e:
            row["failed"][label] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"{name}: {label} failed: {row['failed'][label]}", flush=True)
    row["modes"] = {}
    for how, fns in steps.items():
        if not fns:
            continue
        times: dict[str, list[float]] = {label: [] for label in fns}
        order = list(fns.items())
        for r in range(rounds + 1):  # round 0 warms up; each round starts one variant later (no order bias)
            for label, fn in order[r % len(order) :] + order[: r % len(order)]:
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                if r:
                    times[label].append(time.perf_counter() - t)
        if "naive" not in times:
            continue
        base = statistics.median(times["naive"])
        row["modes"][how] = {
            label: {"step_ms": 1e3 * statistics.median(t), "vs_naive": statistics.median(t) / base}
            for label, t in times.items()
        }
    if peaks:
        row["peak_MiB"] = {label: p / 2**20 for label, p in peaks.items()}
        row["peak_vs_naive"] = {label: p / peaks["naive"] for label, p in peaks.items()}
    row["macs_per_image"] = g.graph["macs"]
    row["floor"] = floor(g, batch, 2 if precision else 4)
    return row


def markdown(rows: list[dict], info: dict, limits: dict | None) -> str:
    """One table row per (case, variant)."""
    lines = [f"Fused lowering, {info['machine']}; torch {torch.__version__}", ""]
    if limits:
        for r in rows:
            matrix = r["floor"]["flop"] / (limits["bf16_matmul_TFLOPs"] * 1e12) * 1e3
            memory = r["floor"]["bytes"] / (limits["copy_GBps"] * 1e9) * 1e3
            lines += [f"Floor of {r['name']} at batch {r['batch']}: {matrix:.1f} ms of matrix products, "
                      f"{memory:.1f} ms of memory traffic ({r['floor']['bytes'] / 1e9:.1f} GB)", ""]  # fmt: skip
        lines += [f"Ceilings measured here: copy {limits['copy_GBps']:,.0f} GB/s, bf16 matmul "
                  f"{limits['bf16_matmul_TFLOPs']:,.0f} TFLOP/s", ""]  # fmt: skip
    lines += ["| network | batch | precision | variant | fp32 error vs fp64 | step | vs naive | graph step | vs naive "
              "| peak memory | vs naive | images/s | MFU |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        eager, graph = r["modes"].get("eager", {}), r["modes"].get("graph", {})
        for label, e in eager.items():
            diff = r["error_vs_float64"].get(label)
            gstep = graph.get(label)
            images = r["batch"] / (min(e["step_ms"], gstep["step_ms"] if gstep else e["step_ms"]) / 1e3)
            mfu = ""
            if limits:
                flops = 3 * 2 * r["macs_per_image"] * images  # forward + backward ≈ 3x the forward's
                mfu = f"{flops / (limits['bf16_matmul_TFLOPs'] * 1e12):.1%}"
            cells = [
                r["name"],
                str(r["batch"]),
                (r["precision"] or "fp32") + (", cl" if r["channels_last"] else ""),
                label,
                "" if diff is None else f"{diff:.1e}",
                f"{e['step_ms']:.1f} ms",
                f"{e['vs_naive']:.2f}x",
                f"{gstep['step_ms']:.1f} ms" if gstep else "",
                f"{gstep['vs_naive']:.2f}x" if gstep else "",
                f"{r['peak_MiB'][label]:,.0f} MiB" if "peak_MiB" in r else "",
                f"{r['peak_vs_naive'][label]:.2f}x" if "peak_vs_naive" in r else "",
                f"{images:,.0f}",
                mfu,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for label, why in r.get("failed", {}).items():
            lines.append(f"| {r['name']} | {r['batch']} | | {label} | failed: {why} | | | | | | | | |")
        if r.get("equality_failed"):
            lines.append(f"| {r['name']} | | | equality check | failed: {r['equality_failed']} | | | | | | | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--small", action="store_true")
    p.add_argument("--cases", nargs="*", help="default: all on CUDA, the first two on the CPU")
    p.add_argument(
        "--only", nargs="*", help="these variants (and naive, the baseline): e.g. 'torchvision max-autotune'"
    )
    p.add_argument("--out", help="write fused-<device>.json and .md here")
    args = p.parse_args()
    cuda = args.device == "cuda"
    limits = ceilings(args.device) if cuda and not args.small else None
    rows = []
    # the trainer's defaults (bf16 + channels_last on CUDA, fp32 + channels_last on the CPU), and NCHW on the CPU
    settings = [("bf16", True)] if cuda else [(None, True), (None, False)]
    for name, (precision, channels_last) in itertools.product(
        args.cases or (list(CASES) if cuda else CPU_CASES), settings
    ):
        rows.append(run_case(name, args.device, args.rounds, args.small, precision, channels_last, args.only))
        print(markdown(rows[-1:], {"machine": machine(args.device)}, limits), flush=True)
        if args.out:  # written as they come: a run cut short keeps what it measured
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            info = {"machine": machine(args.device), "ceilings": limits, "rows": rows}
            suffix = "-" + "-".join(x.replace(" ", "_") for x in args.only) if args.only else ""
            (out / f"fused-{args.device}{suffix}.json").write_text(json.dumps(info, indent=2))
            (out / f"fused-{args.device}{suffix}.md").write_text(markdown(rows, info, limits) + "\n")


if __name__ == "__main__":
    main()
