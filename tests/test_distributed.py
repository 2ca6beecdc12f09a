"""Data parallelism: N processes train as one process with the same global batch would."""

from __future__ import annotations

import json

import pytest
import torch

from dnetc.runtime import checkpoint
from dnetc.runtime.distributed import World

from .conftest import run_cli, stop_after_first_epoch

NET = ["densenet_bc", "--set", "depth=10", "--set", "growth=8", "--train", "digits", "--device", "cpu"]
# the contiguous layout: the comparisons below hold to the order of float sums, which channels_last's
# kernels change between batches of 32 and 64
RUN = [*NET, "--epochs", "2", "--deterministic", "--no-channels-last"]


def losses(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    r = run_cli(*RUN, "--nproc", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "cpu x 2 processes" in r.stdout and r.stdout.count("digits test error") == 1  # rank 0 speaks
    return out


def test_shares_partition_the_batch():
    for n in (2, 7, 64, 65):
        for size in (1, 2, 3, 8):
            if n < size:
                continue
            parts = [World(rank, size).share(n) for rank in range(size)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_two_processes_follow_one(tmp_path, two_processes):
    # the same micro-batches in one process (gradient accumulation): the same batch-norm batches,
    # so the same losses up to the order of float sums
    r = run_cli(*RUN, "--accumulate", "2", "--out", str(tmp_path / "acc"))
    assert r.returncode == 0, r.stderr
    r = run_cli(*RUN, "--out", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr
    ddp, acc, one = losses(two_processes), losses(tmp_path / "acc"), losses(tmp_path / "one")
    for a, b in zip(ddp, acc, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_error"] == pytest.approx(b["train_error"], abs=0.1)
    # one process, whole batch: batch norm over 64 rather than 2 x 32 samples; within 5% per epoch
    for a, b in zip(ddp, one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)


def test_resume_under_ddp_is_bit_identical(tmp_path, two_processes):
    out = tmp_path / "split"
    code, stdout, stderr = stop_after_first_epoch([*RUN, "--nproc", "2", "--out", str(out)], out)
    assert code == 1, stderr
    assert "--resume" in stdout and "--nproc 2" in stdout and "Traceback" not in stderr
    state = checkpoint.load(out / "checkpoints" / "latest.pt")
    assert len(state["rank_rng"]) == 2 and state["world_size"] == 2
    r = run_cli(*RUN, "--nproc", "2", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    a = checkpoint.load(two_processes / "checkpoints" / "latest.pt")["model"]
    b = checkpoint.load(out / "checkpoints" / "latest.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _one_epoch_under_ddp(out, lowering: str) -> float:
    r = run_cli(*NET, "--epochs", "1", "--deterministic", "--nproc", "2", "--memory", lowering, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"memory {lowering}" in r.stdout
    return losses(out)[0]["train_loss"]


@pytest.fixture(scope="module")
def naive_under_ddp(tmp_path_factory) -> float:
    return _one_epoch_under_ddp(tmp_path_factory.mktemp("naive"), "naive")


# the shared buffer's own autograd function under DDP; the checkpoint lowering is torch's checkpointing,
# which DDP supports (with use_reentrant=False), and trains in one process in tests/test_memory.py
@pytest.mark.parametrize("memory", ["shared"])
def test_every_lowering_trains_under_ddp(tmp_path, memory, naive_under_ddp):
    assert _one_epoch_under_ddp(tmp_path, memory) == pytest.approx(naive_under_ddp, rel=1e-5)


def test_distributed_mistakes_exit_2(tmp_path):
    r = run_cli(*NET, "--nproc", "2", "--sync-bn")
    assert r.returncode == 2 and "--sync-bn needs CUDA" in r.stderr
    r = run_cli("densenet_bc", "--train", "cifar10", "--data", str(tmp_path), "--nproc", "2")
    assert r.returncode == 2 and r.stderr.count("cifar-10-python.tar.gz") >= 1 and "Traceback" not in r.stderr
    r = run_cli(*NET, "--nproc", "2", "--batch-size", "1")
    assert r.returncode == 2 and "cannot be shared by 2" in r.stderr
