"""Standalone source of a network built from the spec's own layers and connectivities: the building
blocks copied from compiler/modules.py as they are (so each is defined once), and the network as the
tree of modules the emitter makes, written out. compiler/source.py writes the networks of the built-in
blocks as a person would; this writes every other one.
"""

from __future__ import annotations

import inspect
import re

import networkx as nx
from torch import nn

from . import modules
from .emit import emit
from .source_blocks import INDENT, BlockSource, _call

# the copied classes keep this project's layout (ruff, line length 120), and the rest follows them
WIDTH = 120

# The settings the emitter gives dnetc's containers, written where they differ from the class's own.
SETTINGS = {
    modules.DenseBlock: ("concat_input", "links", "outputs", "bypass", "residual", "dual"),
    modules.Branches: ("join",),
    modules.Features: ("keeps", "joins", "taps"),
}
# torch modules: the constructor's arguments, read back from the module
TORCH_ARGUMENTS = {
    nn.Conv1d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"),
    nn.ConvTranspose1d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "bias"),
    nn.BatchNorm1d: ("num_features",),
    nn.InstanceNorm1d: ("num_features", "affine"),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.ReLU: ("inplace",),
    nn.ReLU6: ("inplace",),
    nn.PReLU: ("num_parameters",),
    nn.SiLU: (),
    nn.GELU: (),
    nn.Dropout: ("p",),
    nn.MaxPool1d: ("kernel_size", "stride", "padding", "ceil_mode"),
    nn.AvgPool1d: ("kernel_size", "stride", "padding", "ceil_mode"),
    nn.ChannelShuffle: ("groups",),
    nn.Linear: ("in_features", "out_features"),
    nn.Sequential: (),
    nn.ModuleList: (),
}
DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True, "ceil_mode": False, "inplace": False}


def _torch_class(m: nn.Module) -> type | None:
    """The entry of TORCH_ARGUMENTS a module falls under (Conv2d under Conv1d's, and so on)."""
    for cls in TORCH_ARGUMENTS:
        if type(m) is cls:
            return cls
        family = re.sub(r"[123]d$", "", cls.__name__)
        if family != cls.__name__ and re.fullmatch(family + r"[123]d", type(m).__name__):
            return cls
    return None


def _value(v: object) -> str:
    if isinstance(v, tuple) and len(set(v)) == 1:
        return repr(v[0])
    return repr(v)


def _constructor(m: nn.Module) -> tuple[str, list[str]]:
    """`nn.Conv2d`, `["8", "16", "kernel_size=3", "padding=1", "bias=False"]` for a module of torch's."""
    cls = _torch_class(m)
    if cls is None:
        raise TypeError(f"no standalone source for {type(m).__name__}")
    args = []
    for i, name in enumerate(TORCH_ARGUMENTS[cls]):
        v = getattr(m, name)
        if name == "bias":
            v = v is not None if not isinstance(v, bool) else v
        if name == "p" or (i < 2 and name not in DEFAULTS):
            args.append(_value(v))
        elif name not in DEFAULTS or _value(v) != _value(DEFAULTS[name]):
            args.append(f"{name}={_value(v)}")
    return f"nn.{type(m).__name__}", args


def _own(m: nn.Module) -> tuple[str, list[str]]:
    """The constructor of one of dnetc's modules: its arguments read back where it takes any."""
    name = type(m).__name__
    if isinstance(m, modules.BlurPool):
        return name, [str(m.channels), str(m.filt.shape[-1]), str(m.stride), f"rank={m.rank}"]
    if isinstance(m, modules.SqueezeExcite):
        return name, [str(m.fc1.in_channels), str(m.fc1.out_channels), f"rank={m.fc1.weight.dim() - 2}"]
    if isinstance(m, modules.EffectiveSqueezeExcite):
        return name, [str(m.fc.in_channels), f"rank={m.fc.weight.dim() - 2}"]
    if isinstance(m, modules.LearnedGroupConv):
        out, inputs = m.weight.shape[:2]
        args = [str(inputs), str(out), str(m.groups), str(m.condense), repr(m.lasso), f"rank={m.rank}"]
        return name, args
    if isinstance(m, modules.Select):
        return name, [str(m.in_channels), str(len(m.index))]
    return name, []


def _literal(v: object) -> str:
    """A setting as ruff writes it: double quotes, Python's booleans."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(x)}" for k, x in v.items()) + "}"
    return repr(v)


class _TreeWriter:
    def __init__(self, g: nx.DiGraph, header: list[str]) -> None:
        self.g = g
        self.model = emit(g, "naive")
        self.header = header
        self.used: set[type] = set()

    def build(self, m: nn.Module, target: str, depth: int, indent: str) -> list[str]:
        """Statements that make `m` at `target` (`d2.denselayer1`), its settings and its children, one
        local name a level (`d1`, `d2`, ...) so that every line stays short."""
        if type(m).__module__ == modules.__name__:
            self.used.add(type(m))
            made = _own(m)
        else:
            made = _constructor(m)
        children = (
            [] if isinstance(m, modules.SqueezeExcite | modules.EffectiveSqueezeExcite) else list(m.named_children())
        )
        settings = {
            name: getattr(m, name)
            for cls, names in SETTINGS.items()
            if isinstance(m, cls)
            for name in names
            if getattr(m, name) != getattr(cls, name, None) and getattr(m, name) not in ({}, None)
        }
        head, args = made
        if not children and not settings:
            return _call(indent, f"{target} = {head}(", args, width=WIDTH)
        var = f"d{depth}"
        made_text = f"{head}({', '.join(args)})"
        out = [f"{indent}{var} = {target} = {made_text}" if target != var else f"{indent}{var} = {made_text}"]
        for name, value in settings.items():
            text = _literal(value)
            if isinstance(value, list) and len(f"{indent}{var}.{name} = {text}") > WIDTH:
                out += _call(indent, f"{var}.{name} = [", [_literal(x) for x in value], "]", width=WIDTH)
            else:
                out.append(f"{indent}{var}.{name} = {text}")
        for name, child in children:
            if name.isidentifier():
                out += self.build(child, f"{var}.{name}", depth + 1, indent)
            else:  # a list's entry (`exits.0`): made, then added by name
                out += self.build(child, f"d{depth + 1}", depth + 1, indent)
                out.append(f'{indent}{var}.add_module("{name}", d{depth + 1})')
        return out

    def classes(self) -> list[str]:
        """The source of each of dnetc's modules the network uses, copied from compiler/modules.py."""
        if modules.DenseLayer in self.used:
            self.used.add(modules.Stage)  # DenseLayer.stages() returns them
        order = [c for _, c in inspect.getmembers(modules, inspect.isclass) if c in self.used]
        order.sort(key=lambda c: inspect.getsourcelines(c)[1])
        out = []
        for c in order:
            out += ["", "", *inspect.getsource(c).rstrip().splitlines()]
        return out

    def write(self) -> str:
        classifier = self.model.classifier
        features = self.build(self.model.features, "d0", 0, INDENT * 2)
        classifier_line = (
            self.build(classifier, "self.classifier", 1, INDENT * 2)
            if classifier is not None
            else [f"{INDENT * 2}self.classifier = None"]
        )
        exits = self.model.exits
        exit_lines = (
            [*self.build(exits, "d0", 0, INDENT * 2), f"{INDENT * 2}self.exits = d0"]
            if exits is not None
            else [f"{INDENT * 2}self.exits = None"]
        )
        classes = self.classes()  # every module built: the classes they are made of
        copied = "\n".join(classes)  # the imports follow what the copied classes use
        typing = [name for name in ("Any", "NamedTuple") if name in copied]
        body = [
            "class DenseNet(nn.Module):",
            f'{INDENT}"""{self.g.graph["name"]}: `features`, then `classifier`, as dnetc compiled it."""',
            "",
            f"{INDENT}def __init__(self) -> None:",
            f"{INDENT * 2}super().__init__()",
            *features,
            f"{INDENT * 2}self.features = d0",
            *classifier_line,
            *exit_lines,
            f"{INDENT * 2}initialise(self)",
            "",
            *inspect.getsource(modules.DenseNet.forward).rstrip().splitlines(),  # one forward, copied
        ]
        lines = [
            *self.header,
            "from __future__ import annotations",
            "",
            "import hashlib",
            "import io",
            *(["import math"] if "math." in copied else []),
            *(["from collections.abc import Callable"] if "Callable" in copied else []),
            *([f"from typing import {', '.join(typing)}"] if typing else []),
            "",
            "import torch",
            *(["import torch.nn.functional as F"] if "F." in copied else []),
            "from torch import Tensor, nn",
            *classes,
            "",
            "",
            *inspect.getsource(modules.initialise).rstrip().splitlines(),
            "",
            "",
            "NORMS = " + _norms(),
            "",
            "",
            *body,
            "",
            "",
            *BlockSource.load_weights(self),
        ]
        return "\n".join(lines) + "\n"


def _norms() -> str:
    return "(\n" + "".join(f"{INDENT}nn.{c.__name__},\n" for c in modules.NORMS) + ")"


def tree_source(g: nx.DiGraph, header: list[str]) -> str:
    """Standalone source of any network: `DenseNet()` there equals `emit(g)` here, key for key."""
    return _TreeWriter(g, header).write()
