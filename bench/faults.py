"""Training under faults: SIGKILL at random moments, during steps and in the middle of checkpoint
writes; each killed run is resumed from its last checkpoint and must end with exactly the parameters
of a run that was never interrupted.

A small DenseNet-BC trains on the bundled digits with a checkpoint after every step. One run goes
through uninterrupted: the reference. Then each trial starts the same run, SIGKILLs it, checks that
the checkpoint it left (if any) loads, resumes it with `--resume` (or starts again if it died before
its first checkpoint), and compares every tensor of the final model and optimizer state with the
reference's, bit for bit, and the checkpoint files left (best, each epoch's, no temporary ones).

- `steps`: the kill falls at a random moment of a randomly chosen step (the start-up and the end of
  an epoch included).
- `writes`: each checkpoint write of the child is slowed (half the bytes, flush, a pause, the rest),
  and the kill falls inside a randomly chosen write, while its temporary file is half written.

    python bench/faults.py --trials 10 --out bench/results    # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import builtins
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed

RUN = [
    "densenet_bc",
    *("--set", "depth=10", "--set", "growth=6", "--set", "size=16"),
    *("--train", "digits", "--batch-size", "128", "--checkpoint-every", "0.00001"),
]
PAUSE = 0.05  # seconds between the two halves of a slowed checkpoint write


def child(mode: str, marker: Path, argv: list[str]) -> int:
    """Run dnetc in this process, every checkpoint write counted in `marker`; with `writes`, each is
    also split by a pause, so that the parent can kill it in the middle of one."""
    from dnetc.runtime import checkpoint
    from dnetc.runtime.cli import main

    pause = PAUSE if mode == "writes" else 0.0

    class Counted:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Counted:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.__exit__(*exc)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def write(self, data: Any) -> int:
            view = memoryview(data)
            if len(view) < 4096:  # the header line: the state follows in one write
                return self.f.write(view)
            half = len(view) // 2
            self.f.write(view[:half])
            self.f.flush()
            with marker.open("a") as m:
                m.write("w\n")
            time.sleep(pause)
            return half + self.f.write(view[half:])

    def counted_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        return Counted(f) if "w" in mode else f

    checkpoint.open = counted_open  # type: ignore[attr-defined]
    return main(argv)


def command(out: Path, mode: str, marker: Path, resume: bool, epochs: int) -> list[str]:
    argv = [*RUN, "--epochs", str(epochs), "--out", str(out)] + (["--resume", str(out)] if resume else [])
    return [sys.executable, __file__, "--child", mode, "--marker", str(marker), "--", *argv]


def state(out: Path) -> dict:
    from dnetc.runtime import checkpoint

    return checkpoint.load(out / "checkpoints" / "latest.pt")


def files(out: Path) -> list[str]:
    """The run's checkpoint files: after a resume, those of an uninterrupted run (best, each epoch's)."""
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of nested states (tensors, numbers, lists, dicts)."""
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def run(cmd: list[str], log: Path) -> None:
    with log.open("ab") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        raise SystemExit(f"a run failed ({code}); see {log}")


def trial(mode: str, rng: random.Random, work: Path, seconds: float, writes: int, epochs: int) -> dict:
    """One kill and one resume; what was killed when, and whether the end equals the reference."""
    out, marker, log = work / "run", work / "marker", work / "log"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with log.open("wb") as f:
        proc = subprocess.Popen(command(out, mode, marker, False, epochs), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_for_write(n: int) -> None:
        while proc.poll() is None and (not marker.exists() or len(marker.read_text().split()) < n):
            time.sleep(0.002)

    if mode == "steps":  # a checkpoint follows every step: a random moment after a random one of them
        target = rng.randint(0, writes - 1)
        wait_for_write(target)
        delay = rng.uniform(0.0, seconds / writes)
        killed_in = f"{delay:.3f} s after checkpoint write {target} of {writes}"
        time.sleep(delay)
    else:
        target = rng.randint(1, writes)
        killed_in = f"checkpoint write {target} of {writes}"
        wait_for_write(target)
        time.sleep(rng.uniform(0.0, PAUSE))
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = out / "checkpoints" / "latest.pt"
    loads = None
    if left.exists():
        try:
            state(out)
            loads = True
        except Exception:  # the failure this benchmark looks for
            loads = False
    partial = sorted(p.name for p in (out / "checkpoints").glob(".*tmp*")) if left.parent.exists() else []
    run(command(out, "steps", marker, left.exists(), epochs), log)
    after = sorted(p.name for p in (out / "checkpoints").glob(".*tmp*"))
    return {
        "mode": mode,
        "killed": killed_in,
        "finished_before_kill": finished,
        "checkpoint_left": left.exists(),
        "checkpoint_loads": loads,
        "partial_files_left": partial,
        "partial_files_after_resume": after,
        "identical": None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10, help="trials of each kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2, help="of each training run")
    p.add_argument("--work", type=Path, default=Path("/tmp/dnetc-faults"))
    p.add_argument("--out", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--marker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        sys.exit(child(args.child, args.marker, args.argv))
    rng = random.Random(args.seed)
    began = time.perf_counter()
    reference = args.work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    reference.mkdir(parents=True)
    t = time.perf_counter()
    run(command(reference / "run", "steps", reference / "marker", False, args.epochs), reference / "log")
    seconds = time.perf_counter() - t
    writes = len((reference / "marker").read_text().split())
    expected = state(reference / "run")
    print(f"reference: {seconds:.1f} s, {writes} checkpoint writes", flush=True)
    trials = []
    for mode in ("steps", "writes"):
        for i in range(args.trials):
            r = trial(mode, rng, args.work / f"{mode}-{i}", seconds, writes, args.epochs)
            got = state(args.work / f"{mode}-{i}" / "run")
            r["identical"] = same(got["model"], expected["model"]) and same(got["optimizer"], expected["optimizer"])
            r["same_files"] = files(args.work / f"{mode}-{i}" / "run") == files(reference / "run")
            trials.append(r)
            print(json.dumps(r), flush=True)
    summary = {
        mode: {
            "trials": sum(r["mode"] == mode for r in trials),
            "identical": sum(r["mode"] == mode and r["identical"] for r in trials),
            "same_files": sum(r["mode"] == mode and r["same_files"] for r in trials),
            "killed_before_the_end": sum(r["mode"] == mode and not r["finished_before_kill"] for r in trials),
            "left_a_checkpoint": sum(r["mode"] == mode and r["checkpoint_left"] for r in trials),
            "unloadable_checkpoints": sum(r["mode"] == mode and r["checkpoint_loads"] is False for r in trials),
        }
        for mode in ("steps", "writes")
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {
            "run": [*RUN, "--epochs", str(args.epochs)],
            "reference_seconds": seconds,
            "writes": writes,
            "summary": summary,
            "trials": trials,
        }
        result["seconds"] = time.perf_counter() - began
        (args.out / "faults.json").write_text(json.dumps(result, indent=2))
    if any(not r["identical"] or not r["same_files"] or r["checkpoint_loads"] is False for r in trials):
        sys.exit(1)


if __name__ == "__main__":
    main()
