"""Weights as safetensors files that carry their network: the spec's texts, the overrides, the parameter
count and the weights' SHA-256 in the metadata, so that the file alone rebuilds and checks the network.

`dnetc SPEC --weights W --export safetensors FILE` writes one; `dnetc FILE.safetensors --summary` (or
`--train`, `--eval`) rebuilds its network from the metadata and loads its weights; `--weights
FILE.safetensors` reads any tool's safetensors file (timm's, Hugging Face's) as a state_dict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from dnetc.dsl import spec as dsl_spec

SUFFIX = ".safetensors"
FORMAT = "dnetc-safetensors/1"


class TensorFileError(Exception):
    """A safetensors file that cannot be read, or whose metadata does not rebuild its network."""


def is_tensorfile(path: str | Path) -> bool:
    return str(path).endswith(SUFFIX)


def digest(state: dict[str, Tensor]) -> str:
    """The weights' SHA-256: each tensor's name, dtype, shape and bytes, in the order of the names."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write(model: Any, network: dsl_spec.Network, overrides: list[str], path: str | Path, params: int) -> Path:
    """The model's state (buffers too) with the network's bundle of spec texts in the metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    files, main = network.bundle()
    metadata = {
        "format": "pt",
        "dnetc": FORMAT,
        "dnetc.network": network.name,
        "dnetc.main": main,
        "dnetc.specs": json.dumps(files),
        "dnetc.overrides": json.dumps(list(overrides)),
        "dnetc.parameters": str(params),
        "dnetc.sha256": digest(state),
    }
    save_file(state, str(path), metadata=metadata)
    return Path(path)


def read(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata (safetensors runs no code: it holds only tensors), the
    weights' SHA-256 checked against a dnetc file's metadata."""
    state, metadata = _open(path, tensors=True)
    if metadata.get("dnetc") == FORMAT and digest(state) != metadata.get("dnetc.sha256"):
        raise TensorFileError(f"{path} is corrupt: its weights' SHA-256 does not match its metadata")
    return state, metadata


def metadata(path: str | Path) -> dict[str, str]:
    """A safetensors file's metadata alone: its header, no tensor read (they are read, and checked, with
    the weights)."""
    return _open(path, tensors=False)[1]


def _open(path: str | Path, tensors: bool) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118 - no iteration
    except FileNotFoundError:
        raise TensorFileError(f"no weights file at {path}") from None
    except Exception as e:
        raise TensorFileError(f"{path} is not a readable safetensors file: {e}") from None
    return state, header


def load_spec(spec: str | Path, overrides: Mapping[str, Any] | None = None, /, **extra: Any) -> dsl_spec.Network:
    """The network of a spec file or zoo name (dsl.load), or of a dnetc safetensors file: rebuilt from its
    metadata with the overrides it was written with, then these."""
    from dnetc import dsl

    if not is_tensorfile(spec):
        return dsl.load(spec, overrides, **extra)
    header = metadata(spec)
    if header.get("dnetc") != FORMAT:
        raise TensorFileError(
            f"{spec} holds weights but no dnetc network (another tool wrote it): give a spec, "
            f"and the file with --weights {spec}"
        )
    try:
        files, main = json.loads(header["dnetc.specs"]), header["dnetc.main"]
        recorded = dsl.parse_overrides(json.loads(header["dnetc.overrides"]))
    except (KeyError, ValueError, dsl.DnetError) as e:
        raise TensorFileError(f"{spec} has damaged dnetc metadata ({e})") from None
    return dsl.load_bundle(files, main, {**recorded, **(overrides or {})}, **extra)


def recorded_overrides(path: str | Path) -> list[str]:
    """The `--set` overrides a dnetc safetensors file was written with."""
    return list(json.loads(metadata(path).get("dnetc.overrides", "[]")))


def check(path: str | Path, g: Any) -> None:
    """The rebuilt network's parameter count is the one the file recorded."""
    recorded = metadata(path).get("dnetc.parameters")
    if recorded is not None and int(recorded) != g.graph["params"]:
        raise TensorFileError(
            f"{path} recorded {int(recorded):,} parameters but its spec now builds {g.graph['params']:,}"
        )
