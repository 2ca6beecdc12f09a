"""Predict a training step's activation memory from the graph alone, for each lowering.

`saved` is what autograd holds for the backward pass when the forward pass ends (each storage once,
parameters and buffers excluded). `peak` adds what the backward pass allocates on top while it works
through a dense block (gradient buffers and recomputed scratch), taken at its worst block.
`training` also counts the parameters' gradients allocated by then: the step's peak above what the
parameters and the optimizer's state take. No torch needed: it reads shapes from the graph.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import networkx as nx

from .lowerings import LOWERINGS, Lowering
from .passes import inputs

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


class Estimate(NamedTuple):
    saved: int  # bytes held for the backward pass at the end of the forward pass
    peak: int  # bytes of activations and gradient buffers at the worst moment of the step
    training: int  # peak with the parameter gradients that exist by then


def _elements(g: nx.DiGraph, n: str, batch: int) -> int:
    return batch * math.prod(g.nodes[n]["shape"])


def _in_place(node: dict) -> bool:
    return node["op"] == "act" and node["args"]["kind"] == "relu"


def _storage(g: nx.DiGraph, n: str) -> str:
    """The node whose output storage `n` shares: in-place ReLU writes into its input, a slice is a view,
    and a layer of the spec's own reads a lone input as it is (compiler/modules.py's Layer)."""
    while True:
        node = g.nodes[n]
        lone = node["op"] == "concat" and g.in_degree(n) == 1
        if not (_in_place(node) or node["op"] == "slice" or (lone and _container(g, n) == "layer")):
            return n
        (n,) = g.predecessors(n)


def _container(g: nx.DiGraph, n: str) -> str | None:
    """The kind of module that holds node `n`."""
    return g.graph["containers"].get(n.rsplit(".", 1)[0], {}).get("kind")


def _saves(g: nx.DiGraph, n: str, batch: int, size: int, device: str) -> tuple[list[str], int]:
    """What one op saves for backward in PyTorch: (storages of other nodes' outputs, extra bytes)."""
    node = g.nodes[n]
    op = node["op"]
    ins = inputs(g, n)
    if op in ("conv", "lgconv", "avgpool", "linear"):
        return [_storage(g, ins[0])], 0
    if op == "norm":  # the input, and the mean and inverse std (kept in float32 at least)
        kind = node["args"]["kind"]
        if kind == "batch":  # per channel
            count = node["shape"][0]
        elif kind == "instance":  # per sample and channel
            count = batch * node["shape"][0]
        else:  # per sample and group
            count = batch * (1 if kind == "layer" else int(kind[len("group(") : -1]))
        return [_storage(g, ins[0])], 2 * count * max(size, 4)
    if op == "act":  # ReLU keeps its output (in place: its input's storage), the others their input
        return [_storage(g, n if _in_place(node) else ins[0])], 0
    if op == "blurpool":  # the reflect-padded input, a tensor of its own
        shape = g.nodes[ins[0]]["shape"]
        pad = node["args"]["padding"]
        return [], batch * shape[0] * math.prod(s + 2 * p for s, p in zip(shape[1:], pad, strict=True)) * size
    if op == "maxpool":  # the input and int64 indices of the maxima
        return [_storage(g, ins[0])], 8 * _elements(g, n, batch)
    if op == "dropout":  # CPU keeps the scaled noise tensor, CUDA a boolean mask
        return [], _elements(g, n, batch) * (size if device == "cpu" else 1)
    return [], 0


def _layers(g: nx.DiGraph) -> dict[tuple[str, str], list[str]]:
    """The nodes of each dense layer, in order, keyed by (block, layer)."""
    out: dict[tuple[str, str], list[str]] = {}
    for n in nx.topological_sort(g):
        d = g.nodes[n]
        if d["layer"] is not None:
            out.setdefault((d["unit"], d["layer"]), []).append(n)
    return out


def _saved_by_unit(g: nx.DiGraph, lowering: str, batch: int, size: int, device: str) -> dict[str, int]:
    """Bytes each unit holds for backward (a storage counted in the first unit that holds it)."""
    layers = _layers(g)
    skip: set[str] = set()  # ops whose saves the lowering avoids
    held: dict[str, set[str]] = {}  # unit -> storages held by the lowering itself
    records: dict[str, Lowering] = {}
    for (unit, _), nodes in layers.items():
        if g.graph["units"][unit]["kind"] != "dense":  # the lowerings lower dense blocks; the rest runs naive
            continue
        if unit not in records:  # once a block: it scans the graph for the block's norm and activation
            records[unit] = _lowering_of(g, unit, lowering)
        record = records[unit]
        keeps = record.keeps
        if keeps == "all":
            continue
        convs = [i for i, n in enumerate(nodes) if g.nodes[n]["op"] == "conv"]
        if g.graph["units"][unit].get("general"):  # the whole layer recomputed from its inputs
            skip.update(nodes)
            held.setdefault(unit, set()).update(_storage(g, u) for u in inputs(g, nodes[0]))
            continue
        if g.graph["units"][unit].get("two_way"):  # PeleeNet's layers
            if keeps == "inputs":  # concat and both 1x1 Conv-BN-activations recomputed
                skip.update(n for n in nodes if n.endswith(".cat") or ".branch1a." in n or ".branch2a." in n)
                held.setdefault(unit, set()).update(_storage(g, u) for u in inputs(g, nodes[0]))
            else:  # the buffer alone; each layer is recomputed from it
                skip.update(nodes)
                held.setdefault(unit, set()).add(f"features.{unit}.cat")
            continue
        if keeps == "inputs":  # concat+BN+ReLU+conv1 save nothing; the checkpoint holds the inputs
            skip.update(nodes[: convs[0] + 1])
            held.setdefault(unit, set()).update(_storage(g, u) for u in inputs(g, nodes[0]))
        else:  # the block keeps its buffer (its output's storage) and each non-final stage's output
            masks = record.dropout_masks  # and each dropout's mask, or draws it again
            skip.update(n for n in nodes if not (masks and g.nodes[n]["op"] == "dropout"))
            for c in convs[:-1]:
                dropped = c + 1 < len(nodes) and g.nodes[nodes[c + 1]]["op"] == "dropout"
                held.setdefault(unit, set()).add(nodes[c + 1] if dropped else nodes[c])
            held.setdefault(unit, set()).add(f"features.{unit}.cat")
    seen: set[str] = set()
    out: dict[str, int] = {}
    for n in nx.topological_sort(g):
        d = g.nodes[n]
        unit = d["unit"]
        out.setdefault(unit, 0)
        if n in skip:
            continue
        storages, extra = _saves(g, n, batch, size, device)
        out[unit] += extra
        for s in storages:
            if s not in seen:
                seen.add(s)
                out[unit] += _bytes(g, s, batch, size)
    for unit, storages in held.items():
        for s in storages:
            if s not in seen:
                seen.add(s)
                out[unit] += _bytes(g, s, batch, size)
    return out


def _lowering_of(g: nx.DiGraph, unit: str, name: str) -> Lowering:
    """The lowering a dense block gets: `name`'s, or a fallback's where `name` does not cover the block."""
    kinds = {d["op"]: d["args"].get("kind") for _, d in g.nodes(data=True) if d["unit"] == unit and d.get("args")}
    info = g.graph["units"][unit]
    return LOWERINGS[name].for_block(
        bool(info.get("general")), str(kinds.get("norm")), str(kinds.get("act")), bool(info.get("two_way"))
    )


def _bytes(g: nx.DiGraph, storage: str, batch: int, size: int) -> int:
    return _elements(g, storage, batch) * size


def estimate(g: nx.DiGraph, lowering: str, batch: int = 64, dtype: str = "float32", device: str = "cpu") -> Estimate:
    size = DTYPE_BYTES[dtype]
    by_unit = _saved_by_unit(g, lowering, batch, size, device)
    units = list(dict.fromkeys(g.nodes[n]["unit"] for n in nx.topological_sort(g)))
    params = {u: 0 for u in units}
    for _, d in g.nodes(data=True):
        params[d["unit"]] += d["params"] * size
    saved = sum(by_unit.values())
    # Backward frees each unit's saves as it passes it and allocates its parameters' gradients: at a
    # dense block, the units before it still hold their saves, the units after it have their gradients.
    peak, training = saved, max(saved, sum(params.values()))
    held = 0
    for i, unit in enumerate(units):
        held += by_unit.get(unit, 0)
        if g.graph["units"].get(unit, {}).get("kind") != "dense":
            continue
        out = _elements(g, f"features.{unit}.cat", batch)
        last = _elements(g, f"features.{unit}.{_last_layer(g, unit)}.cat", batch)
        # the incoming gradient and the features' gradients, and one layer's scratch (recomputed inputs)
        per_output, per_last = _lowering_of(g, unit, lowering).scratch
        scratch = per_output * out + per_last * last
        peak = max(peak, held + int(scratch) * size)
        training = max(training, held + int(scratch) * size + sum(params[u] for u in units[i:]))
    return Estimate(saved, peak, training)


def _last_layer(g: nx.DiGraph, unit: str) -> str:
    return f"denselayer{g.graph['units'][unit]['layers']}"


def saved_by_unit(
    g: nx.DiGraph, lowering: str, batch: int = 64, dtype: str = "float32", device: str = "cpu"
) -> dict[str, int]:
    """The bytes each part of the network holds for the backward pass under a lowering."""
    return _saved_by_unit(g, lowering, batch, DTYPE_BYTES[dtype], device)


def estimate_all(g: nx.DiGraph, batch: int = 64, dtype: str = "float32", device: str = "cpu") -> dict[str, Estimate]:
    return {lowering: estimate(g, lowering, batch, dtype, device) for lowering in LOWERINGS}
