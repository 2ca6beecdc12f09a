"""Emit a torch.nn.Module from the graph IR: one torch module per op node, grouped by unit."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import networkx as nx
from torch import nn

from .graph import part_of
from .lowerings import LOWERINGS
from .modules import (
    BlurPool,
    Branches,
    Coarsest,
    Composite,
    DenseLayer,
    DenseNet,
    EffectiveSqueezeExcite,
    FeatureMaps,
    Features,
    GlobalAvgPool,
    Layer,
    LearnedGroupConv,
    MultiScaleLayer,
    MultiScaleStem,
    ParallelScales,
    ScaleLayer,
    Select,
    SqueezeExcite,
    StemBlock,
    Transition,
    TransitionUp,
    TwoWayDenseLayer,
    initialise,
)
from .passes import conv_groups, inputs, se_width
from .taps import FeatureInfo, feature_taps


def _nd(name: str, rank: int) -> type[nn.Module]:
    return getattr(nn, f"{name}{rank}d")


def _conv(node: dict, c_in: int, rank: int) -> nn.Module:
    a = node["args"]
    return _nd("Conv", rank)(
        c_in,
        node["shape"][0],
        a["kernel"],
        a["stride"],
        a["padding"],
        dilation=a.get("dilation", 1),
        groups=conv_groups(node, c_in),
        bias=a.get("bias", False),
    )


def _conv_transpose(node: dict, c_in: int, rank: int) -> nn.Module:
    a = node["args"]
    return _nd("ConvTranspose", rank)(c_in, node["shape"][0], a["kernel"], a["stride"], a["padding"], bias=a["bias"])


def _pool(kind: str) -> Callable[[dict, int, int], nn.Module]:
    def make(node: dict, c_in: int, rank: int) -> nn.Module:
        a = node["args"]
        return _nd(kind, rank)(a["kernel"], a["stride"], a["padding"], ceil_mode=a.get("ceil", False))

    return make


def _norm(node: dict, c_in: int, rank: int) -> nn.Module:
    kind = node["args"]["kind"]
    if kind == "batch":
        return _nd("BatchNorm", rank)(c_in)
    if kind == "instance":  # a scale and shift per channel, no running statistics
        return _nd("InstanceNorm", rank)(c_in, affine=True)
    groups = 1 if kind == "layer" else int(kind[len("group(") : -1])  # layer: one group of all channels
    return nn.GroupNorm(groups, c_in)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "prelu": lambda: nn.PReLU(),
    "silu": lambda: nn.SiLU(),
    "gelu": lambda: nn.GELU(),
    "relu6": lambda: nn.ReLU6(inplace=True),
}

FACTORIES: dict[str, Callable[[dict, int, int], nn.Module]] = {
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "norm": _norm,
    "act": lambda node, c_in, rank: ACTIVATIONS[node["args"]["kind"]](),
    "dropout": lambda node, c_in, rank: nn.Dropout(node["args"]["p"]),
    "maxpool": _pool("MaxPool"),
    "avgpool": _pool("AvgPool"),
    "blurpool": lambda node, c_in, rank: BlurPool(c_in, node["args"]["kernel"][0], node["args"]["stride"][0], rank),
    "global_pool": lambda node, c_in, rank: GlobalAvgPool(),
    "linear": lambda node, c_in, rank: nn.Linear(c_in, node["shape"][0]),
    "shuffle": lambda node, c_in, rank: nn.ChannelShuffle(node["args"]["groups"]),
    "se": lambda node, c_in, rank: SqueezeExcite(c_in, se_width(node, c_in), rank),
    "ese": lambda node, c_in, rank: EffectiveSqueezeExcite(c_in, rank),
    "lgconv": lambda node, c_in, rank: LearnedGroupConv(c_in, node["shape"][0], **node["args"]["learned"], rank=rank),
    "select": lambda node, c_in, rank: Select(c_in, node["shape"][0]),
    "coarsest": lambda node, c_in, rank: Coarsest(),
}

# The module made at each container path of the graph (its `containers`), by kind; `dense` is the
# lowering's block class, or naive's where the lowering does not cover the block.
CONTAINERS: dict[str, Callable[[], nn.Module]] = {
    "dense_layer": DenseLayer,
    "two_way_layer": TwoWayDenseLayer,
    "layer": Layer,
    "composite": Composite,
    "branches": Branches,
    "sequential": nn.Sequential,
    "transition": Transition,
    "transition_up": TransitionUp,
    "stem_block": StemBlock,
    "scales": MultiScaleStem,
    "msd_block": nn.Sequential,
    "msd_layer": MultiScaleLayer,
    "scale_layer": ScaleLayer,
    "msd_transition": ParallelScales,
}


GENERAL_FALLBACK = "its connectivity, layers, fuse or residual are the spec's own, which the lowering does not cover"
GRID_FALLBACK = "a grid of scales is not a dense block, which is what the lowerings lower"


def emit(g: nx.DiGraph, memory: str = "naive") -> nn.Module:
    """The module of a graph, its dense blocks lowered as `memory` says (a name in compiler/lowerings.py).

    Every lowering has torchvision's layout and names, so weights move freely between them.
    """
    lowering = LOWERINGS[memory]
    rank = len(g.nodes["input"]["shape"]) - 1
    features, head, exits = Features(), nn.Sequential(), nn.ModuleList()
    roots: dict[str, nn.Module] = {"features": features, "head": head, "exits": exits}
    classifier: nn.Module | None = None

    def make(path: str) -> nn.Module:
        record = g.graph["containers"][path]
        if record["kind"] != "dense":
            made = CONTAINERS[record["kind"]]()
            if record["kind"] == "branches":
                made.join = record["join"]
            if record["kind"] == "msd_block" and memory != "naive":  # said once by --summary
                made.runs_as, made.fallback_reason = "naive", GRID_FALLBACK
            return made
        general = "links" in record  # another connectivity, a layer of the spec's own, fuse or residual
        if general and not lowering.general:
            net = g.graph["network"]
            instead = lowering.for_block(True, net.normalization, net.activation, False)
            block: nn.Module = instead.block_class()()
            block.runs_as, block.fallback_reason = instead.name, GENERAL_FALLBACK  # said once by --summary
        else:
            block = lowering.block_class()()
        block.concat_input = record["concat_input"]
        if general:
            block.links, block.outputs, block.residual = record["links"], record["outputs"], record["residual"]
            if "bypass" in record:
                block.bypass = g.nodes[record["bypass"]]["shape"][0]
            block.dual = record.get("dual", 0)
        return block

    def container(parent: nn.Module, name: str, path: str) -> nn.Module:
        """The module at `path` (`parent.name`), made on first use as the graph's record says."""
        if name not in parent._modules:
            parent.add_module(name, make(path))
        return parent._modules[name]

    def ensure(path: str) -> nn.Module:
        parts = path.split(".")
        parent = roots[parts[0]]
        for depth, name in enumerate(parts[1:], 2):
            parent = container(parent, name, ".".join(parts[:depth]))
        return parent

    pending = list(g.graph["containers"])
    for i, n in enumerate(g.nodes):  # in the order the graph was built: topological, each module's children in order
        while pending and g.graph["containers"][pending[0]]["at"] <= i:
            ensure(pending.pop(0))
        node = g.nodes[n]
        if node["module"] is None:
            continue
        (pred,) = inputs(g, n)
        module = FACTORIES[node["op"]](node, g.nodes[pred]["shape"][0], rank)
        path = node["module"].split(".")
        if path == ["classifier"]:
            classifier = module
            continue
        parent = ensure(".".join(path[:-1])) if len(path) > 2 else roots[path[0]]
        parent.add_module(path[-1], module)
    for path in pending:
        ensure(path)
    for (name, index), n in g.graph["kept"].items():
        features.keeps.setdefault(part_of(g, n), []).append(f"{name}[{index}]")
    for unit, info in g.graph["units"].items():
        if info["kind"] == "transition_up":
            features.joins[unit] = info["skip"]
    for e, record in enumerate(g.graph["exits"]):
        features.taps.setdefault(part_of(g, record["tap"]), []).append(e)
    model = DenseNet(features, head, classifier, exits if g.graph["exits"] else None)
    model.memory = memory
    model.feature_info = feature_taps(g)
    model.graph_ir = g  # what the network was compiled from: its notebook display reads it
    initialise(model)
    return model


def backbone(model: DenseNet, out_indices: Sequence[int] | None = None) -> FeatureMaps:
    """timm's `features_only`: the network's feature maps at the taps `out_indices` picks (all by
    default; negative indices count from the last), sharing the network's modules and weights."""
    info = model.feature_info
    picked = range(len(info)) if out_indices is None else [range(len(info))[i] for i in out_indices]
    return FeatureMaps(model.features, FeatureInfo({**info[i], "index": i} for i in picked))
