"""Graphviz diagrams of the graph IR: dense blocks as clusters, every dense connection drawn.

At layer detail each dense layer is a node and each concatenation input an edge; big networks
collapse to block detail, one node per unit (layers, k, channels in -> out, spatial size).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import graphviz
import networkx as nx

from .report import size, units

Detail = Literal["auto", "layer", "block"]
LAYER_DETAIL_MAX = 40  # above this many dense layers, `auto` draws blocks
FORMATS = ("svg", "png", "pdf", "dot", "gv")


def _op_text(g: nx.DiGraph, n: str) -> str:
    node = g.nodes[n]
    a, op = node["args"], node["op"]
    k = lambda: "x".join(map(str, a["kernel"]))  # noqa: E731
    stride = f"/{a['stride'][0]}" if a.get("stride") and max(a["stride"]) > 1 else ""
    return {
        "conv": lambda: f"conv {k()}{stride}, {node['shape'][0]}",
        "maxpool": lambda: f"maxpool {k()}{stride}",
        "avgpool": lambda: f"avgpool {k()}{stride}",
        "blurpool": lambda: f"blurpool {k()}{stride}",
        "conv_transpose": lambda: f"up-conv {k()}{stride}",
        "global_pool": lambda: "global avgpool",
        "linear": lambda: f"linear {node['shape'][0]}",
        "dropout": lambda: f"dropout {a['p']:g}",
        "norm": lambda: "norm" if a["kind"] == "batch" else f"{a['kind']} norm",
        "act": lambda: a["kind"],
    }.get(op, lambda: op)()


def diagram(g: nx.DiGraph, detail: Detail = "auto") -> graphviz.Digraph:
    layers = sum(u.get("layers", 0) for u in g.graph["units"].values())
    if detail == "auto":
        detail = "layer" if layers <= LAYER_DETAIL_MAX else "block"
    dot = graphviz.Digraph(g.graph["name"], graph_attr={"rankdir": "TB", "label": g.graph["name"], "labelloc": "t"})
    dot.attr("node", shape="box", style="rounded,filled", fillcolor="white", fontname="Helvetica", fontsize="10")
    dot.attr("edge", color="#555555", arrowsize="0.6")

    def viz_id(n: str) -> str:
        node = g.nodes[n]
        if detail == "layer" and node["layer"] is not None:
            return f"{node['unit']}.{node['layer']}"
        if detail == "layer" and node["op"] == "concat":
            return f"{node['unit']}.concat"
        return node["unit"]

    groups: dict[str, list[str]] = {}
    for n in nx.topological_sort(g):
        groups.setdefault(viz_id(n), []).append(n)
    rows = {u["name"]: u for u in units(g)}
    clusters: dict[str, graphviz.Digraph] = {}
    for vid, members in groups.items():
        unit = g.nodes[members[0]]["unit"]
        label, fill = _label(g, vid, members, rows.get(unit), _op_text)
        target = dot
        if detail == "layer" and g.graph["units"].get(unit, {}).get("kind") in ("dense", "msdense"):
            if unit not in clusters:
                info = g.graph["units"][unit]
                connect = f", {info['connect']}" if info.get("connect", "all") != "all" else ""
                if info["kind"] == "msdense":  # a grid: each cell a layer at one scale
                    connect = ", on a grid of scales"
                clusters[unit] = graphviz.Digraph(
                    f"cluster_{unit}",
                    graph_attr={
                        "label": f"{unit}: {info['layers']} layers, k={info['growth']}{connect}",
                        "style": "rounded",
                        "color": "#4a7ab5",
                    },
                )
            target = clusters[unit]
        target.node(vid, label, fillcolor=fill)
    for c in clusters.values():
        dot.subgraph(c)
    seen = set()
    skips = {
        (info["skip_node"], f"features.{unit}.cat"): info["skip"]
        for unit, info in g.graph["units"].items()
        if info["kind"] == "transition_up"
    }
    rising = _up_path(g, viz_id) if detail == "block" else {}
    for u, v in g.edges:
        a, b = viz_id(u), viz_id(v)
        if a != b and (a, b) not in seen:
            seen.add((a, b))
            if (u, v) in skips:  # a skip connection: dashed, and free of the layout's ranks (the U shape)
                dot.edge(a, b, label=skips[u, v], style="dashed", color="#4a7ab5", constraint="false")
            else:
                dot.edge(a, b, **({"constraint": "false"} if b in rising else {}))
    for group in _rows(rising):  # the way up beside the way down, at the same resolution
        with dot.subgraph() as row:
            row.attr(rank="same")
            for vid in group:
                row.node(vid)
    return dot


def _up_path(g: nx.DiGraph, viz_id: Callable[[str], str]) -> dict[str, str]:
    """Each part after the first transition up -> the part of the way down at its resolution."""
    out: dict[str, str] = {}
    level = None
    for unit, info in g.graph["units"].items():
        if info["kind"] == "transition_up":
            level = viz_id(info["skip_node"])
        if level is not None:
            out[unit] = level
    return out


def _rows(rising: dict[str, str]) -> list[list[str]]:
    rows: dict[str, list[str]] = {}
    for vid, level in rising.items():
        rows.setdefault(level, [level]).append(vid)
    return list(rows.values())


def _label(g: nx.DiGraph, vid: str, members: list[str], row: dict | None, op_text: Callable) -> tuple[str, str]:
    first, last = g.nodes[members[0]], g.nodes[members[-1]]
    if first["op"] == "input":
        return f"input\n{size(first['shape'])}", "#eeeeee"
    shape = last["shape"]
    if vid.endswith(".concat"):
        return f"concat\n{shape[0]} channels", "#dde8f5"
    if row is None or vid != row["name"]:
        ops = ", ".join(op_text(g, m) for m in members if g.nodes[m]["op"] in ("conv", "dropout"))
        grown = g.graph["units"][first["unit"]]["kind"] == "msdense"  # a cell of a grid: all its maps
        return f"{first['layer']}\n{ops}\n{'' if grown else '+'}{shape[0]} channels", "#dde8f5"
    channels = f"{row['channels_in']} -> {row['channels_out']} channels"
    where = size(tuple(row["size_in"])) + (
        f" -> {size(tuple(row['size_out']))}" if row["size_out"] != row["size_in"] else ""
    )
    if row["kind"] in ("dense", "msdense"):
        return f"{row['name']}\n{row['layers']} layers, k={row['growth']}\n{channels}\n{where}", "#dde8f5"
    if row["kind"] == "exit":  # an early classifier: set apart
        return f"{row['name']}\n{channels}", "#e3f1dc"
    ops = ", ".join(op_text(g, m) for m in members if g.nodes[m]["op"] not in ("norm", "act"))
    return f"{row['name']}\n{ops}\n{channels}\n{where}", "#f5ecd7"


def render(dot: graphviz.Digraph, path: str) -> str:
    """Write the diagram in the format the extension names; raises graphviz.ExecutableNotFound without dot."""
    fmt = path.rsplit(".", 1)[-1].lower() if "." in path else "svg"
    if fmt not in FORMATS:
        raise ValueError(f"unknown diagram format `.{fmt}`: use one of " + ", ".join(f".{f}" for f in FORMATS))
    if fmt in ("dot", "gv"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(dot.source)
        return path
    data = dot.pipe(format=fmt)
    with open(path, "wb") as f:
        f.write(data)
    return path
