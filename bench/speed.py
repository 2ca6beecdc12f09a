"""Training speed: dnetc against torchvision, every switch, steps interleaved so that drift cancels.

Each row is one model in one configuration (precision, channels_last, torch.compile mode, memory
lowering, fused optimizer, a CUDA graph of the whole step), built once and warmed up; then the timed
steps go round-robin, one step of each row in a new random order each round, so that a clock or
thermal drift, or a cache warmed by the row before, falls on every row alike. A step is a full SGD
(Nesterov) step on random data. Reports the median s/iter, images/s, the peak memory of a step
(CUDA: `max_memory_allocated`; a CUDA graph's: its pool, at capture), the ratio to torchvision's
eager fp32 step of the same model (the baseline users have) and to torchvision with the same
switches, and on CUDA the model FLOP utilisation (6 x MACs x batch over the dense bf16 peak).
Writes speed-<device>.json and .md.

    python bench/speed.py --device cuda --out bench/results    # an H100: under 7 minutes
    python bench/speed.py --device cpu --out bench/results     # this machine: densenet121, batch 8

Rows are built in order of importance; with --budget, a row that would start being built (compiled,
captured) after that many seconds is left out and named (the first row is always built), so that one
call always ends with results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# oneDNN (CPU) caches 1,024 compiled kernels by default: fewer than a dozen DenseNets in one process
# need, so that a row would find the kernels of the row before it (same shapes) and others not
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "65536")

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed

sys.path.insert(0, str(ROOT / "bench"))

from common import machine, mfu, peak_tflops, torchvision_model  # noqa: E402

from dnetc import compiler, dsl  # noqa: E402


def row(model: str, impl: str, batch: int, **switches: Any) -> dict:
    cfg = {"model": model, "impl": impl, "batch": batch, "precision": "fp32", "channels_last": False}
    cfg |= {"compile": None, "memory": "naive", "fused": False, "graphs": False, **switches}
    parts = [cfg["precision"]] + ["channels_last"] * cfg["channels_last"]
    parts += [f"compile({cfg['compile']})"] * bool(cfg["compile"]) + ["fused SGD"] * cfg["fused"]
    parts += ["CUDA graph"] * cfg["graphs"]
    cfg["name"] = " + ".join(parts) + ("" if cfg["memory"] == "naive" else f", {cfg['memory']}")
    return cfg


def matrix(device: str, quick: bool) -> list[dict]:
    """The rows, most important first: eager comparisons, then the lowerings and levers, then compiles."""
    fast = {"precision": "bf16", "channels_last": True}
    if device == "cpu":
        b = 2 if quick else 8
        rows = [row("densenet121", impl, b, **s) for s in ({}, {"channels_last": True}, fast) for impl in TWO]
        rows += [
            row("densenet121", "dnetc", b, memory="shared"),
            row("densenet121", "dnetc", b, **fast, memory="shared"),
        ]
        rows += [row("densenet121", "dnetc", b, fused=True)]
        return [*rows, row("densenet121", "dnetc", b, **fast, compile="default")]
    bc = "densenet_bc_100_12"
    rows = [row(name, impl, 256, **s) for name in ("densenet121", "densenet169") for s in ({}, fast) for impl in TWO]
    rows += [row("densenet121", "dnetc", 256, **fast, memory=m) for m in ("shared", "checkpoint")]
    rows += [row("densenet121", "dnetc", 256, **fast, fused=True)]
    rows += [row(bc, "dnetc", 64), row(bc, "dnetc", 64, **fast), row(bc, "dnetc", 64, memory="shared")]
    rows += [row(bc, "dnetc", 64, precision=p, graphs=True) for p in ("fp32", "bf16")]
    # compiling takes minutes a row: dnetc's first, torchvision's compiled baseline last
    rows += [row("densenet121", "dnetc", 256, **fast, compile="default", fused=True)]
    rows += [row(bc, "dnetc", 64, precision=p, compile="reduce-overhead", fused=True) for p in ("fp32", "bf16")]
    return [*rows, row("densenet121", "torchvision", 256, **fast, compile="default", fused=True)]


TWO = ("torchvision", "dnetc")


class Runner:
    """One row's model, optimizer and data, ready to take timed steps."""

    def __init__(self, cfg: dict, device: str) -> None:
        torch.manual_seed(0)
        model = torchvision_model(cfg["model"]) if cfg["impl"] == "torchvision" else None
        overrides = cfg.get("overrides", {})
        if model is None:
            model = compiler.compile(cfg["model"], memory=cfg["memory"], **overrides)
        shape = compiler.build_graph(dsl.load(cfg["model"], **overrides)).nodes["input"]["shape"]
        fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt)
        extra = {"fused": True} if cfg["fused"] else {}
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, **extra)
        self.run = torch.compile(self.model, mode=cfg["compile"]) if cfg["compile"] else self.model
        self.x = torch.randn(cfg["batch"], *shape, device=device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 10, (cfg["batch"],), device=device)
        self.dtype = torch.bfloat16 if cfg["precision"] == "bf16" else None
        self.device, self.cfg = device, cfg
        self.times: list[float] = []
        self.peak = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.opt.zero_grad(set_to_none=True)
            self._forward_backward()

    def _forward_backward(self) -> None:
        # a CUDA graph cannot capture autocast's cast cache: it is off for every row alike
        dtype, on = self.dtype or torch.float32, self.dtype is not None
        with torch.autocast(self.device, dtype=dtype, enabled=on, cache_enabled=False):
            loss = torch.nn.functional.cross_entropy(self.run(self.x), self.y)
        loss.backward()
        self.opt.step()

    def capture(self, warmup: int) -> None:
        """Warm up on a side stream (cudnn autotuning, the optimizer's momentum buffers), then record one
        whole step, forward, backward and SGD, as a CUDA graph that each step replays."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self.opt.zero_grad(set_to_none=True)  # the gradients are allocated inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._forward_backward()
        self.graph = graph
        self.peak = torch.cuda.max_memory_allocated() - base

    def timed(self) -> None:
        cuda = self.device == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        self.step()
        if cuda:
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated() - base)
        self.times.append(time.perf_counter() - t)


def results(runners: list[Runner], device: str) -> list[dict]:
    peak = peak_tflops(machine(device)) if device == "cuda" else None
    out = []
    for r in runners:
        c = r.cfg
        s = statistics.median(r.times)
        macs = compiler.build_graph(dsl.load(c["model"])).graph["macs"]
        out.append(
            {
                **c,
                "s_per_iter": s,
                "images_per_s": c["batch"] / s,
                "peak_mib": r.peak / 2**20 if device == "cuda" else None,
                "mfu": mfu(macs, c["batch"], s, peak),
            }
        )
    # torchvision's step of the same model and batch: eager fp32 (the baseline users have), and with the same switches
    tv = {(b["model"], b["batch"], b["name"]): b["s_per_iter"] for b in out if b["impl"] == "torchvision"}
    for r_ in out:
        fp32, same = tv.get((r_["model"], r_["batch"], "fp32")), tv.get((r_["model"], r_["batch"], r_["name"]))
        r_["vs_torchvision_fp32"] = fp32 / r_["s_per_iter"] if fp32 else None
        r_["vs_torchvision_same"] = same / r_["s_per_iter"] if same else None
    return out


def markdown(rows: list[dict], device: str, steps: int) -> str:
    lines = [
        f"Training steps on {machine(device)}, torch {torch.__version__}; "
        f"median of {steps} interleaved steps after warm-up",
        "",
        "| model | batch | impl | configuration | s/iter | images/s | vs torchvision fp32 | vs torchvision, same "
        "switches | peak memory | MFU |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:

        def ratio(v: float | None) -> str:
            return f"{v:.2f}x" if v else "-"

        lines.append(
            f"| {r['model']} | {r['batch']} | {r['impl']} | {r['name']} | {r['s_per_iter']:.4f} | "
            f"{r['images_per_s']:,.0f} | {ratio(r['vs_torchvision_fp32'])} | {ratio(r['vs_torchvision_same'])} | "
            + (f"{r['peak_mib']:,.0f} MiB" if r["peak_mib"] is not None else "-")
            + " | "
            + (f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-")
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny batches: check that the harness runs")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (minutes of compiling)")
    p.add_argument("--budget", type=float, help="seconds after which no further row is built")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    runners, left_out, start = [], [], time.perf_counter()
    for cfg in matrix(args.device, args.quick):
        label = f"{cfg['model']} {cfg['impl']} {cfg['name']}"
        if (args.no_compile and cfg["compile"]) or (cfg["graphs"] and args.device != "cuda"):
            continue
        if runners and args.budget is not None and time.perf_counter() - start > args.budget:
            left_out.append(label)
            print(f"left out (past the {args.budget:.0f} s budget): {label}", flush=True)
            continue
        r = Runner(cfg, args.device)
        t = time.perf_counter()
        if cfg["graphs"]:
            r.capture(args.warmup)
        for _ in range(args.warmup):  # cudnn autotuning, compilation, CUDA graph capture
            r.step()
        print(f"ready: {label} ({time.perf_counter() - t:.0f} s)", flush=True)
        runners.append(r)
    order = random.Random(0)
    for _ in range(args.steps):  # round-robin: one step of each row, in a new order each round
        for r in order.sample(runners, len(runners)):
            r.timed()
    rows = results(runners, args.device)
    table = markdown(rows, args.device, args.steps)
    if left_out:
        table += "\n\nLeft out, past the time budget: " + "; ".join(left_out) + "."
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"speed-{args.device}.json").write_text(json.dumps({"rows": rows, "left_out": left_out}, indent=2))
        (args.out / f"speed-{args.device}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
