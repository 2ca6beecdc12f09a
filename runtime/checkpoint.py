"""Checkpoints that survive crashes: written atomically, checked by a checksum, loaded without code.

A checkpoint file holds {"format", "sha256", "payload"}: the payload is the torch.save bytes of the
state, the checksum is over those bytes. It is written to a temporary file in the same folder,
fsynced, and renamed over the old one, so that a crash leaves either the old file or the new.
Everything loads with weights_only=True: a crafted pickle cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "dnetc-checkpoint/1"


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, altered or not dnetc's."""


def save(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    wrapper = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
        },
        wrapper,
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(wrapper.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


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


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or altered?): {e}") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dnetc checkpoint")
    payload = outer["payload"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} holds state that cannot be loaded safely: {e}") from None
