"""Reports read off the graph IR alone: the one-line summary, the per-unit table, JSON, the zoo table."""

from __future__ import annotations

from typing import Any

import networkx as nx

from .passes import inputs

CONVENTION = (
    "MACs are multiply-adds for one sample, in torchinfo's convention: a convolution counts its "
    "parameters times its output positions, batch norm and linear layers their parameters; ReLU, "
    "pooling and concatenation count nothing. FLOPs are about twice the MACs."
)


def size(shape: tuple[int, ...]) -> str:
    """Spatial sizes as 32x32; a pooled vector has none, shown as a dash."""
    return "x".join(map(str, shape)) or "-"


def one_line(g: nx.DiGraph) -> str:
    inp, out = g.nodes["input"]["shape"], g.nodes[g.graph["output"]]["shape"]
    counts = f"{g.graph['params']:,} params, {g.graph['macs']:,} MACs"
    return f"{g.graph['name']}: {counts}, input {size(inp)} -> output {size(out)}"


def units(g: nx.DiGraph) -> list[dict[str, Any]]:
    """One row per part of the network (stem, each dense block and transition, head)."""
    rows: dict[str, dict[str, Any]] = {}
    for n in g.nodes:  # in the order built: topological, each part's nodes in the network's order
        node = g.nodes[n]
        if node["op"] == "input":
            continue
        unit = node["unit"]
        row = rows.get(unit)
        if row is None:
            pred = inputs(g, n)[0]
            shape = g.nodes[pred]["shape"]
            row = rows[unit] = {
                "name": unit,
                **g.graph["units"][unit],
                "channels_in": shape[0],
                "size_in": list(shape[1:]),
                "params": 0,
                "mult_adds": 0,
            }
        row["channels_out"] = node["shape"][0]
        row["size_out"] = list(node["shape"][1:])
        row["params"] += node["params"]
        row["mult_adds"] += node["macs"]
    return list(rows.values())


def exits(g: nx.DiGraph) -> list[dict[str, Any]]:
    """Each classifier's costs, the early exits' and the head's (last): the parameters and multiply-adds
    of the network up to it (every scale of a grid, as the forward pass computes them) and of itself,
    and the multiply-adds when every earlier exit is evaluated too, as anytime prediction runs them."""
    records = [*g.graph["exits"], {"unit": "head", "output": g.graph["output"]}]
    classifiers = {r["unit"] for r in records}
    nodes = list(g.nodes)  # in the order built, which is the order the forward pass runs
    rows = []
    for record in records:
        until = nodes[: nodes.index(record["output"]) + 1]
        path = [n for n in until if g.nodes[n]["unit"] not in classifiers or g.nodes[n]["unit"] == record["unit"]]
        rows.append(
            {
                "name": record["unit"],
                "classes": g.nodes[record["output"]]["shape"][0],
                "params": sum(g.nodes[n]["params"] for n in path),
                "mult_adds": sum(g.nodes[n]["macs"] for n in path),
                "mult_adds_anytime": sum(g.nodes[n]["macs"] for n in until),
            }
        )
    return rows


def exit_table(g: nx.DiGraph) -> str:
    """A fixed-width table of the classifiers of a multi-exit network: what each costs."""
    head = ("exit", "params", "MACs", "MACs with earlier exits")
    rows = [head]
    for r in exits(g):
        rows.append((r["name"], f"{r['params']:,}", f"{r['mult_adds']:,}", f"{r['mult_adds_anytime']:,}"))
    return columns(rows, left={0})


def to_json(g: nx.DiGraph) -> dict[str, Any]:
    net = g.graph["network"]
    return {
        "name": g.graph["name"],
        "file": net.file,
        "parameters": net.parameters,
        "params": g.graph["params"],
        "mult_adds": g.graph["macs"],
        "input": list(g.nodes["input"]["shape"]),
        "output": list(g.nodes[g.graph["output"]]["shape"]),
        "blocks": units(g),
        **({"exits": exits(g)} if g.graph["exits"] else {}),
        "convention": CONVENTION,
        "spec": net.model_dump(mode="json"),
    }


def unit_table(g: nx.DiGraph) -> str:
    """A fixed-width table of the units, with totals."""
    head = ("unit", "layers", "k", "channels", "size", "params", "MACs")
    rows = [head]
    for u in units(g):
        size_text = size(tuple(u["size_in"])) + (
            f" -> {size(tuple(u['size_out']))}" if u["size_out"] != u["size_in"] else ""
        )
        rows.append(
            (
                u["name"],
                str(u.get("layers", "")),
                str(u.get("growth", "")),
                f"{u['channels_in']} -> {u['channels_out']}",
                size_text,
                f"{u['params']:,}",
                f"{u['mult_adds']:,}",
            )
        )
    rows.append(("total", "", "", "", "", f"{g.graph['params']:,}", f"{g.graph['macs']:,}"))
    return columns(rows, left={0, 3, 4}, rules=(1, len(rows) - 1))


def columns(rows: list[tuple[str, ...]], left: set[int], rules: tuple[int, ...] = (1,)) -> str:
    """Rows as fixed-width columns two spaces apart: those in `left` flush left, the others right, and a
    rule of dashes before each row numbered in `rules` (by default under the heading)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        if k in rules:
            lines.append("  ".join("-" * w for w in widths))
        cells = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def zoo_table(graphs: list[nx.DiGraph]) -> str:
    """The zoo table of docs/zoo.md, in Markdown."""
    lines = ["| model | input | params | MACs |", "|---|---|---:|---:|"]
    for g in graphs:
        lines.append(
            f"| `{g.graph['name']}` | {size(g.nodes['input']['shape'])} | {g.graph['params']:,} | {g.graph['macs']:,} |"
        )
    return "\n".join(lines)


def memory_json(g: nx.DiGraph, batch: int, dtype: str) -> dict[str, Any]:
    from .estimate import estimate_all

    return {
        "batch": batch,
        "dtype": dtype,
        **{k: e._asdict() for k, e in estimate_all(g, batch, dtype).items()},
    }


def memory_table(g: nx.DiGraph, batch: int, dtype: str, chosen: str | None = None) -> str:
    """Estimated training memory per lowering, from the graph alone."""
    from .estimate import estimate_all

    est = estimate_all(g, batch, dtype)
    base = est["naive"].training
    lines = [
        f"Training memory of one step at batch {batch}, {dtype} (estimated from the graph; CPU):",
        f"{'lowering':<12}{'saved for backward':>20}{'peak activations':>18}{'with gradients':>16}{'vs naive':>10}",
    ]
    for name, e in est.items():
        mark = "  <- this module" if name == chosen else ""
        lines.append(
            f"{name:<12}{_mb(e.saved):>20}{_mb(e.peak):>18}{_mb(e.training):>16}{e.training / base:>9.2f}x{mark}"
        )
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"
