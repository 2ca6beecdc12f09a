"""The compiler: spec -> graph IR (networkx) -> passes -> PyTorch module.

`build_graph` needs no torch; `compile` imports it when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from dnetc import dsl

from .graph import build_graph

if TYPE_CHECKING:
    import torch


def compile(
    path_or_spec: str | Path | dsl.Network | nx.DiGraph,
    /,
    memory: str | None = None,
    batch: int = 64,
    device: str | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """Build the PyTorch module of a spec file, a zoo name, a validated `dsl.Network` or its graph
    (`build_graph`'s, which is then not built again).

        `memory` picks how dense blocks are lowered: a name in compiler/lowerings.py, or auto (the
        fastest whose estimated training memory at `batch` fits what `device` has free); by default the spec's
        `memory` setting, else naive. `features_only` gives the backbone of timm's API instead: the
        feature maps at each resolution (`out_indices` picks some), their channels and reductions in
        `feature_info`. Other keywords override the spec's parameters.
    """
    from .emit import backbone, emit
    from .lowerings import choices
    from .memory import choose_lowering

    g = path_or_spec if isinstance(path_or_spec, nx.DiGraph) else None
    if (g is not None or isinstance(path_or_spec, dsl.Network)) and overrides:
        raise TypeError("overrides apply to a spec file or zoo name; a Network is already bound")
    if g is not None:
        network = g.graph["network"]
    elif isinstance(path_or_spec, dsl.Network):
        network = path_or_spec
    else:
        network = dsl.load(path_or_spec, **overrides)
    g = g if g is not None else build_graph(network)  # a spec's unknown `memory` is a located error here
    requested = memory or network.memory or "naive"
    if requested not in choices():
        raise ValueError(f"memory must be one of {', '.join(choices())}, not {requested!r}")
    model = emit(g, choose_lowering(g, requested, batch, device))
    return backbone(model, out_indices) if features_only or out_indices is not None else model


__all__ = ["build_graph", "compile"]
