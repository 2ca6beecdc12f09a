"""Faults injected into training: SIGKILL mid-step and mid-write, a full disk, damaged checkpoints."""

from __future__ import annotations

import builtins
import errno
import json
import random

import pytest
import torch

from dnetc.runtime import checkpoint, weights
from dnetc.runtime.cli import main

from .conftest import bench

TINY = ["densenet_bc", "--set", "depth=10", "--set", "growth=6", "--set", "size=16", "--train", "digits"]


def state(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"model": {"w": torch.randn(64, 32), "b": torch.randn(32)}, "epoch": seed, "history": [{"loss": 0.5}]}


class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written, as a full disk does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def write(self, data) -> int:
        data = memoryview(data)
        if len(data) > self.room:
            self.f.write(data[: self.room])
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)


def full_disk(monkeypatch, room: int = 1000, after: int = 0) -> None:
    """Checkpoint writes after the first `after` fail once `room` bytes are written."""
    calls = {"n": 0}

    def fake_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        if "w" not in mode:
            return f
        calls["n"] += 1
        return FullDisk(f, room) if calls["n"] > after else f

    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    checkpoint.save(state(1), path)
    full_disk(monkeypatch)
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
        checkpoint.save(state(2), path)
    assert e.value.errno == errno.ENOSPC
    assert "No space left on device" in str(e.value) and "previous checkpoint there is intact" in str(e.value)
    assert torch.equal(checkpoint.load(path)["model"]["w"], state(1)["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # the half-written file is gone


def test_training_on_a_full_disk_stops_with_a_message_and_its_last_checkpoint(tmp_path, monkeypatch, capsys):
    full_disk(monkeypatch, after=3)  # latest, best and epoch-0001 of the first epoch are written
    code = main([*TINY, "--epochs", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "cannot write checkpoint" in err and "No space left on device" in err and "intact" in err, err
    assert "Traceback" not in err
    assert checkpoint.load(tmp_path / "checkpoints" / "latest.pt")["epoch"] == 1
    assert not list((tmp_path / "checkpoints").glob(".*"))


def test_a_run_removes_the_temporary_files_of_a_writer_killed_mid_write(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".latest.pt.tmp-999999"
    stale.write_bytes(b"half a checkpoint")
    assert main([*TINY, "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert not stale.exists()
    assert checkpoint.load(folder / "latest.pt")["epoch"] == 1


def test_flipped_and_truncated_bytes_are_detected_and_named(tmp_path):
    path = tmp_path / "latest.pt"
    checkpoint.save(state(3), path)
    original = path.read_bytes()
    rng = random.Random(0)
    damaged = tmp_path / "damaged.pt"
    positions = rng.sample(range(len(original)), 150)
    for i in positions:
        raw = bytearray(original)
        raw[i] ^= 1 << rng.randrange(8)
        damaged.write_bytes(raw)
        with pytest.raises(checkpoint.CheckpointError, match=r"damaged\.pt"):
            checkpoint.load(damaged)
    for n in [0, 1, 10, *rng.sample(range(len(original)), 40), len(original) - 1]:
        damaged.write_bytes(original[:n])
        with pytest.raises(checkpoint.CheckpointError, match=r"damaged\.pt"):
            checkpoint.load(damaged)


def test_sigkill_in_steps_and_in_checkpoint_writes_resumes_to_identical_parameters(tmp_path):
    """bench/faults.py with one trial of each kind and one epoch (docs/reliability.md's figures come from more)."""
    work = str(tmp_path / "work")
    bench("faults.py", "--trials", "1", "--epochs", "1", "--seed", "1", "--work", work, "--out", str(tmp_path))
    result = json.loads((tmp_path / "faults.json").read_text())
    assert len(result["trials"]) == 2 and all(t["identical"] and t["same_files"] for t in result["trials"])
    assert all(t["checkpoint_loads"] is not False for t in result["trials"])
    assert all(t["partial_files_after_resume"] == [] for t in result["trials"])
    writes = [t for t in result["trials"] if t["mode"] == "writes"]
    assert all(t["checkpoint_left"] or t["killed"].startswith("checkpoint write 1 ") for t in writes)


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_checksummed_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path, capsys):
    """A crafted file with a valid checksum (of format 3 and of format 2) still loads with weights_only:
    nothing runs."""
    import hashlib
    import io

    crafted = tmp_path / "crafted.pt"
    checkpoint.save({"model": Exploit()}, crafted)
    with pytest.raises(checkpoint.CheckpointError, match=r"crafted\.pt holds state that cannot be loaded safely"):
        checkpoint.load(crafted)
    buffer = io.BytesIO()
    torch.save({"model": Exploit()}, buffer)
    body = buffer.getvalue()
    crafted.write_bytes(checkpoint.MAGIC_2 + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    with pytest.raises(checkpoint.CheckpointError, match=r"crafted\.pt holds state that cannot be loaded safely"):
        checkpoint.load(crafted)
    assert "pwned" not in capsys.readouterr().out


def test_a_checkpoint_opens_with_plain_torch_load(tmp_path):
    """torch.load(path, weights_only=True) reads a checkpoint as it is: the checksum is the zip's comment."""
    checkpoint.save(state(5), tmp_path / "best.pt")
    plain = torch.load(tmp_path / "best.pt", weights_only=True)
    assert torch.equal(plain["model"]["w"], state(5)["model"]["w"]) and plain["epoch"] == state(5)["epoch"]
    assert checkpoint.is_checkpoint(tmp_path / "best.pt")


def test_format_2_checkpoints_still_load(tmp_path):
    """Checkpoints with the checksum in a header line before the torch bytes."""
    import hashlib
    import io

    buffer = io.BytesIO()
    torch.save(state(6), buffer)
    body = buffer.getvalue()
    path = tmp_path / "two.pt"
    path.write_bytes(checkpoint.MAGIC_2 + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    assert checkpoint.is_checkpoint(path)
    assert torch.equal(checkpoint.load(path)["model"]["w"], state(6)["model"]["w"])
    assert torch.equal(weights.read(path)["w"], state(6)["model"]["w"])
    path.write_bytes(checkpoint.MAGIC_2 + hashlib.sha256(body).hexdigest().encode() + b"\n" + body[:-1] + b"x")
    with pytest.raises(checkpoint.CheckpointError, match="checksum does not match"):
        checkpoint.load(path)


def test_format_1_checkpoints_still_load(tmp_path):
    """Checkpoints written before the header line: a torch file of {format, sha256, payload}."""
    import hashlib
    import io

    buffer = io.BytesIO()
    torch.save(state(4), buffer)
    payload = buffer.getvalue()
    old = {
        "format": "dnetc-checkpoint/1",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    torch.save(old, tmp_path / "old.pt")
    assert torch.equal(checkpoint.load(tmp_path / "old.pt")["model"]["w"], state(4)["model"]["w"])
    assert torch.equal(weights.read(tmp_path / "old.pt")["w"], state(4)["model"]["w"])  # --weights reads it too
    old["payload"][100] ^= 1
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(checkpoint.CheckpointError, match="checksum does not match"):
        checkpoint.load(tmp_path / "old.pt")
    with pytest.raises(weights.WeightsError, match="checksum does not match"):
        weights.read(tmp_path / "old.pt")
