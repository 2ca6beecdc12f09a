"""Passes over the graph IR: shape inference, then parameter and multiply-add counts.

Counts follow torchinfo's convention, so that they equal its report on the emitted module:
a convolution's multiply-adds are its parameters times its output positions, batch norm and
linear layers count their parameters once per sample; ReLU, pooling, dropout and concatenation
count nothing. These are multiply-adds (MACs), not FLOPs, for one sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import networkx as nx

from dnetc.dsl import DnetError, spec

Shape = tuple[int, ...]  # (channels, *spatial)


def _window(node: dict, shape: Shape) -> Shape:
    """Spatial size after a sliding window (convolution or pooling), floor mode."""
    a = node["args"]
    out = []
    dilation = a.get("dilation", (1,) * len(a["kernel"]))
    for s, k, st, p, d in zip(shape[1:], a["kernel"], a["stride"], a["padding"], dilation, strict=True):
        if node["op"] != "conv" and 2 * p > k:
            raise DnetError(
                f"`{node['op']}` padding {p} is more than half its window {k}",
                node["span"],
                help=f"use padding <= {k // 2}",
            )
        span = s + 2 * p - d * (k - 1) - 1
        n = (-(-span // st) if a.get("ceil") else span // st) + 1
        if a.get("ceil") and (n - 1) * st >= s + p:  # as torch: the last window starts inside the input
            n -= 1
        out.append(n)
    return tuple(out)


def conv_width(node: dict, c_in: int) -> int:
    """A convolution's output channels on `c_in` input channels: as the spec gave them, or as its rule
    makes them from the input (PeleeNet's two-way 1x1, a transition's floor(θ·C), a depthwise conv's
    and a conv of `none` channels: the input's). Read by the shape rule and by the emitter."""
    a = node["args"]
    if "two_way" in a:  # PeleeNet's two-way layer: the 1x1 width, which depends on the input
        growth, width = a["two_way"]["growth"], a["two_way"]["bottleneck"]
        out = spec.two_way_width(growth, width, c_in)
        if out < 1:
            raise DnetError(
                f"a two-way dense layer's 1x1 convolutions get no channels from {c_in} input channels "
                f"(growth {growth}, bottleneck width {width})",
                node["span"],
                help="raise the growth rate, the bottleneck width, or the channels entering the block",
            )
        return out
    if "compression" in a:  # a transition keeps floor(θ·C) channels
        out = math.floor(a["compression"] * c_in)
        if out < 1:
            raise DnetError(
                f"compression {a['compression']} of {c_in} channels leaves none",
                node["span"],
                help="raise the compression so that at least one channel remains",
            )
        return out
    if a.get("depthwise") or a.get("channels") is None:  # one filter per channel, or as many as its input
        return c_in
    return a["channels"]


def conv_groups(node: dict, c_in: int) -> int:
    """A convolution's groups: one per input channel for a depthwise conv."""
    return c_in if node["args"].get("depthwise") else node["args"].get("groups", 1)


def _conv(node: dict, ins: list[Shape]) -> Shape:
    (shape,) = ins
    out, groups = conv_width(node, shape[0]), conv_groups(node, shape[0])
    for what, c in (("input", shape[0]), ("output", out)):
        if c % groups:
            raise DnetError(
                f"a convolution in {groups} groups needs {what} channels divisible by {groups}, but it has {c}",
                node["span"],
                label=f"{c} channels here",
                help=f"choose groups that divide {c}"
                + (f" (e.g. {max(g for g in range(1, groups) if c % g == 0)})" if groups > 1 else ""),
            )
    return (out, *_window(node, shape))


def _uncropped(node: dict, shape: Shape) -> Shape:
    """The full spatial output of a transposed convolution, before the crop to the kept maps."""
    a = node["args"]
    return tuple(
        (s - 1) * st - 2 * p + k for s, k, st, p in zip(shape[1:], a["kernel"], a["stride"], a["padding"], strict=True)
    )


def _conv_transpose(node: dict, ins: list[Shape]) -> Shape:
    """Upsampling to the kept maps' size (the second shape): the full output, centre-cropped."""
    shape, like = ins
    full, target = _uncropped(node, shape), like[1:]
    if any(f < t for f, t in zip(full, target, strict=True)):
        raise DnetError(
            f"the skip connection joins feature maps of {_show(target)} to upsampled maps of {_show(full)}, "
            f"which are smaller (from {_show(shape[1:])})",
            node["span"],
            help="keep the skip at the resolution this transition up returns to",
        )
    return (shape[0], *target)


def _same(node: dict, ins: list[Shape]) -> Shape:
    (shape,) = ins
    return shape


def _norm(node: dict, ins: list[Shape]) -> Shape:
    (shape,) = ins
    kind = node["args"]["kind"]
    if kind.startswith("group("):
        groups = int(kind[6:-1])
        if shape[0] % groups:
            raise DnetError(
                f"{kind} normalization needs channels in groups of equal size, but this norm has {shape[0]} channels",
                node["span"],
                help=f"choose a number of groups that divides {shape[0]} (and every other norm's channels)",
            )
    if kind == "instance" and math.prod(shape[1:]) == 1:
        raise DnetError(
            f"instance normalization needs more than one position, but the feature maps here are {_show(shape[1:])}",
            node["span"],
            help="use a larger input, fewer downsampling steps, or another normalization",
        )
    return shape


def _pool(node: dict, ins: list[Shape]) -> Shape:
    (shape,) = ins
    return (shape[0], *_window(node, shape))


def _blurpool(node: dict, ins: list[Shape]) -> Shape:
    (shape,) = ins
    pad = node["args"]["padding"][0]
    if any(s <= pad for s in shape[1:]):
        raise DnetError(
            f"a blur pool pads by reflection, which needs feature maps larger than {pad}, not {_show(shape[1:])}",
            node["span"],
            help="use a larger input, or fewer downsampling steps",
        )
    return (shape[0], *_window(node, shape))


def _global_pool(node: dict, ins: list[Shape]) -> Shape:
    (shape,) = ins
    return (shape[0],)


def _linear(node: dict, ins: list[Shape]) -> Shape:
    return (node["args"]["channels"],)


def _learned(node: dict, ins: list[Shape]) -> Shape:
    """A learned group conv: its G groups of outputs each keep 1/C of the inputs, so both divide evenly."""
    (shape,) = ins
    a = node["args"]
    g, c = a["learned"]["groups"], a["learned"]["condense"]
    for what, n, by in (("output", a["channels"], g), ("input", shape[0], c)):
        if n % by:
            raise DnetError(
                f"a learned group convolution in {g} groups with condensation {c} needs {what} channels "
                f"divisible by {by}, but it has {n}",
                node["span"],
                label=f"{n} channels here",
                help=f"choose {'groups' if what == 'output' else 'a condensation factor'} that divides {n}",
            )
    return (a["channels"], *shape[1:])


def _select(node: dict, ins: list[Shape]) -> Shape:
    (shape,) = ins
    n = math.floor(node["args"]["fraction"] * shape[0])
    if n < 1:
        raise DnetError(f"select({node['args']['fraction']:g}) of {shape[0]} channels selects none", node["span"])
    return (n, *shape[1:])


def _shuffle(node: dict, ins: list[Shape]) -> Shape:
    (shape,) = ins
    groups = node["args"]["groups"]
    if shape[0] % groups:
        raise DnetError(
            f"a channel shuffle in {groups} groups needs channels divisible by {groups}, but it has {shape[0]}",
            node["span"],
            help=f"choose groups that divide {shape[0]}",
        )
    return shape


def se_width(node: dict, channels: int) -> int:
    """Squeeze-and-excitation's squeezed width: floor(ratio·C), at least 1."""
    return max(1, math.floor(node["args"]["ratio"] * channels))


def _slice(node: dict, ins: list[Shape]) -> Shape:
    """CSPNet's split: the first floor(r·C) channels bypass the block, the rest go through it."""
    (shape,) = ins
    a = node["args"]
    if "start" in a:  # DPN's dual path: channels start to stop of a layer's output
        stop = shape[0] if a["stop"] is None else a["stop"]
        if not 0 <= a["start"] < stop <= shape[0]:
            raise DnetError(
                f"dual({a['stop'] or a['start']}) takes the first {a['stop'] or a['start']} channels of each layer's "
                f"output for the residual path, but this one has {shape[0]}",
                node["span"],
                help="give the entry and each layer more channels than r: r residual channels, then the new ones",
            )
        return (stop - a["start"], *shape[1:])
    first = math.floor(a["ratio"] * shape[0])
    if not 0 < first < shape[0]:
        raise DnetError(
            f"partial({a['ratio']:g}) of {shape[0]} channels leaves {'no' if first == 0 else 'every'} channel "
            f"to bypass the block",
            node["span"],
            help="choose a ratio that splits the channels into two non-empty parts",
        )
    return (first if a["part"] == "bypass" else shape[0] - first, *shape[1:])


def _add(node: dict, ins: list[Shape]) -> Shape:
    if len(set(ins)) != 1:
        raise DnetError(
            "cannot add feature maps of different shapes: " + ", ".join(map(_show, ins)),
            node["span"],
            help=node["args"].get(
                "help", "a sum needs equal channels and sizes: give each branch (or the block, for `residual`) the same"
            ),
        )
    return ins[0]


def _concat(node: dict, ins: list[Shape]) -> Shape:
    spatial = {s[1:] for s in ins}
    if len(spatial) != 1:
        raise DnetError(
            "cannot concatenate feature maps of different sizes: " + ", ".join(map(_show, ins)), node["span"]
        )
    return (sum(s[0] for s in ins), *ins[0][1:])


SHAPE_RULES: dict[str, Callable[[dict, list[Shape]], Shape]] = {
    "conv": _conv,
    "norm": _norm,
    "act": _same,
    "dropout": _same,
    "maxpool": _pool,
    "avgpool": _pool,
    "blurpool": _blurpool,
    "conv_transpose": _conv_transpose,
    "global_pool": _global_pool,
    "linear": _linear,
    "concat": _concat,
    "shuffle": _shuffle,
    "lgconv": _learned,
    "select": _select,
    "se": _same,  # the maps keep their shape
    "ese": _same,
    "slice": _slice,
    "add": _add,
    "coarsest": _same,  # the coarsest scale of a grid of scales, for the head
}


def count(node: dict, ins: list[Shape], out: Shape) -> tuple[int, int]:
    """(parameters, multiply-adds) of one node for one sample, in torchinfo's convention."""
    op = node["op"]
    if op in ("conv", "conv_transpose", "lgconv"):  # a learned group conv trains every weight (masked)
        a = node["args"]
        groups = conv_groups(node, ins[0][0]) if op == "conv" else 1
        params = ins[0][0] // groups * out[0] * math.prod(a["kernel"]) + (out[0] if a.get("bias") else 0)
        # torchinfo sees a transposed convolution's uncropped output
        positions = _uncropped(node, ins[0]) if op == "conv_transpose" else out[1:]
        return params, params * math.prod(positions)
    if op == "norm":  # every normalisation learns a scale and a shift per channel
        return 2 * out[0], 2 * out[0]
    if op == "act" and node["args"]["kind"] == "prelu":  # one learned slope
        return 1, 1
    if op == "linear":
        params = ins[0][0] * out[0] + out[0]
        return params, params
    if op == "se":  # two 1x1 convs with bias on the pooled maps
        c, w = out[0], se_width(node, out[0])
        return 2 * c * w + c + w, 2 * c * w + c + w
    if op == "ese":  # one 1x1 conv with bias, C to C
        return out[0] * out[0] + out[0], out[0] * out[0] + out[0]
    return 0, 0


def _show(shape: Shape) -> str:
    return "x".join(map(str, shape))


def inputs(g: nx.DiGraph, n: str) -> list[str]:
    """The nodes feeding `n`, in the order its op takes them (a concat's order): the one accessor."""
    return [u for u, _, _ in sorted(g.in_edges(n, data="index"), key=lambda e: e[2])]


def infer(g: nx.DiGraph) -> None:
    """Add `shape`, `params` and `macs` to every node, in topological order: all that a pass writes."""
    net: spec.Network = g.graph["network"]
    g.nodes["input"].update(shape=(net.input.channels, *net.input.size), params=0, macs=0)
    for n in nx.topological_sort(g):
        node = g.nodes[n]
        if node["op"] == "input":
            continue
        ins = [g.nodes[p]["shape"] for p in inputs(g, n)]
        if "like" in node["args"]:  # the kept maps a transition up returns to: the rule's second shape
            ins.append(g.nodes[node["args"]["like"]]["shape"])
        out = SHAPE_RULES[node["op"]](node, ins)
        if any(s < 1 for s in out[1:]):
            unit = node["unit"]
            raise DnetError(
                f"the feature maps shrink below 1 at `{unit}`: {_show(ins[0][1:])} -> {_show(out[1:])}",
                node["span"],
                help="use a larger input, or fewer downsampling steps (transitions, strides, pools)",
            )
        if out[0] > spec.MAX_CHANNELS:
            raise DnetError(
                f"`{unit_of(node)}` reaches {out[0]} channels, more than dnetc builds ({spec.MAX_CHANNELS})",
                node["span"],
            )
        node["shape"] = out
        node["params"], node["macs"] = count(node, ins, out)
    g.graph["params"] = sum(d["params"] for _, d in g.nodes(data=True))
    g.graph["macs"] = sum(d["macs"] for _, d in g.nodes(data=True))


def unit_of(node: dict) -> str:
    return node["unit"] if node["layer"] is None else f"{node['unit']}.{node['layer']}"
