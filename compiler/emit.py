"""Emit a torch.nn.Module from the graph IR: one torch module per op node, grouped by unit."""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
from torch import nn

from .graph import part_of
from .lowerings import LOWERINGS
from .modules import (
    BlurPool,
    DenseLayer,
    DenseNet,
    Features,
    GlobalAvgPool,
    StemBlock,
    Transition,
    TransitionUp,
    TwoWayDenseLayer,
    initialise,
)


def _nd(name: str, rank: int) -> type[nn.Module]:
    return getattr(nn, f"{name}{rank}d")


def _conv(node: dict, c_in: int, rank: int) -> nn.Module:
    a = node["args"]
    return _nd("Conv", rank)(c_in, node["shape"][0], a["kernel"], a["stride"], a["padding"], bias=a.get("bias", False))


def _conv_transpose(node: dict, c_in: int, rank: int) -> nn.Module:
    a = node["args"]
    return _nd("ConvTranspose", rank)(c_in, node["shape"][0], a["kernel"], a["stride"], a["padding"], bias=a["bias"])


def _pool(kind: str) -> Callable[[dict, int, int], nn.Module]:
    def make(node: dict, c_in: int, rank: int) -> nn.Module:
        a = node["args"]
        return _nd(kind, rank)(a["kernel"], a["stride"], a["padding"])

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
}


def emit(g: nx.DiGraph, memory: str = "naive") -> nn.Module:
    """The module of a graph, its dense blocks lowered as `memory` says (a name in compiler/lowerings.py).

    Every lowering has torchvision's layout and names, so weights move freely between them.
    """
    block_class = LOWERINGS[memory].block_class()
    rank = len(g.nodes["input"]["shape"]) - 1
    features = Features()
    classifier: nn.Module | None = None

    def container(parent: nn.Module, name: str, unit: str) -> nn.Module:
        """The module at `parent.name`, made on first use: the kind its name and unit call for."""
        if name not in parent._modules:
            info = g.graph["units"].get(unit, {})
            if name.startswith("denseblock"):
                made: nn.Module = block_class()
                made.concat_input = info["concat_input"]
            elif name.startswith("denselayer"):
                made = TwoWayDenseLayer() if info.get("two_way") else DenseLayer()
            elif name.startswith("transition_up"):
                made = TransitionUp()
            elif name.startswith("transition"):
                made = Transition()
            elif name == "stemblock":
                made = StemBlock()
            else:  # a Conv-BN-activation inside a two-way layer or the stem block
                made = nn.Sequential()
            parent.add_module(name, made)
        return parent._modules[name]

    for n in g.nodes:  # in the order the graph was built: topological, and each module's children in order
        node = g.nodes[n]
        if node["module"] is None:
            continue
        (pred,) = g.predecessors(n)
        module = FACTORIES[node["op"]](node, g.nodes[pred]["shape"][0], rank)
        path = node["module"].split(".")
        if path == ["classifier"]:
            classifier = module
            continue
        parent: nn.Module = features
        for name in path[1:-1]:
            parent = container(parent, name, node["unit"])
        parent.add_module(path[-1], module)
    for (name, index), n in g.graph["kept"].items():
        features.keeps.setdefault(part_of(g, n), []).append(f"{name}[{index}]")
    for unit, info in g.graph["units"].items():
        if info["kind"] == "transition_up":
            features.joins[unit] = info["skip"]
    model = DenseNet(features, classifier)
    model.memory = memory
    initialise(model)
    return model
