"""Checkpoints that survive crashes: written atomically, checked by a checksum, loaded without code.

A checkpoint file is one header line, `DNETC-CHECKPOINT/2 sha256=<hex>`, then the torch.save bytes of
the state; the checksum covers every byte after the header, so any flipped or missing byte is caught
(format 1 wrapped the bytes in a second torch file, whose own bytes went unchecked; it still loads).
A file is written to a temporary file in the same folder, fsynced, and renamed over the old one, so
that a crash leaves either the old file or the new (and a temporary file, which the next run
removes). Everything loads with weights_only=True: a crafted pickle cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "dnetc-checkpoint/2"
MAGIC = FORMAT.upper().encode() + b" sha256="  # the first bytes of every checkpoint file
FORMAT_1 = "dnetc-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, altered or not dnetc's."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a read-only folder): the previous one stands."""


def save(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    body = buffer.getbuffer()
    header = MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        before = "the previous checkpoint there is intact" if path.exists() else "there was none before"
        raise CheckpointWriteError(e.errno, f"cannot write checkpoint {path}: {e.strerror or e}; {before}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def inference_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights a checkpoint names for evaluation, fine-tuning and export: those of a training
    feature that keeps its own (`--ema`'s average), else the model's."""
    return state[state.get("inference", "model")]


def remove_stale(folder: Path) -> None:
    """Temporary files of other processes, removed when a run starts: a run's folder has one writer,
    so they were left by a process killed while writing."""
    for stale in folder.glob(".*.tmp-*"):
        if stale.name.rsplit("-", 1)[-1] != str(os.getpid()):
            stale.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_checkpoint(path: str | Path) -> bool:
    """Whether the file begins as a dnetc checkpoint of format 2 does."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        return _load_format_1(path, data, map_location)
    header, newline, body = data.partition(b"\n")
    digest = header[len(MAGIC) :].decode("ascii", errors="replace")
    if not newline or hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupt (truncated or altered): its checksum does not match its contents")
    return _unpickle(path, body, map_location)


def load_weights(path: str | Path) -> Any:
    """What a weights file holds, read without running code: a dnetc checkpoint's weights for evaluation
    and fine-tuning (its checksum verified), or a plain torch file's contents. `--emit python`'s source
    carries a copy of this function and what it calls."""
    path = Path(path)
    if is_checkpoint(path):
        return inference_weights(load(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("format") == FORMAT_1:
        return inference_weights(unwrap_format_1(path, state))
    return state


def _unpickle(path: Path, body: bytes, map_location: str | torch.device) -> dict[str, Any]:
    try:
        return torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} holds state that cannot be loaded safely: {e}") from None


def _load_format_1(path: Path, data: bytes, map_location: str | torch.device) -> dict[str, Any]:
    """A checkpoint of dnetc before format 2: a torch file of {format, sha256, payload}."""
    if MAGIC.startswith(data[: len(MAGIC)]) and data:
        raise CheckpointError(f"{path} is not a readable checkpoint: it is truncated ({len(data)} bytes)")
    try:
        outer = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or altered?): {e}") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT_1:
        raise CheckpointError(f"{path} is not a dnetc checkpoint")
    return unwrap_format_1(path, outer, map_location)


def unwrap_format_1(path: Path, outer: dict[str, Any], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state inside a loaded format-1 checkpoint, its checksum verified."""
    if not isinstance(outer.get("payload"), torch.Tensor):
        raise CheckpointError(f"{path} is corrupt: it holds no state")
    payload = outer["payload"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents")
    return _unpickle(path, payload, map_location)
