"""Shared helpers: run the CLI as a user would, in a subprocess."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Without a GPU the fused lowering's Triton kernels run in Triton's interpreter (numpy) where a test
# asks for them (DNETC_KERNELS=triton); it must be chosen before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# CI runs the same generated examples every time, so that a red run can be reproduced
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Building graphs and modules makes millions of small objects; with the collector's default thresholds
# a full collection rescans every live one (the cached networks too) many times a second: this keeps the
# suite 10-15% faster, and memory stays bounded (the collections still run, less often).
gc.set_threshold(100_000, 50, 100)

ROOT = Path(__file__).resolve().parent.parent


def _distinct_zoo() -> list[str]:
    """The zoo less the families that a member names without binding anything (`network hardnet68 =
    hardnet()`): the same network twice, which the slower per-model tests run once."""
    import re

    from dnetc import dsl

    same = set()
    for path in dsl.zoo_dir().glob("*.dnet"):
        same |= set(re.findall(r"^network \w+ = (\w+)\(\)$", path.read_text(), re.M))
    return [n for n in dsl.zoo_names() if n not in same]


ZOO_DISTINCT = _distinct_zoo()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dnetc.runtime.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=600,
    )


def stop_after_first_epoch(args: list[str], out: Path) -> tuple[int, str, str]:
    """Run `dnetc ARGS` (writing to `out`) and send it SIGTERM once its first epoch is logged."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def dnetc(capsys):
    """`dnetc ARGS` in this process, without an interpreter's start-up: exit status and output, as
    run_cli gives them. For commands that leave no global state behind (no --deterministic)."""
    from dnetc.runtime.cli import main

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return call


def bench(script: str, *args: str) -> None:
    """Run bench/SCRIPT with ARGS as a user would; fail with its stderr."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
