"""The real trainer against the isolated step: what `runtime.fit` delivers per step, beside
bench/speed.py's isolated step (eager, and on CUDA one graph per step) and a minimal hand-written
training loop over the same model and data, in the same process, rows interleaved round by round.

The trainer trains on generated data of CIFAR's shapes (fake_cifar: 50,000 images of 3x32x32 held
on the device, augmented there) or ImageNet's (fake_imagenet: 224x224 on the device, so that
decoding is out of the measurement), for a fixed number of steps (`--max-steps`); its pace is the
trainer's own figure (`s_per_step`: from the end of its first window of steps, when warm-up and any
graph capture are behind, to its last step, the GPU drained at both ends), with every host task in
it (data, the schedule, the progress line, the deferred reads, the final checkpoint excluded). The
isolated step is one whole SGD step on a fixed random batch, synchronised and timed alone. The hand
loop is what a user writes: index, normalise, crop and flip, forward, backward, step.

    python bench/trainer.py --device cpu --rounds 9 --out bench/results   # 2 cores: about 4 minutes
    python bench/trainer.py --device cuda --out bench/results    # an H200: about 3 minutes

Writes trainer-<device>.json and .md: s/iter and images/s (medians over the rounds), the ratio of
each row's time to the best isolated step of its model and to the hand loop (the median of the
ratios within each round, so that drift between rounds cancels), and the trainer's data share
(host time spent making batches over wall time).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed

sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402
from speed import Runner, row  # noqa: E402

from dnetc import compiler, runtime  # noqa: E402
from dnetc.runtime.config import resolve  # noqa: E402
from dnetc.runtime.data import (  # noqa: E402
    PAD,
    apply_crop_and_flip,
    dataset,
    draw_crop_and_flip,
    generator,
    load,
    normalise,
)
from dnetc.runtime.launch import bind  # noqa: E402
from dnetc.runtime.step import autocast_dtype  # noqa: E402

TINY = {"depth": 10, "growth": 8}  # DenseNet-BC with one layer a block: Python overhead shows


def workloads(device: str) -> list[dict[str, Any]]:
    """Each model with its data and the trainer configurations to measure, most important first."""
    if device == "cpu":
        return [
            {
                "spec": "densenet_bc",
                "overrides": TINY,
                "data": "fake_cifar",
                "batch": 64,
                "steps": 150,
                "trainer": [{}],
            },
        ]
    bc = {"spec": "densenet_bc_100_12", "overrides": {}, "data": "fake_cifar", "batch": 64, "steps": 150}
    bc["trainer"] = [
        {},  # the CUDA defaults for 32x32 (docs/performance.md), with CUDA graphs
        {"cuda_graphs": False},
        {"precision": "bf16", "channels_last": True},
        {"precision": "bf16", "channels_last": True, "cuda_graphs": False},
        {"compile": "default", "once": True},  # minutes of cold compiling: one round, its time in the log
    ]
    imagenet = {"spec": "densenet121", "overrides": {}, "data": "fake_imagenet", "batch": 256, "steps": 30}
    imagenet["trainer"] = [{}, {"cuda_graphs": False}]
    return [bc, imagenet]


def label(switches: dict[str, Any]) -> str:
    shown = {k: v for k, v in switches.items() if k != "once"}
    parts = [
        f"{k.replace('_', ' ')} {v}" if not isinstance(v, bool) else (k if v else f"no {k}") for k, v in shown.items()
    ]
    return ", ".join(p.replace("cuda graphs", "CUDA graphs") for p in parts) or "defaults"


def trainer_row(w: dict, switches: dict, device: str, steps: int) -> tuple[float, float]:
    """The trainer's s/step and data share, one run of `steps` steps (its first window not timed)."""
    with tempfile.TemporaryDirectory() as out:
        result = runtime.fit(
            w["spec"],
            w["data"],
            overrides=w["overrides"],
            out=out,
            device=device,
            batch_size=w["batch"],
            max_steps=steps,
            **{k: v for k, v in switches.items() if k != "once"},
        )
        if "s_per_step" not in result:
            raise SystemExit(f"{w['data']}'s epoch is shorter than {steps} steps at batch {w['batch']}: no pace")
        return result["s_per_step"], result["data_fraction"]


class HandLoop:
    """A minimal training loop over the trainer's model and data: what a user would write."""

    def __init__(self, w: dict, device: str) -> None:
        _, g, _ = bind(w["spec"], w["overrides"], w["data"], dataset(w["data"]).recipe["augment"])  # as the trainer
        config = resolve(w["data"], tuple(g.nodes["input"]["shape"]), device=device)
        torch.manual_seed(0)
        self.model = compiler.compile(g)
        self.cl = config.channels_last
        fmt = torch.channels_last if self.cl else torch.contiguous_format
        self.model = self.model.to(device, memory_format=fmt)
        self.data = load(w["data"], shape=tuple(g.nodes["input"]["shape"])).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
        self.dtype = autocast_dtype(config.precision)
        self.batch, self.device, self.augment = w["batch"], device, config.augment
        self.order = torch.randperm(len(self.data.train)).to(device)
        self.position = 0

    def steps(self, n: int) -> float:
        """s/step over n steps (the device drained at both ends)."""
        sync(self.device)
        started = time.perf_counter()
        for _ in range(n):
            b = self.batch
            start = (self.position * b) % (len(self.order) - b)
            index = self.order[start : start + b]
            x = normalise(self.data.train.images[index], self.data.mean, self.data.std)
            if self.augment:  # drawn on the CPU, copied without waiting for the GPU (page-locked)
                offsets, flip = draw_crop_and_flip(len(index), 2, PAD, generator(0, 0, self.position))
                if self.device == "cuda":
                    offsets, flip = (t.pin_memory().to(self.device, non_blocking=True) for t in (offsets, flip))
                x = apply_crop_and_flip(x, PAD, offsets, flip)
            if self.cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                loss = F.cross_entropy(self.model(x), self.data.train.labels[index])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.position += 1
        sync(self.device)
        return (time.perf_counter() - started) / n


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def isolated(w: dict, device: str, graphs: bool, precision: str, channels_last: bool) -> Runner:
    cfg = row(w["spec"], "dnetc", w["batch"], precision=precision, channels_last=channels_last, graphs=graphs)
    cfg["overrides"] = w["overrides"]
    r = Runner(cfg, device)
    if graphs:
        r.capture(3)
    for _ in range(3):
        r.step()
    return r


def measure(m: dict[str, Any], w: dict, loop: HandLoop, device: str, steps: int) -> float:
    """One round of one row: its s/step."""
    from dnetc.runtime.step import WINDOW

    if m["kind"] == "trainer":
        s, share = trainer_row(w, m["switches"], device, WINDOW + steps)
        m["data_share"].append(share)
        return s
    if m["kind"] == "loop":
        return loop.steps(steps)
    m["runner"].times = []
    for _ in range(steps):
        m["runner"].timed()
    return statistics.median(m["runner"].times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps of each row a round (default: per model)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=float, help="seconds: no further round starts past it (one always runs)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for w in workloads(args.device):
        steps = args.steps or w["steps"]
        config = resolve(w["data"], (3, 32, 32) if w["data"] == "fake_cifar" else (3, 224, 224), device=args.device)
        base = {"precision": config.precision, "channels_last": config.channels_last}
        model = f"{w['spec']}" + "".join(f" {k}={v}" for k, v in w["overrides"].items())
        loop = HandLoop(w, args.device)
        loop.steps(3)
        measures: list[dict[str, Any]] = []
        runners = [("isolated step, eager", isolated(w, args.device, False, **base))]
        if args.device == "cuda":
            runners.append(("isolated step, one CUDA graph", isolated(w, args.device, True, **base)))
        for name, r in runners:
            measures.append({"kind": "isolated", "name": f"{name} ({label(base)})", "runner": r, "times": []})
        measures.append({"kind": "loop", "name": f"hand-written loop ({label(base)})", "times": []})
        for switches in w["trainer"]:
            trainer = {"kind": "trainer", "name": f"trainer: {label(switches)}", "switches": switches, "times": []}
            measures.append({**trainer, "data_share": []})
        repeated = [m for m in measures if not m.get("switches", {}).get("once")]
        order = random.Random(0)
        for rnd in range(args.rounds):
            if rnd and args.budget is not None and time.perf_counter() - began > args.budget:
                print(f"past the {args.budget:.0f} s budget: {rnd} round(s) of {model}", flush=True)
                break
            for m in order.sample(repeated, len(repeated)):
                m["times"].append(measure(m, w, loop, args.device, steps))
                print(f"round {rnd + 1}: {model} {m['name']}: {m['times'][-1]:.5f} s/step", flush=True)
        write(rows + collect(measures, w, model, steps), args)  # a cold compile below may outlast the limit
        for m in measures:  # rows measured once (a cold compile): last, and only within the budget
            if not m["times"] and (args.budget is None or time.perf_counter() - began < args.budget):
                m["times"].append(measure(m, w, loop, args.device, steps))
                print(f"once: {model} {m['name']}: {m['times'][-1]:.5f} s/step", flush=True)
        rows += collect(measures, w, model, steps)
        write(rows, args)  # after each model: a run cut short keeps what it measured


def collect(measures: list[dict[str, Any]], w: dict, model: str, steps: int) -> list[dict[str, Any]]:
    """A model's rows: medians over the rounds and ratios within them."""
    rows = []
    # ratios of times measured in the same round (drift between rounds cancels), then their median
    best = min((m for m in measures if m["kind"] == "isolated"), key=lambda m: statistics.median(m["times"]))
    by_hand = next(m for m in measures if m["kind"] == "loop")

    def paired(m: dict, base: dict) -> float:
        return statistics.median(a / b for a, b in zip(m["times"], base["times"], strict=False))

    for m in measures:
        if not m["times"]:
            continue
        s = statistics.median(m["times"])
        rows.append(
            {
                "model": model,
                "data": w["data"],
                "batch": w["batch"],
                "kind": m["kind"],
                "configuration": m["name"],
                "s_per_iter": s,
                "images_per_s": w["batch"] / s,
                "vs_best_isolated": paired(m, best),
                "vs_hand_loop": paired(m, by_hand),
                "data_share": statistics.median(m["data_share"]) if m.get("data_share") else None,
                "steps": steps,
                "rounds": m["times"],
            }
        )
    return rows


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    table = markdown(rows, args.device, args.rounds)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"machine": machine(args.device), "torch": torch.__version__, "rounds": args.rounds}
        (args.out / f"trainer-{args.device}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
        (args.out / f"trainer-{args.device}.md").write_text(table + "\n")


def markdown(rows: list[dict[str, Any]], device: str, rounds: int) -> str:
    lines = [
        f"The trainer on {machine(device)}, torch {torch.__version__}: medians over {rounds} interleaved rounds "
        "(the trainer's steps timed after its first window)",
        "",
        "| model | data | batch | steps | configuration | s/iter | images/s | vs best isolated step | vs hand loop "
        "| data share |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = f"{100 * r['data_share']:.1f}%" if r["data_share"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['data']} | {r['batch']} | {r['steps']} | {r['configuration']} | "
            f"{r['s_per_iter']:.4f} | {r['images_per_s']:,.0f} | {r['vs_best_isolated']:.3f}x | "
            f"{r['vs_hand_loop']:.3f}x | {share} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
