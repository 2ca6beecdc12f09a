"""The compiler: spec -> graph IR (networkx) -> passes -> PyTorch module.

`build_graph` needs no torch; `compile` imports it when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import dsl

from .graph import build_graph

if TYPE_CHECKING:
    import torch


def compile(path_or_spec: str | Path | dsl.Network, /, **overrides: Any) -> torch.nn.Module:
    """Build the PyTorch module of a spec file, a zoo name or a validated `dsl.Network`."""
    from .emit import emit

    if isinstance(path_or_spec, dsl.Network):
        if overrides:
            raise TypeError("overrides apply to a spec file or zoo name; a Network is already bound")
        network = path_or_spec
    else:
        network = dsl.load(path_or_spec, **overrides)
    return emit(build_graph(network))


__all__ = ["build_graph", "compile"]
