"""Lower a validated spec to the graph IR: a networkx DiGraph with a node per operation.

Every dense connection is an edge: layer j of a block has j inputs (the block's input and each
earlier layer's new features), concatenated in order (edge attribute `index`). Node attributes:

    op       conv | norm | act | dropout | maxpool | avgpool | blurpool | shuffle | se | ese | slice | add
             | global_pool | linear | concat | input
    module   the dotted name of the torch module that carries it out (None for input and concat)
    unit     stem | denseblockN | transitionN | head (the part of the network it belongs to)
    layer    denselayerN inside a dense block, else None
    args     what the op needs: channels, kernel, stride, padding, p, kind (of norm and act), ...
    span     where the spec wrote it, for diagnostics

`passes.infer` then adds `shape` (channels, *spatial), `params` and `macs` to every node.

Graph attributes: `units` (each part's record: its kind and the spec's fields), `containers` (each
module path above the op nodes -> the kind of module the emitter makes there, with its settings),
`kept` (feature maps kept for skips) and `output`.
"""

from __future__ import annotations

import networkx as nx

from dsl import DnetError, spec
from dsl.errors import did_you_mean

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
        self.g = nx.DiGraph(name=network.name, network=network, units={}, kept={}, containers={})
        self.rank = len(network.input.size)
        self.norm = {"kind": network.normalization}
        self.act = {"kind": network.activation}
        self.g.add_node("input", op="input", module=None, unit="input", layer=None, args={}, span=network.input.span)
        self.last = "input"

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
            if isinstance(op, spec.Composite):  # a layer of the spec's own: features.NAME0, features.NAME0_2
                base = op.name
                seen[base] = seen.get(base, 0) + 1
                path = f"{ROOT}.{base}0" if seen[base] == 1 else f"{ROOT}.{base}0_{seen[base]}"
                self.container(path, "composite", layer=op.name)
                self.ops(op.ops, path, "stem", None)
                continue
            base = names[op.kind]
            seen[base] = seen.get(base, 0) + 1
            name = f"{base}0" if seen[base] == 1 else f"{base}0_{seen[base]}"
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
        self.g.graph["units"][unit] = {
            "kind": "dense",
            "layers": part.layers,
            "growth": part.growth,
            "bottleneck": part.bottleneck if part.layer is None else None,
            "dropout": part.dropout,
            "concat_input": part.concat_input,
            "bias": part.bias,
            "two_way": part.two_way,
            "connect": str(connect),
            "layer": part.layer[0].name if part.layer else None,
            "fuse": part.fuse.name if part.fuse else None,
            "residual": part.residual,
        }
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
        for i in range(1, part.layers + 1):
            layer = f"denselayer{i}"
            p = f"{prefix}.{layer}"
            self.concat(f"{p}.cat", [features[j] for j in connect.links(i)], unit, part.span, layer)
            if part.layer is not None:
                self.container(p, "layer", layer=part.layer[i - 1].name)
                self.ops(part.layer[i - 1].ops, p, unit, layer)
                features.append(self.last)
                continue
            if part.two_way:
                self.container(p, "two_way_layer")
                self.two_way_layer(part, p, unit, layer)
                features.append(self.last)
                continue
            self.container(p, "dense_layer")
            growth = connect.width(i, part.growth)
            convs = (
                [("1", {"channels": part.bottleneck * growth, "kernel": (1,) * self.rank})] if part.bottleneck else []
            )
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

    def composite(self, part: spec.Composite, n: int) -> None:
        """A layer of the spec's own in the body (a transition of its own): `features.NAMEn`."""
        unit = f"{part.name}{n}"
        self.g.graph["units"][unit] = {"kind": "layer", "layer": part.name, "arguments": part.arguments}
        self.container(f"{ROOT}.{unit}", "composite", layer=part.name)
        self.ops(part.ops, f"{ROOT}.{unit}", unit, None)

    def transition(self, part: spec.Transition, t: int) -> None:
        unit = f"transition{t}"
        self.container(f"{ROOT}.{unit}", "transition")
        self.g.graph["units"][unit] = {
            "kind": "transition",
            "compression": part.compression,
            "dropout": part.dropout,
            "blur": part.blur,
            "conv_first": part.conv_first,
            "pool": part.pool,
        }
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
        self.g.graph["units"][unit] = {"kind": "transition_down", "dropout": part.dropout}
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
        self.g.graph["units"][unit] = {"kind": "transition_up", "skip": f"{key[0]}[{key[1]}]", "skip_node": skip}
        p = f"{ROOT}.{unit}"
        args = {"kernel": (3,) * self.rank, "stride": (2,) * self.rank, "padding": (0,) * self.rank}
        self.chain(f"{p}.conv", "conv_transpose", unit, part.span, like=skip, bias=True, **args)
        self.concat(f"{p}.cat", [self.last, skip], unit, part.span)

    def head(self, part: spec.Head, blocks: int) -> None:
        n = blocks + 1
        self.g.graph["units"]["head"] = {"kind": "head"}
        for op in part.ops:
            if isinstance(op, spec.LinearClassifier):  # pool, dropout, linear: the network ends normalised
                self.chain(f"{ROOT}.pool{n}", "global_pool", "head", op.span)
                if op.dropout > 0:
                    self.chain(f"{ROOT}.drop{n}", "dropout", "head", op.span, p=op.dropout)
                self.chain("classifier", "linear", "head", op.span, channels=op.classes)
                continue
            if isinstance(op, spec.PixelClassifier):  # a 1x1 convolution: scores at every position
                one = (1,) * self.rank
                self.chain(
                    "classifier",
                    "conv",
                    "head",
                    op.span,
                    channels=op.classes,
                    kernel=one,
                    stride=one,
                    padding=(0,) * self.rank,
                    bias=True,
                )
                continue
            self.chain(f"{ROOT}.norm{n}", "norm", "head", op.span, **self.norm)
            self.chain(f"{ROOT}.relu{n}", "act", "head", op.span, **self.act)
            self.chain(f"{ROOT}.pool{n}", "global_pool", "head", op.span)
            if op.keep < 1:  # CondenseNet's converted classifier: the features the conversion kept
                self.chain(f"{ROOT}.select{n}", "select", "head", op.span, fraction=op.keep)
            self.chain("classifier", "linear", "head", op.span, channels=op.classes)


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
        else:
            b.head(part, count.get("dense", 0))
    b.g.graph["output"] = b.last
    infer(b.g)
    return b.g
