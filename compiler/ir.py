"""The graph IR's schema: what the networkx graph of a network holds, at each node and for the whole.

compiler/graph.py builds it, deciding each node's op, module, unit, layer, args and span;
compiler/passes.py adds each node's shape, parameters and multiply-adds and writes nothing else.
Both records are typed mappings: networkx keeps them (`g.nodes[n]`, `g.graph`), the code reads them
as `node["shape"]` or `node.shape`, and a key outside the schema is an error, not a new entry.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any

import networkx as nx

from dnetc.dsl import spec
from dnetc.dsl.errors import Span

Shape = tuple[int, ...]  # (channels, *spatial)


class _Record(MutableMapping):
    """A dataclass read and written as a mapping of its fields, and only of them (set by `_schema`)."""

    _KEYS: tuple[str, ...] = ()
    _FIELDS: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Any:  # on every pass's path: one set lookup, then the field
        if key not in self._FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._FIELDS:
            raise KeyError(f"{type(self).__name__} has no field `{key}`: the IR's schema is compiler/ir.py")
        setattr(self, key, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"the fields of {type(self).__name__} cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    def copy(self) -> _Record:
        return type(self)(**{k: getattr(self, k) for k in self._KEYS})


def _schema(cls: type[_Record]) -> type[_Record]:
    """Record a dataclass record's fields, in order and as a set."""
    cls._KEYS = tuple(f.name for f in fields(cls))
    cls._FIELDS = frozenset(cls._KEYS)
    return cls


@_schema
@dataclass(eq=False)
class OpNode(_Record):
    """One operation. `op`: what it computes (a key of passes.SHAPE_RULES, or `input`); `module`: the dotted
    name of the torch module that carries it out (None for input, concat, add and slices); `unit`: the
    part of the network it belongs to; `layer`: the dense layer inside the unit, if any; `args`: what
    the op needs (kernel, stride, padding, channels, kind of norm, ...); `span`: where the spec wrote it."""

    op: str = "input"
    module: str | None = None
    unit: str = "input"
    layer: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    span: Span | None = None
    # written by compiler/passes.py
    shape: Shape = ()
    params: int = 0
    macs: int = 0


@_schema
@dataclass(eq=False)
class GraphInfo(_Record):
    """The graph's own records. `units`: each part's record (its kind and settings, in order);
    `containers`: each module path above the op nodes -> the kind of module the emitter makes there
    and its settings; `kept`: feature maps kept for skips, by (name, index); `exits`: each early
    classifier's unit, the node it reads and its output node; `output`: the node the network ends in;
    `params` and `macs`: the totals, written by the passes."""

    name: str = ""
    network: spec.Network | None = None
    units: dict[str, dict[str, Any]] = field(default_factory=dict)
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept: dict[tuple[str, int], str] = field(default_factory=dict)
    exits: list[dict[str, str]] = field(default_factory=list)
    output: str = "input"
    params: int = 0
    macs: int = 0


class Graph(nx.DiGraph):
    """A network's graph IR: networkx's DiGraph with the schema above for its nodes and itself."""

    node_attr_dict_factory = OpNode
    graph_attr_dict_factory = GraphInfo

    def _repr_html_(self) -> str:
        """In a notebook: the one-line summary, the diagram (where Graphviz is installed) and the table of parts."""
        import html

        from . import report

        svg = self._repr_svg_() or ""
        table = html.escape(f"{report.one_line(self)}\n\n{report.unit_table(self)}")
        return f"<div>{svg}<pre>{table}</pre></div>"

    def _repr_svg_(self) -> str | None:
        """The block-level diagram as SVG, or None without Graphviz's `dot`."""
        import shutil

        if shutil.which("dot") is None:
            return None
        from .viz import diagram

        return diagram(self, "block").pipe(format="svg").decode()
