"""Lower a validated spec to the graph IR (compiler/ir.py's schema): a node per operation.

Every dense connection is an edge: layer j of a block has j inputs (the block's input and each
earlier layer's new features), concatenated in order (edge attribute `index`). The builder decides
each node's op, module, unit, layer, args and span; `passes.infer` then adds `shape` (channels,
*spatial), `params` and `macs` to every node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import networkx as nx
from pydantic import BaseModel

from dnetc.dsl import DnetError, spec
from dnetc.dsl.errors import did_you_mean

from .ir import Graph
from .lowerings import choices
from .passes import infer

ROOT = "features"


def _blur(kernel: int, stride: int, rank: int) -> dict:
    """A blur pool's window: reflect padding as timm's BlurPool2d takes it."""
    pad = ((stride - 1) + (kernel - 1)) // 2
    return {"kernel": (kernel,) * rank, "stride": (stride,) * rank, "padding": (pad,) * rank}


# what a user-defined layer's ops are called inside it (numbered from 1: conv1, norm1, ..., pool2)
OP_NAMES: dict[str, str] = {
    "conv": "conv",
    "dwconv": "dwconv",
    "norm": "norm",
    "relu": "relu",
    "act": "act",
    "maxpool": "pool",
    "avgpool": "pool",
    "blurpool": "pool",
    "dropout": "drop",
    "shuffle": "shuffle",
    "se": "se",
    "ese": "ese",
    "lgconv": "lgconv",
    "select": "select",
    "concat": "concat",
    "add": "add",
}
# the graph op each of the language's layer operations becomes
GRAPH_OPS: dict[str, str] = {"relu": "act", "act": "act", "dwconv": "conv"}


class _Builder:
    def __init__(self, network: spec.Network) -> None:
        self.g = Graph(name=network.name, network=network)
        self.rank = len(network.input.size)
        self.norm = {"kind": network.normalization}
        self.act = {"kind": network.activation}
        self.g.add_node("input", op="input", module=None, unit="input", layer=None, args={}, span=network.input.span)
        self.last = "input"
        self.g.graph["exits"] = []  # each exit's record: its unit, the node it reads and its output
        # a grid of scales (MSDNet), once `scales` made one: each scale's current node, finest first
        self.at_scales: list[str] | None = None
        self.grid: dict = {}  # the grid's factors, base width and msdense layers (all, and built so far)
        self.grid_layers = sum(p.layers for p in network.parts if isinstance(p, spec.MultiScaleDense))

    def container(self, path: str, kind: str, **settings) -> None:
        """The module at `path` groups the ops under it: a `kind` of compiler/emit.py's CONTAINERS."""
        # `at`: how many nodes came before it, so that the emitter makes it in order (an empty branch too)
        self.g.graph["containers"][path] = {"kind": kind, "at": self.g.number_of_nodes(), **settings}

    def node(self, path: str, op: str, unit: str, span, layer: str | None = None, module: bool = True, **args) -> str:
        if path in self.g or path in self.g.graph["containers"]:
            raise DnetError(
                f"two parts of the network would both be named `{path.removeprefix(ROOT + '.')}`",
                span,
                help="rename the layer, so that its parts do not take the name of a built-in one",
            )
        self.g.add_node(path, op=op, module=path if module else None, unit=unit, layer=layer, args=args, span=span)
        return path

    def chain(self, path: str, op: str, unit: str, span, layer: str | None = None, **args) -> str:
        """Add a node fed by the current end of the chain."""
        n = self.node(path, op, unit, span, layer, **args)
        self.g.add_edge(self.last, n, index=0)
        self.last = n
        return n

    def concat(self, path: str, inputs: list[str], unit: str, span, layer: str | None = None) -> str:
        n = self.node(path, "concat", unit, span, layer, module=False)
        for i, src in enumerate(inputs):
            self.g.add_edge(src, n, index=i)
        self.last = n
        return n

    def stem(self, part: spec.Stem) -> None:
        self.g.graph["units"]["stem"] = {"kind": "stem"}
        names = {
            "conv": "conv",
            "norm": "norm",
            "relu": "relu",
            "act": "relu",
            "maxpool": "pool",
            "avgpool": "pool",
            "blurpool": "pool",
            "dropout": "drop",
        }
        seen: dict[str, int] = {}
        for op in part.ops:
            if isinstance(op, spec.StemBlock):
                self.stem_block(op)
                continue
            # the stem's parts count from 0 (conv0, norm0, conv1, ...), as timm's deep stems name them
            if isinstance(op, spec.Composite):  # a layer of the spec's own: features.NAME0, features.NAME1
                base = op.name
                seen[base] = seen.get(base, 0) + 1
                path = f"{ROOT}.{base}{seen[base] - 1}"
                self.container(path, "composite", layer=op.name)
                self.ops(op.ops, path, "stem", None)
                continue
            base = names[op.kind]
            seen[base] = seen.get(base, 0) + 1
            name = f"{base}{seen[base] - 1}"
            kind = "act" if op.kind in ("relu", "act") else op.kind
            self.chain(f"{ROOT}.{name}", kind, "stem", op.span, **self.args(op))

    def conv_norm_act(self, path: str, unit: str, span, layer: str | None = None, **conv) -> str:
        """Conv-BN-activation, as PeleeNet orders them: `path.conv`, `path.norm`, `path.relu`."""
        rank = self.rank
        kernel = conv.pop("kernel")
        stride = conv.pop("stride", 1)
        padding = tuple(k // 2 for k in (kernel,) * rank)
        args = {"kernel": (kernel,) * rank, "stride": (stride,) * rank, "padding": padding, **conv}
        self.container(path, "sequential")
        self.chain(f"{path}.conv", "conv", unit, span, layer, **args)
        self.chain(f"{path}.norm", "norm", unit, span, layer, **self.norm)
        return self.chain(f"{path}.relu", "act", unit, span, layer, **self.act)

    def stem_block(self, op: spec.StemBlock) -> None:
        """PeleeNet's stem block: 3x3/2 conv; a 2x2/2 max pool beside 1x1 and 3x3/2 convs; concat; 1x1."""
        p, c = f"{ROOT}.stemblock", op.channels
        self.container(p, "stem_block")
        if c < 2:
            raise DnetError("a stem block needs at least 2 channels (its branch has half)", op.span)
        first = self.conv_norm_act(f"{p}.stem1", "stem", op.span, kernel=3, stride=2, channels=c)
        self.conv_norm_act(f"{p}.stem2a", "stem", op.span, kernel=1, channels=c // 2)
        branch = self.conv_norm_act(f"{p}.stem2b", "stem", op.span, kernel=3, stride=2, channels=c)
        two, zero = (2,) * self.rank, (0,) * self.rank
        pool = self.node(f"{p}.pool", "maxpool", "stem", op.span, kernel=two, stride=two, padding=zero)
        self.g.add_edge(first, pool, index=0)
        self.concat(f"{p}.cat", [pool, branch], "stem", op.span)
        self.conv_norm_act(f"{p}.stem3", "stem", op.span, kernel=1, channels=c)

    def two_way_layer(self, part: spec.DenseBlock, p: str, unit: str, layer: str) -> None:
        """PeleeNet's two-way dense layer: 1x1-3x3 and 1x1-3x3-3x3 branches of growth/2 maps each; the
        1x1 width follows the paper's rule (channels_in caps it), worked out once shapes are known."""
        if part.dropout > 0 or part.bias or part.bottleneck is None or part.growth < 2 or part.growth % 2:
            raise DnetError(
                "a two-way dense layer takes an even growth rate of at least 2 and a bottleneck width, "
                "and no dropout or bias",
                part.span,
                help="as PeleeNet: dense(layers, 32, bottleneck = 4, two_way = true)",
            )
        start, half = self.last, part.growth // 2
        inter = {"channels": 0, "two_way": {"growth": part.growth, "bottleneck": part.bottleneck}}
        self.conv_norm_act(f"{p}.branch1a", unit, part.span, layer, kernel=1, **inter)
        one = self.conv_norm_act(f"{p}.branch1b", unit, part.span, layer, kernel=3, channels=half)
        self.last = start
        self.conv_norm_act(f"{p}.branch2a", unit, part.span, layer, kernel=1, **inter)
        self.conv_norm_act(f"{p}.branch2b", unit, part.span, layer, kernel=3, channels=half)
        two = self.conv_norm_act(f"{p}.branch2c", unit, part.span, layer, kernel=3, channels=half)
        self.concat(f"{p}.new", [one, two], unit, part.span, layer)

    def ops(self, ops: list, prefix: str, unit: str, layer: str | None) -> None:
        """Chain a user-defined layer's ops under `prefix`: nested layers and branches as containers."""
        seen: dict[str, int] = {}
        for op in ops:
            base = op.name if isinstance(op, spec.Composite) else OP_NAMES[op.kind]
            seen[base] = seen.get(base, 0) + 1
            path = f"{prefix}.{base}{seen[base]}"
            if isinstance(op, spec.Composite):
                self.container(path, "composite", layer=op.name)
                self.ops(op.ops, path, unit, layer)
            elif isinstance(op, spec.Branches):
                self.branches(op, path, unit, layer)
            else:
                self.chain(path, GRAPH_OPS.get(op.kind, op.kind), unit, op.span, layer, **self.args(op))

    def branches(self, op: spec.Branches, path: str, unit: str, layer: str | None) -> None:
        """Parallel branches from the current maps, joined by a concat or add node (`path.cat`, `path.sum`)."""
        if sum(1 for b in op.branches if not b) > 1:
            raise DnetError(
                f"`{op.kind}` has more than one empty branch",
                op.span,
                help="an empty branch passes its input; keep one",
            )
        self.container(path, "branches", join=op.kind)
        start, ends = self.last, []
        for j, branch in enumerate(op.branches, 1):
            self.last = start
            self.container(f"{path}.branch{j}", "sequential")
            self.ops(branch, f"{path}.branch{j}", unit, layer)
            ends.append(self.last)
        join = self.node(f"{path}.{'cat' if op.kind == 'concat' else 'sum'}", op.kind, unit, op.span, layer, False)
        for i, end in enumerate(ends):
            self.g.add_edge(end, join, index=i)
        self.last = join

    def args(self, op: spec.Node) -> dict:
        if isinstance(op, spec.Conv | spec.DWConv):
            k = self.dims(op.kernel, op, "kernel")
            d = self.dims(op.dilation, op, "dilation")
            pad = (
                self.dims(op.padding, op, "padding")
                if op.padding is not None
                else tuple(di * (x - 1) // 2 for x, di in zip(k, d, strict=True))
            )
            stride = self.dims(op.stride, op, "stride")
            out = {"kernel": k, "stride": stride, "padding": pad, "bias": op.bias}
            if any(x > 1 for x in d):
                out["dilation"] = d
            if isinstance(op, spec.DWConv):
                return {**out, "depthwise": True, "channels": 0}
            return {"channels": op.channels, **out, **({"groups": op.groups} if op.groups > 1 else {})}
        if isinstance(op, spec.MaxPool | spec.AvgPool):
            k = self.dims(op.kernel, op, "kernel")
            stride = self.dims(op.stride, op, "stride") if op.stride is not None else k
            out = {"kernel": k, "stride": stride, "padding": self.dims(op.padding, op, "padding")}
            return {**out, "ceil": True} if op.ceil else out
        if isinstance(op, spec.Shuffle):
            return {"groups": op.groups}
        if isinstance(op, spec.LearnedGroupConv):  # a 1x1 conv, each group learning which inputs it reads
            one, zero = (1,) * self.rank, (0,) * self.rank
            learned = {"groups": op.groups, "condense": op.condense, "lasso": op.lasso}
            return {"channels": op.channels, "kernel": one, "stride": one, "padding": zero, "learned": learned}
        if isinstance(op, spec.Select):
            return {"fraction": op.fraction}
        if isinstance(op, spec.SqueezeExcite):
            return {"ratio": op.ratio}
        if isinstance(op, spec.Dropout):
            return {"p": op.p}
        if isinstance(op, spec.BlurPool):
            return _blur(op.kernel, op.stride, self.rank)
        if isinstance(op, spec.Norm):
            return dict(self.norm)
        if isinstance(op, spec.ReLU):
            return {"kind": "relu"}
        if isinstance(op, spec.Act):
            return dict(self.act)
        return {}

    def dims(self, value: int | tuple[int, ...], op: spec.Node, what: str) -> tuple[int, ...]:
        if isinstance(value, int):
            return (value,) * self.rank
        if len(value) != self.rank:
            raise DnetError(
                f"`{op.kind}` {what} {'x'.join(map(str, value))} has {len(value)} sizes, but the input has "
                f"{self.rank} spatial dimension{'s' if self.rank > 1 else ''}",
                op.span,
                help=f"write {'x'.join(str(value[0]) for _ in range(self.rank))}, or a single number",
            )
        return tuple(value)

    def dense(self, part: spec.DenseBlock, b: int) -> None:
        """Layer i reads the features `part.connect.links(i)` names (0: the block's input), concatenated;
        the block returns those `outputs` names, then `fuse` and the residual sum if the spec asks."""
        unit = f"denseblock{b}"
        connect = part.connect
        if part.two_way and connect.kind != "all":
            raise DnetError("PeleeNet's two-way layers connect to all earlier layers", part.span)
        # a layer of the spec's own has its own widths: the built-in layer's bottleneck means nothing there
        self.g.graph["units"][unit] = record(part, bottleneck=part.bottleneck if part.layer is None else None)
        prefix = f"{ROOT}.{unit}"
        general = connect.kind != "all" or part.layer is not None or part.fuse is not None or part.residual
        self.g.graph["units"][unit]["general"] = general
        block: dict = {"concat_input": part.concat_input}
        if general:  # the links and outputs, for the emitted block's forward pass
            block.update(
                links=[connect.links(i) for i in range(1, part.layers + 1)],
                outputs=connect.outputs(part.layers, part.concat_input),
                residual=part.residual,
            )
            if connect.kind == "dual":  # the residual channels of each layer, for the emitted block
                block["dual"] = int(connect.value or 0)
        self.container(prefix, "dense", **block)
        entry = self.last
        features = [entry]
        bypass = None
        if connect.kind == "partial":  # CSPNet: the first r of the channels go round the block
            r = connect.value
            bypass = self.node(f"{prefix}.bypass", "slice", unit, part.span, part="bypass", ratio=r, module=False)
            self.g.add_edge(entry, bypass, index=0)
            main = self.node(f"{prefix}.main", "slice", unit, part.span, part="main", ratio=r, module=False)
            self.g.add_edge(entry, main, index=0)
            features = [main]
            self.g.graph["containers"][prefix]["bypass"] = bypass
        if connect.kind == "dual":
            self.dual_layers(part, prefix, unit, entry)
        else:
            for i in range(1, part.layers + 1):
                layer = f"denselayer{i}"
                p = f"{prefix}.{layer}"
                self.concat(f"{p}.cat", [features[j] for j in connect.links(i)], unit, part.span, layer)
                self.layer_body(part, p, unit, layer, i)
                features.append(self.last)
            outputs = [features[j] for j in connect.outputs(part.layers, part.concat_input)]
            self.concat(f"{prefix}.cat", [bypass, *outputs] if bypass else outputs, unit, part.span)
        if part.fuse is not None:
            self.container(f"{prefix}.fuse", "composite", layer=part.fuse.name)
            self.ops(part.fuse.ops, f"{prefix}.fuse", unit, None)
        if part.residual:
            total = self.node(f"{prefix}.sum", "add", unit, part.span, module=False)
            self.g.add_edge(self.last, total, index=0)
            self.g.add_edge(entry, total, index=1)
            self.last = total

    def layer_body(self, part: spec.DenseBlock, p: str, unit: str, layer: str, i: int) -> None:
        """Layer i's ops after its concatenation: the spec's own layer, a two-way layer or the built-in."""
        if part.layer is not None:
            self.container(p, "layer", layer=part.layer[i - 1].name)
            self.ops(part.layer[i - 1].ops, p, unit, layer)
            return
        if part.two_way:
            self.container(p, "two_way_layer")
            self.two_way_layer(part, p, unit, layer)
            return
        self.container(p, "dense_layer")
        growth = part.connect.width(i, part.growth)
        convs = [("1", {"channels": part.bottleneck * growth, "kernel": (1,) * self.rank})] if part.bottleneck else []
        convs.append((str(len(convs) + 1), {"channels": growth, "kernel": (3,) * self.rank}))
        for n, conv in convs:
            self.chain(f"{p}.norm{n}", "norm", unit, part.span, layer, **self.norm)
            self.chain(f"{p}.relu{n}", "act", unit, part.span, layer, **self.act)
            k = conv["kernel"]
            self.chain(
                f"{p}.conv{n}",
                "conv",
                unit,
                part.span,
                layer,
                stride=(1,) * self.rank,
                padding=tuple(x // 2 for x in k),
                bias=part.bias,
                **conv,
            )
            if part.dropout > 0:
                self.chain(f"{p}.drop{n}", "dropout", unit, part.span, layer, p=part.dropout)

    def dual_layers(self, part: spec.DenseBlock, prefix: str, unit: str, entry: str) -> None:
        """DPN's dual path (Chen et al. 2017): the entry layer's first r channels start the residual
        path, the rest the dense path. Layer i reads both (the first, the block's input), adds its
        first r channels to the residual and appends the rest; the block returns both, concatenated."""
        if part.entry is None:
            raise DnetError(
                "a dual-path block starts from an `entry` layer, whose first r channels begin the residual path",
                part.span,
                help="as DPN: `dense(3, 16, connect = dual(64), entry = projection(64 + 2 * 16), layer = ...)`",
            )
        r = int(part.connect.value or 0)
        self.container(f"{prefix}.entry", "composite", layer=part.entry.name)
        self.ops(part.entry.ops, f"{prefix}.entry", unit, None)
        start = self.last
        residual = self.part_of_channels(f"{prefix}.residual0", start, 0, r, unit, part.span)
        dense = [self.part_of_channels(f"{prefix}.dense0", start, r, None, unit, part.span)]
        inputs = [entry]
        for i in range(1, part.layers + 1):
            layer = f"denselayer{i}"
            p = f"{prefix}.{layer}"
            self.concat(f"{p}.cat", inputs, unit, part.span, layer)
            self.layer_body(part, p, unit, layer, i)
            out = self.last
            added = self.part_of_channels(f"{p}.residual", out, 0, r, unit, part.span, layer)
            dense.append(self.part_of_channels(f"{p}.dense", out, r, None, unit, part.span, layer))
            why = "the residual path sums r channels of the same size: stride the entry and the first layer alike"
            total = self.node(f"{p}.sum", "add", unit, part.span, layer, module=False, help=why)
            self.g.add_edge(residual, total, index=0)
            self.g.add_edge(added, total, index=1)
            residual = total
            inputs = [residual, *dense]
        self.concat(f"{prefix}.cat", inputs, unit, part.span)

    def part_of_channels(
        self, path: str, src: str, start: int, stop: int | None, unit: str, span, layer: str | None = None
    ) -> str:
        """Channels start to stop (None: the last) of `src`: a view, no module."""
        n = self.node(path, "slice", unit, span, layer, module=False, start=start, stop=stop)
        self.g.add_edge(src, n, index=0)
        return n

    def composite(self, part: spec.Composite, n: int) -> None:
        """A layer of the spec's own in the body (a transition of its own): `features.NAMEn`."""
        unit = f"{part.name}{n}"
        self.g.graph["units"][unit] = {"kind": "layer", "layer": part.name, "arguments": part.arguments}
        self.container(f"{ROOT}.{unit}", "composite", layer=part.name)
        self.ops(part.ops, f"{ROOT}.{unit}", unit, None)

    def transition(self, part: spec.Transition, t: int) -> None:
        unit = f"transition{t}"
        self.container(f"{ROOT}.{unit}", "transition")
        self.g.graph["units"][unit] = record(part)
        p = f"{ROOT}.{unit}"
        one, two, zero = (1,) * self.rank, (2,) * self.rank, (0,) * self.rank
        conv = {"compression": part.compression, "kernel": one, "stride": one, "padding": zero}
        if part.conv_first:  # PeleeNet: Conv-BN-activation
            self.chain(f"{p}.conv", "conv", unit, part.span, **conv)
            self.chain(f"{p}.norm", "norm", unit, part.span, **self.norm)
            self.chain(f"{p}.relu", "act", unit, part.span, **self.act)
        else:
            self.chain(f"{p}.norm", "norm", unit, part.span, **self.norm)
            self.chain(f"{p}.relu", "act", unit, part.span, **self.act)
            self.chain(f"{p}.conv", "conv", unit, part.span, **conv)
        if part.dropout > 0:
            self.chain(f"{p}.drop", "dropout", unit, part.span, p=part.dropout)
        if not part.pool:
            return
        if part.blur:
            self.chain(f"{p}.pool", "blurpool", unit, part.span, **_blur(3, 2, self.rank))
        else:
            self.chain(f"{p}.pool", "avgpool", unit, part.span, kernel=two, stride=two, padding=zero)

    def keep(self, part: spec.Keep) -> None:
        kept = self.g.graph["kept"]
        index = sum(1 for name, _ in kept if name == part.name)
        kept[(part.name, index)] = self.last

    def transition_down(self, part: spec.TransitionDown, t: int) -> None:
        """BN-ReLU-Conv1x1 (every channel kept, bias)-Dropout-MaxPool 2 (Jégou et al. 2017)."""
        unit = f"transition_down{t}"
        self.container(f"{ROOT}.{unit}", "transition")
        self.g.graph["units"][unit] = record(part)
        p = f"{ROOT}.{unit}"
        one, two, zero = (1,) * self.rank, (2,) * self.rank, (0,) * self.rank
        self.chain(f"{p}.norm", "norm", unit, part.span, **self.norm)
        self.chain(f"{p}.relu", "act", unit, part.span, **self.act)
        self.chain(
            f"{p}.conv", "conv", unit, part.span, compression=1.0, kernel=one, stride=one, padding=zero, bias=True
        )
        if part.dropout > 0:
            self.chain(f"{p}.drop", "dropout", unit, part.span, p=part.dropout)
        self.chain(f"{p}.pool", "maxpool", unit, part.span, kernel=two, stride=two, padding=zero)

    def transition_up(self, part: spec.TransitionUp, t: int) -> None:
        """A 3x3 stride-2 transposed convolution of the current maps, centre-cropped to the kept maps'
        size and concatenated with them: the skip connection of the U-shaped network."""
        key = (part.skip.name, part.skip.index)
        skip = self.g.graph["kept"].get(key)
        if skip is None:  # a Ref made outside the language, pointing past what was kept
            raise DnetError(f"no feature maps were kept as `{part.skip.name}[{part.skip.index}]`", part.span)
        unit = f"transition_up{t}"
        self.container(f"{ROOT}.{unit}", "transition_up")
        self.g.graph["units"][unit] = record(part, skip=f"{key[0]}[{key[1]}]", skip_node=skip)
        p = f"{ROOT}.{unit}"
        args = {"kernel": (3,) * self.rank, "stride": (2,) * self.rank, "padding": (0,) * self.rank}
        self.chain(f"{p}.conv", "conv_transpose", unit, part.span, like=skip, bias=True, **args)
        self.concat(f"{p}.cat", [self.last, skip], unit, part.span)

    def head(self, part: spec.Head, blocks: int) -> None:
        """`features.norm5` and `classifier`, as torchvision names them, and between them the operations
        without weights (`head.relu5`, `head.pool5`): `features` ends at the last feature maps, as
        torchvision's does. Operations before the classifier go in `features.head5`."""
        n = blocks + 1
        self.g.graph["units"]["head"] = {"kind": "head"}
        if self.at_scales is not None:  # the head reads the coarsest scale of the grid
            self.coarsest("head", part.span)
        *before, op = part.ops
        if before:
            self.container(f"{ROOT}.head{n}", "composite", layer="head")
            self.ops(before, f"{ROOT}.head{n}", "head", None)
        self.classifier(op, "head", lambda base: f"{ROOT}.{base}{n}", "classifier", lambda base: f"head.{base}{n}")

    def coarsest(self, unit: str, span) -> None:
        """The grid of scales ends: its coarsest scale goes on (to the head, or out of the network)."""
        self.chain(f"{ROOT}.coarsest", "coarsest", unit, span)
        self.at_scales = None

    def classifier(
        self, op: spec.Node, unit: str, name: Callable[[str], str], last: str, after: Callable[[str], str] | None = None
    ) -> None:
        """A classifier's ops, named by `name(base)` (by `after(base)` once the feature maps are done: the
        activation, pooling and dropout), its last module (linear or 1x1 conv) at `last`."""
        after = after or name
        if isinstance(op, spec.LinearClassifier):  # pool, dropout, linear: the network ends normalised
            self.chain(after("pool"), "global_pool", unit, op.span)
            if op.dropout > 0:
                self.chain(after("drop"), "dropout", unit, op.span, p=op.dropout)
            self.chain(last, "linear", unit, op.span, channels=op.classes)
            return
        if isinstance(op, spec.PixelClassifier):  # a 1x1 convolution: scores at every position
            one = (1,) * self.rank
            self.chain(
                last,
                "conv",
                unit,
                op.span,
                channels=op.classes,
                kernel=one,
                stride=one,
                padding=(0,) * self.rank,
                bias=True,
            )
            return
        assert isinstance(op, spec.Classifier)
        self.chain(name("norm"), "norm", unit, op.span, **self.norm)
        self.chain(after("relu"), "act", unit, op.span, **self.act)
        self.chain(after("pool"), "global_pool", unit, op.span)
        if op.keep < 1:  # CondenseNet's converted classifier: the features the conversion kept
            self.chain(after("select"), "select", unit, op.span, fraction=op.keep)
        self.chain(last, "linear", unit, op.span, channels=op.classes)

    def exit(self, part: spec.Exit, e: int) -> None:
        """An early classifier `exits.E` (from 0) reading the current maps (the coarsest scale of a grid),
        which go on unchanged."""
        unit, prefix = f"exit{e + 1}", f"exits.{e}"
        self.g.graph["units"][unit] = {"kind": "exit", "index": e}
        tap = self.last
        self.container(prefix, "composite", layer="exit")
        *before, op = part.ops
        self.ops(before, prefix, unit, None)
        self.classifier(op, unit, lambda base: f"{prefix}.{base}", f"{prefix}.classifier")
        self.g.graph["exits"].append({"unit": unit, "tap": tap, "output": self.last})
        self.last = tap

    # ---- MSDNet's grid of scales
    def conv_bn(
        self,
        path: str,
        src: str,
        unit: str,
        span,
        channels: int,
        kernel: int,
        stride: int = 1,
        layer: str | None = None,
    ) -> str:
        """Conv-BN-activation from `src`: the authors' ConvBasic (`path.conv`, `path.norm`, `path.relu`)."""
        self.container(path, "sequential")
        self.last = src
        k = (kernel,) * self.rank
        args = {"kernel": k, "stride": (stride,) * self.rank, "padding": tuple(x // 2 for x in k), "bias": False}
        self.chain(f"{path}.conv", "conv", unit, span, layer, channels=channels, **args)
        self.chain(f"{path}.norm", "norm", unit, span, layer, **self.norm)
        return self.chain(f"{path}.relu", "act", unit, span, layer, **self.act)

    def scales(self, part: spec.Scales) -> None:
        """The grid's first column: scale 1 the current maps, each coarser scale a stride-2 ConvBasic."""
        if self.at_scales is not None:
            raise DnetError(
                "the network already holds a grid of scales", part.span, help="make it once, after the stem"
            )
        unit, prefix = "scales", f"{ROOT}.scales"
        self.g.graph["units"][unit] = record(part)
        self.container(prefix, "scales")
        grid = [self.last]
        for s, factor in enumerate(part.factors[1:], 2):
            grid.append(self.conv_bn(f"{prefix}.scale{s}", grid[-1], unit, part.span, part.channels * factor, 3, 2))
        self.at_scales, self.last = grid, grid[-1]
        self.grid = {"factors": part.factors, "base": part.channels, "done": 0, "first": grid[0]}

    def conv_bottleneck(
        self, path: str, src: str, unit: str, span, c_in: int, c_out: int, width: int | None, stride: int, layer: str
    ) -> str:
        """The authors' ConvBN: a 1x1 bottleneck to min(c_in, width·c_out) channels, then a 3x3 conv."""
        self.container(path, "sequential")
        self.last = src
        for n, (channels, kernel, st) in enumerate(
            ([(min(c_in, width * c_out), 1, 1)] if width else []) + [(c_out, 3, stride)], 1
        ):
            k = (kernel,) * self.rank
            args = {"kernel": k, "stride": (st,) * self.rank, "padding": tuple(x // 2 for x in k), "bias": False}
            self.chain(f"{path}.conv{n}", "conv", unit, span, layer, channels=channels, **args)
            self.chain(f"{path}.norm{n}", "norm", unit, span, layer, **self.norm)
            self.chain(f"{path}.relu{n}", "act", unit, span, layer, **self.act)
        return self.last

    def msdense(self, part: spec.MultiScaleDense, b: int) -> None:
        """MSDNet's layers over the grid, the finest scales dropped evenly over all msdense layers."""
        if self.at_scales is None:
            raise DnetError(
                "`msdense` grows a grid of scales, and there is none yet",
                part.span,
                help="make one after the stem: `scales(channels, [1, 2, 4])`",
            )
        grid, factors = self.grid, self.grid["factors"]
        widths = part.bottlenecks
        if widths is not None and len(widths) != len(factors):
            raise DnetError(
                f"`bottlenecks` gives {len(widths)} widths for a grid of {len(factors)} scales",
                part.span,
                help="give one per scale, finest first, as `scales` gives its factors",
            )
        unit, prefix = f"msdblock{b}", f"{ROOT}.msdblock{b}"
        self.g.graph["units"][unit] = record(part)
        self.container(prefix, "msd_block")
        total, count = self.grid_layers, len(factors)
        interval = math.ceil(total / count)
        for i in range(1, part.layers + 1):
            grid["done"] += 1
            n = grid["done"]
            out_scales = count - (n - 1) // interval  # the authors' `prune max`
            dropped, offset = len(self.at_scales) - out_scales, count - out_scales
            base, path = grid["base"], f"{prefix}.msdlayer{i}"
            self.container(path, "msd_layer")
            grown = []
            for k in range(out_scales):
                j, s = k + dropped, offset + k  # the input scale it reads, and its place in the grid
                width = part.growth * factors[s]
                sp, cell = f"{path}.scale{s + 1}", f"msdlayer{i}.scale{s + 1}"  # a cell of the grid
                self.container(sp, "scale_layer")
                new = [self.at_scales[j]]
                if j > 0:  # a stride-2 conv of the next finer scale beside one of its own
                    if width % 2:
                        raise DnetError(
                            f"scale {s + 1} of `msdense` splits growth·factor = {width} channels between two "
                            "convolutions, which needs an even number",
                            part.span,
                            help="choose a growth rate whose product with each factor is even",
                        )
                    w = widths[s - 1] if widths else None
                    src = self.at_scales[j - 1]
                    new.append(
                        self.conv_bottleneck(
                            f"{sp}.down", src, unit, part.span, base * factors[s - 1], width // 2, w, 2, cell
                        )
                    )
                    width //= 2
                w = widths[s] if widths else None
                new.append(
                    self.conv_bottleneck(
                        f"{sp}.normal", self.at_scales[j], unit, part.span, base * factors[s], width, w, 1, cell
                    )
                )
                grown.append(self.concat(f"{sp}.cat", new, unit, part.span, cell))
            self.at_scales, grid["base"] = grown, base + part.growth
            if dropped > 0 and part.reduction > 0:  # a transition where a scale was dropped
                kept = math.floor(part.reduction * grid["base"])
                tp = f"{prefix}.transition{i}"
                self.container(tp, "msd_transition")
                self.at_scales = [
                    self.conv_bn(
                        f"{tp}.scale{offset + k + 1}",
                        m,
                        unit,
                        part.span,
                        kept * factors[offset + k],
                        1,
                        layer=f"transition{i}.scale{offset + k + 1}",
                    )
                    for k, m in enumerate(self.at_scales)
                ]
                grid["base"] = kept
        self.last = self.at_scales[-1]


def record(part: spec.Node, **derived: Any) -> dict[str, Any]:
    """A unit's record, read off its spec part: its kind and every field it was called with (a layer of
    the spec's own by name, a connectivity as written), then what the builder derives."""
    out: dict[str, Any] = {"kind": part.kind}
    for name in part.argument_names():
        value = getattr(part, name)
        if isinstance(value, list) and value and isinstance(value[0], spec.Composite):
            value = value[0]  # one layer per layer: the first names them
        if isinstance(value, spec.Composite):
            value = value.name
        elif isinstance(value, spec.Connectivity):
            value = str(value)
        elif isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        out[name] = value
    return out | derived


def part_of(g: nx.DiGraph, n: str) -> str:
    """The name, in `features`, of the part whose output node `n` is ("" for the input)."""
    node = g.nodes[n]
    if node["op"] == "input":
        return ""
    unit = node["unit"]
    return n.split(".")[1] if g.graph["units"][unit]["kind"] in ("stem", "head") else unit


def build_graph(network: spec.Network) -> nx.DiGraph:
    """The graph IR of a network, shapes, parameters and multiply-adds inferred at every node."""
    try:
        return _build(network)
    except DnetError as e:
        raise network.locate(e) from None


def _check_memory(network: spec.Network) -> None:
    """The spec's `memory NAME` names a lowering of compiler/lowerings.py, or `auto`."""
    known = choices()
    if network.memory is not None and network.memory not in known:
        raise DnetError(
            f"unknown memory lowering `{network.memory}`",
            network.memory_span,
            help=did_you_mean(network.memory, known) or "choose one of " + ", ".join(f"`{x}`" for x in known),
        )


def _build(network: spec.Network) -> nx.DiGraph:
    _check_memory(network)
    b = _Builder(network)
    count: dict[str, int] = {}

    def number(kind: str) -> int:
        count[kind] = count.get(kind, 0) + 1
        return count[kind]

    for part in network.parts:
        if b.at_scales is not None and not isinstance(part, spec.MultiScaleDense | spec.Exit | spec.Head):
            raise DnetError(
                f"`{part.kind}` works on one scale of feature maps, and the network holds a grid of scales",
                part.span,
                help="on a grid, use `msdense` blocks, `exit`s and the `head` (which read the coarsest scale)",
            )
        if isinstance(part, spec.Stem):
            b.stem(part)
        elif isinstance(part, spec.DenseBlock):
            b.dense(part, number("dense"))
        elif isinstance(part, spec.Transition):
            b.transition(part, number("transition"))
        elif isinstance(part, spec.TransitionDown):
            b.transition_down(part, number("transition_down"))
        elif isinstance(part, spec.TransitionUp):
            b.transition_up(part, number("transition_up"))
        elif isinstance(part, spec.Keep):
            b.keep(part)
        elif isinstance(part, spec.Composite):
            b.composite(part, number(f"layer:{part.name}"))
        elif isinstance(part, spec.Scales):
            b.scales(part)
        elif isinstance(part, spec.MultiScaleDense):
            b.msdense(part, number("msdense"))
        elif isinstance(part, spec.Exit):
            b.exit(part, number("exit") - 1)
        else:
            b.head(part, count.get("dense", 0))
    if b.at_scales is not None:  # no head: the network returns the coarsest scale's maps
        b.g.graph["units"]["coarsest"] = {"kind": "coarsest"}
        b.coarsest("coarsest", network.span)
    b.g.graph["output"] = b.last
    infer(b.g)
    _check_exits(b.g)
    if b.grid:
        _check_grid(b.g, b.grid)
    return b.g


def _check_exits(g: nx.DiGraph) -> None:
    """Each exit gives what the head gives: the trainer scores them all against the same labels."""
    final = g.nodes[g.graph["output"]]
    for record in g.graph["exits"]:
        node = g.nodes[record["output"]]
        if node["shape"] != final["shape"]:
            shape = "x".join(map(str, node["shape"]))
            raise DnetError(
                f"`{record['unit']}` gives scores of shape {shape}, but the network's head gives "
                + "x".join(map(str, final["shape"])),
                g.graph["network"].exits[g.graph["units"][record["unit"]]["index"]].span,
                help="give every exit the head's classifier: the same number of classes",
            )
        if len(node["shape"]) != 1:
            raise DnetError("an `exit` ends in class scores", node["span"], help="end it with `classifier(classes)`")


def _check_grid(g: nx.DiGraph, grid: dict) -> None:
    """The grid's finest scale has the width `scales` gives it: channels times the first factor."""
    net = g.graph["network"]
    part = next(p for p in net.parts if isinstance(p, spec.Scales))
    have = g.nodes[grid["first"]]["shape"][0]
    want = part.channels * part.factors[0]
    if have != want:
        raise DnetError(
            f"`scales({part.channels}, ...)` makes the finest scale {want} channels wide, but the maps before "
            f"it have {have}",
            part.span,
            help=f"end the stem with {want} channels, or write `scales({have // part.factors[0]}, ...)`"
            if have % part.factors[0] == 0
            else f"end the stem with {want} channels",
        )
