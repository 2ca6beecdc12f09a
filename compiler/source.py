"""Emit standalone PyTorch source from the graph IR: a file that imports only torch.

The source is what a person would write for this one network, after torchvision's DenseNet: a
dense layer, a dense block, a transition and the network, with the spec's sizes written out as
numbers. Only what the spec uses is emitted (bottleneck or plain layers, dropout). Its modules
carry the compiled module's names, so the state_dict keys are equal and dnetc's weights load into
it. The lines are laid out as ruff's formatter would lay them out (line length 88).
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from dsl import zoo_dir
from dsl.evaluate import literal

from .graph import part_of
from .source_blocks import INDENT, WIDTH, BlockSource, _call


def _where(file: str | None) -> str:
    """A spec's file as the header names it: relative to the working directory, or in the zoo."""
    if file is None:
        return "<string>"
    path = Path(file).resolve()
    if path.parent == zoo_dir().resolve():
        return f"{path.name} in dnetc's zoo"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _size(values: tuple[int, ...]) -> str:
    """`3` for (3, 3), `(3, 5)` for (3, 5): one number when every dimension agrees."""
    if len(set(values)) == 1:
        return str(values[0])
    return "(" + ", ".join(map(str, values)) + ")"


def _window_args(a: dict, conv: bool) -> list[str]:
    rank = len(a["kernel"])
    out = [f"kernel_size={_size(a['kernel'])}"]
    if a["stride"] != (a["kernel"] if not conv else (1,) * rank):
        out.append(f"stride={_size(a['stride'])}")
    if any(a["padding"]):
        out.append(f"padding={_size(a['padding'])}")
    return out


def _header(g: nx.DiGraph, overrides: list[str], tool: str) -> list[str]:
    """The file's docstring: what it is, where it came from, how to load weights into it."""
    net = g.graph["network"]
    shape_in = "x".join(map(str, g.nodes["input"]["shape"]))
    shape_out = "x".join(map(str, g.nodes[g.graph["output"]]["shape"]))
    params = ", ".join(f"{k}={literal(v)}" for k, v in net.parameters.items()) or "none"
    overrides = " ".join(f"--set {o}" for o in overrides) or "none"
    lines = [
        f'"""{net.name}: a densely connected network in plain PyTorch, written by {tool}.',
        "",
        f"Spec: {_where(net.file)} (network {net.name})",
        f"Overrides: {overrides}",
        f"Parameters: {params}",
        f"Input {shape_in} -> output {shape_out}; {g.graph['params']:,} parameters,",
        f"{g.graph['macs']:,} multiply-adds per sample.",
        "",
        "Only torch is needed. The state_dict keys are those of dnetc's compiled module, so",
        "its checkpoints and weights load with strict=True:",
        "",
        "    model = DenseNet()",
        '    model.load_state_dict(load_weights("runs/RUN/checkpoints/best.pt"))',
        '"""',
    ]
    return [*_wrap_text(lines), ""]


class SourceError(Exception):
    """A network that the standalone source does not express yet: says which construct."""


class _Writer(BlockSource):
    def __init__(self, g: nx.DiGraph, memory_efficient: bool, overrides: list[str], tool: str) -> None:
        self.g = g
        self.d = len(g.nodes["input"]["shape"]) - 1
        self.memory_efficient = memory_efficient
        self.overrides = overrides
        self.tool = tool
        blocks = [u for u in g.graph["units"].values() if u["kind"] == "dense"]
        self.bottleneck = {bool(u["bottleneck"]) for u in blocks}
        self.dropout = any(u["dropout"] > 0 for u in blocks)
        transitions = [u for u in g.graph["units"].values() if u["kind"] == "transition"]
        self.transition_dropout = any(u["dropout"] > 0 for u in transitions)
        self.blur = any(u["blur"] for u in transitions)
        self.blur_pool_used = any(g.nodes[n]["op"] == "blurpool" for n in g)
        self.bias = any(u["bias"] for u in blocks)
        self.concat_flags = not all(u["concat_input"] for u in blocks)
        kinds = {u["kind"] for u in g.graph["units"].values()}
        self.down, self.up = "transition_down" in kinds, "transition_up" in kinds
        self.transitions = "transition" in kinds
        self.two_way = any(u.get("two_way") for u in blocks)
        if self.two_way and not all(u.get("two_way") for u in blocks):
            raise SourceError("standalone source for a network that mixes two-way and plain dense layers")
        transitions = [u for u in g.graph["units"].values() if u["kind"] == "transition"]
        self.conv_first = {bool(u.get("conv_first")) for u in transitions}
        if len(self.conv_first) > 1:
            raise SourceError("standalone source for a network that mixes Conv-BN-ReLU and BN-ReLU-Conv transitions")
        self.no_pool = any(not u.get("pool", True) for u in transitions)
        self.stem_block_used = any(n.startswith("features.stemblock.") for n in g)
        self.normalization = g.graph["network"].normalization
        self.activation = g.graph["network"].activation

    def nn(self, name: str) -> str:
        return f"nn.{name}{self.d}d"

    def channels_in(self, n: str) -> int:
        (pred,) = self.g.predecessors(n)
        return self.g.nodes[pred]["shape"][0]

    # ---- the parts of the file
    def header(self) -> list[str]:
        return _header(self.g, self.overrides, self.tool)

    @property
    def uses_functional(self) -> bool:
        return (self.normalization == "batch" and not self.two_way) or self.blur_pool_used

    def imports(self) -> list[str]:
        lines = ["from __future__ import annotations", ""]
        lines += (
            ["import contextlib", "import hashlib", "import io"] if self.two_way else ["import hashlib", "import io"]
        )
        lines += ["import math", ""] if self.blur_pool_used else [""]
        if self.two_way:
            lines[-1:-1] = ["from collections.abc import Iterator"]
        lines += [
            "import torch",
            *(["import torch.nn.functional as F"] if self.uses_functional else []),
            "from torch import Tensor, nn",
            "from torch.utils.checkpoint import checkpoint",
        ]
        return lines

    def module(self, n: str) -> tuple[str, list[str]]:
        """The constructor and arguments of one op node outside dense blocks and transitions."""
        node = self.g.nodes[n]
        op, a, c_in = node["op"], node["args"], self.channels_in(n)
        if op == "conv":
            args = [str(c_in), str(node["shape"][0]), *_window_args(a, conv=True)]
            return self.nn("Conv"), args if a.get("bias") else [*args, "bias=False"]
        if op == "norm":
            return self.norm(str(c_in), a["kind"])
        if op == "act":
            return self.act(a["kind"])
        if op == "dropout":
            return "nn.Dropout", [str(a["p"])]
        if op in ("maxpool", "avgpool"):
            return self.nn("MaxPool" if op == "maxpool" else "AvgPool"), _window_args(a, conv=False)
        if op == "global_pool":
            return "GlobalAvgPool", []
        if op == "blurpool":
            args = [str(c_in)]
            if a["kernel"][0] != 3:
                args.append(f"kernel={a['kernel'][0]}")
            if a["stride"][0] != 2:
                args.append(f"stride={a['stride'][0]}")
            return "BlurPool", args
        raise AssertionError(f"no source for op {op}")

    def network(self) -> list[str]:
        g = self.g
        i2, i3 = INDENT * 2, INDENT * 3
        classes = g.nodes["classifier"]["shape"][0] if "classifier" in g else None
        args = ["self"]
        if classes is not None:
            args.append(f"classes: int = {classes}")
        args.append(f"memory_efficient: bool = {self.memory_efficient}")
        shape_in = "x".join(map(str, g.nodes["input"]["shape"]))
        shape_out = "x".join(map(str, g.nodes[g.graph["output"]]["shape"]))
        out = [
            "class DenseNet(nn.Module):",
            f'{INDENT}"""{g.graph["name"]}: {shape_in} -> {shape_out}. `memory_efficient` recomputes each',
            f"{INDENT}dense layer's first convolution in the backward pass rather than storing its",
            f'{INDENT}input (slower, far less memory)."""',
            "",
        ]
        out += _call(INDENT, "def __init__(", args, ") -> None:")
        out.append(f"{i2}super().__init__()")
        out.append(f"{i2}m = memory_efficient")
        if self.up:
            keeps: dict[str, list[str]] = {}
            for (name, index), node in g.graph["kept"].items():
                keeps.setdefault(part_of(g, node), []).append(f'"{name}[{index}]"')
            joins = {u: f'"{info["skip"]}"' for u, info in g.graph["units"].items() if info["kind"] == "transition_up"}
            out.append(f"{i2}keeps = {{")
            out += [f'{i3}"{k}": [{", ".join(v)}],' for k, v in keeps.items()]
            out += [f"{i2}}}", f"{i2}joins = {{"]
            out += [f'{i3}"{k}": {v},' for k, v in joins.items()]
            out += [f"{i2}}}", f"{i2}features = Features(keeps, joins)"]
        else:
            out.append(f"{i2}features = nn.Sequential()")
        done: set[str] = set()
        for n in g.nodes:
            node = g.nodes[n]
            if node["module"] is None or n == "classifier":
                continue
            unit = node["unit"]
            kind = g.graph["units"].get(unit, {}).get("kind")
            if n.startswith("features.stemblock."):
                if "stemblock" not in done:
                    done.add("stemblock")
                    channels = g.nodes["features.stemblock.stem3.conv"]["shape"][0]
                    out.append(f"{i2}features.stemblock = StemBlock({self.channels_in(n)}, {channels})")
                continue
            if kind == "dense":
                if unit in done:
                    continue
                done.add(unit)
                u = g.graph["units"][unit]
                args = [str(u["layers"]), str(self.channels_in(n)), f"growth={u['growth']}"]
                if True in self.bottleneck:
                    args.append(f"bottleneck={u['bottleneck']}")
                if u["dropout"] > 0:
                    args.append(f"dropout={u['dropout']}")
                if u["bias"]:
                    args.append("bias=True")
                args.append("memory_efficient=m")
                if not u["concat_input"]:
                    args.append("concat_input=False")
                out += _call(i2, f"features.{unit} = DenseBlock(", args)
            elif kind in ("transition_down", "transition_up"):
                if unit in done:
                    continue
                done.add(unit)
                u = g.graph["units"][unit]
                args = [str(self.channels_in(n))]
                if kind == "transition_down" and u["dropout"] > 0:
                    args.append(f"dropout={u['dropout']}")
                make = "TransitionDown" if kind == "transition_down" else "TransitionUp"
                out += _call(i2, f"features.{unit} = {make}(", args)
            elif kind == "transition":
                if unit in done:
                    continue
                done.add(unit)
                u = g.graph["units"][unit]
                args = [str(self.channels_in(n)), str(g.nodes[f"features.{unit}.conv"]["shape"][0])]
                if u["dropout"] > 0:
                    args.append(f"dropout={u['dropout']}")
                if u["blur"]:
                    args.append("blur=True")
                if not u["pool"]:
                    args.append("pool=False")
                out += _call(i2, f"features.{unit} = Transition(", args)
            else:
                make, args = self.module(n)
                out += _call(i2, f"features.{n.split('.')[-1]} = {make}(", args)
        out.append(f"{i2}self.features = features")
        if classes is not None and g.nodes["classifier"]["op"] == "linear":
            out.append(f"{i2}self.classifier = nn.Linear({self.channels_in('classifier')}, classes)")
        elif classes is not None:  # scores at every position
            c_in = self.channels_in("classifier")
            out.append(f"{i2}self.classifier = {self.nn('Conv')}({c_in}, classes, kernel_size=1)")
        out.append(f"{i2}initialise(self)")
        out += ["", f"{INDENT}def forward(self, x: Tensor) -> Tensor:"]
        if classes is not None:
            out.append(f"{i2}return self.classifier(self.features(x))")
        else:
            out.append(f"{i2}return self.features(x)")
        return out

    def write(self) -> str:
        if self.two_way:
            sections = [
                self.conv_norm_act(),
                self.frozen_statistics(),
                self.two_way_width(),
                self.two_way_layer(),
                self.dense_block(),
            ]
            if self.stem_block_used:
                sections.append(self.stem_block())
        else:
            sections = [self.dense_layer(), self.dense_block()]
        if self.transitions:
            sections.append(self.transition())
        if self.down:
            sections.append(self.transition_down())
        if self.up:
            sections += [self.transition_up(), self.features()]
        if any(self.g.nodes[n]["op"] == "global_pool" for n in self.g):
            sections.append(self.global_pool())
        if self.blur_pool_used:
            sections.append(self.blur_pool())
        sections += [self.network(), self.initialise(), self.load_weights()]
        lines = self.header() + self.imports()
        for s in sections:
            lines += ["", "", *s]
        return "\n".join(lines) + "\n"


def _wrap_text(lines: list[str]) -> list[str]:
    """Docstring lines longer than the line width, folded at spaces."""
    out = []
    for line in lines:
        while len(line) > WIDTH and " " in line[:WIDTH]:
            cut = line[:WIDTH].rfind(" ")
            out.append(line[:cut])
            line = line[cut + 1 :]
        out.append(line)
    return out


def python_source(
    g: nx.DiGraph, memory_efficient: bool = False, overrides: list[str] | None = None, tool: str = "dnetc"
) -> str:
    """Standalone PyTorch source of a graph: `DenseNet()` there equals `emit(g)` here, key for key.

    `memory_efficient` sets the default of the network's flag that checkpoints each dense layer's
    first stage (concat-BN-ReLU-conv); `overrides` are recorded in the header.
    """
    if _tree_only(g):
        if memory_efficient:
            raise SourceError(
                "memory-efficient standalone source for blocks of the spec's own layers or connectivity "
                "(they run naive: write it without --memory)"
            )
        from .source_tree import tree_source  # it copies compiler/modules.py's classes: torch is needed

        return tree_source(g, _header(g, list(overrides or []), tool))
    return _Writer(g, memory_efficient, list(overrides or []), tool).write()


def _tree_only(g: nx.DiGraph) -> bool:
    """Whether the network uses the spec's own layers or connectivities, exits or a grid of scales, which
    only the tree writer writes."""
    kinds = {c["kind"] for c in g.graph["containers"].values()}
    own = {"composite", "layer", "branches", "scales"}
    return bool(kinds & own) or bool(g.graph["exits"]) or any(u.get("general") for u in g.graph["units"].values())
