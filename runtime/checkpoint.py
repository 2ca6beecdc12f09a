"""Checkpoints that survive crashes: written atomically, checked by a checksum, loaded without code.

A checkpoint file is what torch.save writes (a zip archive, which plain `torch.load(path,
weights_only=True)` opens), its archive comment `DNETC-CHECKPOINT/3 sha256=<hex>` the checksum of every
byte before it, so any flipped or missing byte is caught. Format 2 put the same checksum in a header
line before the torch bytes, and format 1 wrapped the bytes in a second torch file; both still load.
A file is written to a temporary file in the same folder, fsynced, and renamed over the old one, so
that a crash leaves either the old file or the new (and a temporary file, which the next run
removes). Everything loads with weights_only=True: a crafted pickle cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path
from typing import Any

import torch

FORMAT = "dnetc-checkpoint/3"
MAGIC = FORMAT.upper().encode() + b" sha256="  # the archive comment of every checkpoint, then 64 hex digits
TAIL = len(MAGIC) + 64
MAGIC_2 = b"DNETC-CHECKPOINT/2 sha256="  # format 2's first bytes
FORMAT_1 = "dnetc-checkpoint/1"
_END = b"PK\x05\x06"  # a zip archive's end record, 22 bytes, its last two the comment's length


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, altered or not dnetc's."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a read-only folder): the previous one stands."""


def save(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    body = bytearray(buffer.getbuffer())
    if body[-22:-18] != _END or body[-2:] != b"\0\0":
        raise AssertionError("torch.save wrote no zip archive without a comment")  # torch >= 1.6 always does
    body[-2:] = struct.pack("<H", TAIL)
    comment = MAGIC + hashlib.sha256(body).hexdigest().encode()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(body)
            f.write(comment)
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
    """Whether the file ends as a dnetc checkpoint of format 3 does, or begins as one of format 2."""
    with open(path, "rb") as f:
        start = f.read(len(MAGIC_2))
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - TAIL))
        return f.read(len(MAGIC)) == MAGIC or start == MAGIC_2


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    if data[-TAIL:].startswith(MAGIC):
        body, digest = data[:-TAIL], data[-TAIL + len(MAGIC) :]
    elif data.startswith(MAGIC_2):
        header, newline, body = data.partition(b"\n")
        digest = header[len(MAGIC_2) :] if newline else b""
    else:
        return _load_format_1(path, data, map_location)
    if hashlib.sha256(body).hexdigest().encode() != digest:
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
    if MAGIC_2.startswith(data[: len(MAGIC_2)]) and data:
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
