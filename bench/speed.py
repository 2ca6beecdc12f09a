"""Training speed: dnetc against torchvision, every switch, steps interleaved so that drift cancels.

Each row is one model in one configuration (precision, channels_last, torch.compile mode, memory
lowering, fused optimizer), built once and warmed up; then the timed steps go round-robin, one step
of each row in turn, so that a clock or thermal drift falls on every row alike. A step is a full SGD
(Nesterov) step on random data. Reports the median s/iter, images/s, the peak memory of a step
(CUDA: `max_memory_allocated`), the ratio to torchvision's eager fp32 step of the same model (the
baseline users have), and on CUDA the model FLOP utilisation (6 x MACs x batch over the dense bf16
peak). Writes speed-<device>.json and .md.

    python bench/speed.py --device cuda --out bench/results    # an H100: a few minutes
    python bench/speed.py --device cpu --out bench/results     # this machine: densenet121, batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu import peak_tflops, torchvision_model  # noqa: E402

import compiler  # noqa: E402
import dsl  # noqa: E402


def row(model: str, impl: str, batch: int, **switches: Any) -> dict:
    cfg = {"model": model, "impl": impl, "batch": batch, "precision": "fp32", "channels_last": False}
    cfg |= {"compile": None, "memory": "naive", "fused": False, **switches}
    parts = [cfg["precision"]] + ["channels_last"] * cfg["channels_last"]
    parts += [f"compile({cfg['compile']})"] * bool(cfg["compile"]) + ["fused SGD"] * cfg["fused"]
    cfg["name"] = " + ".join(parts) + ("" if cfg["memory"] == "naive" else f", {cfg['memory']}")
    return cfg


def matrix(device: str, quick: bool) -> list[dict]:
    if device == "cpu":
        b = 2 if quick else 8
        rows = [row("densenet121", impl, b) for impl in ("torchvision", "dnetc")]
        rows += [row("densenet121", impl, b, channels_last=True) for impl in ("torchvision", "dnetc")]
        rows += [row("densenet121", "dnetc", b, memory="shared"), row("densenet121", "dnetc", b, fused=True)]
        return rows
    fast = {"precision": "bf16", "channels_last": True}
    rows = []
    for name in ("densenet121", "densenet169"):
        rows += [row(name, impl, 256) for impl in ("torchvision", "dnetc")]
        rows += [row(name, impl, 256, **fast) for impl in ("torchvision", "dnetc")]
    rows += [row("densenet121", impl, 256, **fast, compile="default", fused=True) for impl in ("torchvision", "dnetc")]
    rows += [row("densenet121", "dnetc", 256, **fast, memory=m) for m in ("shared", "checkpoint")]
    bc = "densenet_bc_100_12"
    rows += [row(bc, "dnetc", 64), row(bc, "dnetc", 64, **fast), row(bc, "dnetc", 64, memory="shared")]
    rows += [row(bc, "dnetc", 64, compile="reduce-overhead", fused=True)]
    return rows


class Runner:
    """One row's model, optimizer and data, ready to take timed steps."""

    def __init__(self, cfg: dict, device: str) -> None:
        torch.manual_seed(0)
        model = torchvision_model(cfg["model"]) if cfg["impl"] == "torchvision" else None
        if model is None:
            model = compiler.compile(cfg["model"], memory=cfg["memory"])
        shape = compiler.build_graph(dsl.load(cfg["model"])).nodes["input"]["shape"]
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

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = torch.nn.functional.cross_entropy(self.run(self.x), self.y)
        loss.backward()
        self.opt.step()

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


def machine(device: str) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or "CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next(
            (ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if "model name" in ln), model
        )
    return f"{model}, {os.cpu_count()} cores"


def results(runners: list[Runner], device: str) -> list[dict]:
    peak = peak_tflops(machine(device)) if device == "cuda" else None
    out = []
    for r in runners:
        c = r.cfg
        s = statistics.median(r.times)
        macs = compiler.build_graph(dsl.load(c["model"])).graph["macs"]
        out.append(
            {
                **{k: v for k, v in c.items()},
                "s_per_iter": s,
                "images_per_s": c["batch"] / s,
                "peak_mib": r.peak / 2**20 if device == "cuda" else None,
                "mfu": 6 * macs * c["batch"] / s / (peak * 1e12) if peak else None,
            }
        )
    for row_ in out:  # against torchvision's eager fp32 step of the same model and batch
        base = next(
            (
                b
                for b in out
                if b["impl"] == "torchvision"
                and b["model"] == row_["model"]
                and b["batch"] == row_["batch"]
                and b["name"] == "fp32"
            ),
            None,
        )
        row_["vs_torchvision_fp32"] = base["s_per_iter"] / row_["s_per_iter"] if base else None
        same = next(
            (
                b
                for b in out
                if b["impl"] == "torchvision" and b["model"] == row_["model"] and b["name"] == row_["name"]
            ),
            None,
        )
        row_["vs_torchvision_same"] = same["s_per_iter"] / row_["s_per_iter"] if same else None
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
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    runners = []
    for cfg in matrix(args.device, args.quick):
        if args.no_compile and cfg["compile"]:
            continue
        r = Runner(cfg, args.device)
        t = time.perf_counter()
        for _ in range(args.warmup):  # cudnn autotuning, compilation, CUDA graph capture
            r.step()
        print(f"ready: {cfg['model']} {cfg['impl']} {cfg['name']} ({time.perf_counter() - t:.0f} s)", flush=True)
        runners.append(r)
    for _ in range(args.steps):  # round-robin: one step of each row in turn
        for r in runners:
            r.timed()
    rows = results(runners, args.device)
    table = markdown(rows, args.device, args.steps)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"speed-{args.device}.json").write_text(json.dumps(rows, indent=2))
        (args.out / f"speed-{args.device}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
