"""GPU training benchmark: DenseNet-BC-100-12 on CIFAR-shaped fake data, each speed configuration
side by side, against the authors' TitanX (0.156 s/iter, 5452 MB at batch 64).

    python bench/gpu.py --out bench/results          # on a CUDA machine (one call, a few minutes)
    python bench/gpu.py --device cpu --steps 3       # a dry run anywhere

Each configuration trains for a fixed number of steps after warm-up (SGD, Nesterov, batch 64) and
reports the median s/iter and the peak memory of the timed steps (`torch.cuda.max_memory_allocated`;
on the CPU, a dry run, memory is not reported: bench/memory.py measures it). Configurations run in
turn in one process, each after the others' memory is freed. Writes gpu-<device>.json and .md.
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

import compiler  # noqa: E402

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
]
AUTHORS = {"s_per_iter": 0.156, "memory_mb": 5452}  # Lua Torch, TitanX, no memory sharing


def measure(cfg: dict, device: str, batch: int, steps: int, spec: str) -> dict:
    torch.manual_seed(0)
    model = compiler.compile(spec, memory=cfg["memory"]).to(device)
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    run = torch.compile(model) if cfg["compile"] else model
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--spec", default="densenet_bc_100_12")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    rows = []
    for cfg in CONFIGS:
        if cfg["compile"] and args.device == "cpu":
            continue  # inductor on the CPU takes minutes to compile: a GPU measurement
        r = measure(cfg, args.device, args.batch, args.steps, args.spec)
        gc.collect()  # the configuration's model and optimizer went with measure()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        rows.append(r)
        print(f"{r['config']:<34} {r['s_per_iter']:.4f} s/iter  {_mb(r['peak_mb'])}", flush=True)
    base = rows[0]["s_per_iter"]
    lines = [
        f"{args.spec}, batch {args.batch}, {name}, torch {torch.__version__}:",
        "",
        "| configuration | s/iter | vs fp32 naive | peak memory |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['config']} | {r['s_per_iter']:.4f} | {r['s_per_iter'] / base:.2f}x | {_mb(r['peak_mb'])} |"
            for r in rows
        ),
        f"| authors (Lua Torch, TitanX) | {AUTHORS['s_per_iter']} | | {AUTHORS['memory_mb']:,} MB |",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu-{args.device}"
    stem.with_suffix(".json").write_text(json.dumps({"device": name, "batch": args.batch, "rows": rows}, indent=2))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
