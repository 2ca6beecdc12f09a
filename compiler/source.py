"""Standalone PyTorch source of a network: one file that needs only torch, its builder equal to the
compiled module key for key.

Each building block is defined once: the file copies dnetc's own classes and functions (from
compiler/modules.py, the checkpoint lowering from compiler/memory.py, the weights loader from
runtime/checkpoint.py) with the definitions and imports they use. The network is the tree of modules
the emitter makes, written out; a run of layers that differ only in their widths becomes a loop. The
lines are laid out as ruff formats them, at the project's line length.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import textwrap
from graphlib import TopologicalSorter
from pathlib import Path

import networkx as nx

from dnetc.dsl import zoo_dir
from dnetc.dsl.evaluate import literal

WIDTH = 120  # the copied definitions keep this project's layout (ruff, line length 120)
INDENT = "    "

# Where the copied definitions come from, in the order they are searched for a name.
ORIGINS = ("dnetc.compiler.modules", "dnetc.compiler.memory", "dnetc.runtime.checkpoint")


class SourceError(Exception):
    """A network that the standalone source does not express: says which construct."""


def _call(indent: str, head: str, args: list[str], tail: str = ")", literal: bool = False) -> list[str]:
    """`head(args)` at `indent`, wrapped as ruff wraps a call that does not fit on one line (a list or
    dict `literal` that does not fit gets a line an element)."""
    one = f"{indent}{head}{', '.join(args)}{tail}"
    if len(one) <= WIDTH or not args:
        return [one]
    inner = indent + INDENT + ", ".join(args)
    if len(inner) <= WIDTH and not literal:
        return [f"{indent}{head}", inner, f"{indent}{tail}"]
    return [f"{indent}{head}", *(f"{indent}{INDENT}{a}," for a in args), f"{indent}{tail}"]


# ---- copying definitions with what they use


class _Copier:
    """Definitions copied from the ORIGINS modules with every definition and import their code names."""

    def __init__(self) -> None:
        self.origins = [importlib.import_module(name) for name in ORIGINS]
        self.trees = {m.__name__: ast.parse(inspect.getsource(m)) for m in self.origins}
        self.needed: dict[tuple[str, str], ast.stmt] = {}  # (module, name) -> its definition
        self.imports: set[tuple[str, str | None, str]] = set()  # (module, name or None, bound as)
        self.after: dict[str, set[str]] = {}  # module -> the modules its copied definitions need
        self.tops: dict[str, tuple[dict[str, ast.stmt], dict[str, list[ast.stmt]]]] = {}

    def _top(self, module: str) -> tuple[dict[str, ast.stmt], dict[str, list[ast.stmt]]]:
        """A module's top-level definitions and imports, by the name each binds (read once a module)."""
        if module not in self.tops:
            self.tops[module] = self._read_top(module)
        return self.tops[module]

    def _read_top(self, module: str) -> tuple[dict[str, ast.stmt], dict[str, list[ast.stmt]]]:
        definitions, imports = {}, {}
        for node in self.trees[module].body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                definitions[node.name] = node
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                definitions[node.targets[0].id] = node
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    imports.setdefault(alias.asname or alias.name.split(".")[0], []).append(node)
        return definitions, imports

    def use(self, code: ast.AST, module: str) -> None:
        """Copy what `code`, as if written in `module`, names."""
        definitions, imports = self._top(module)
        for name in sorted({n.id for n in ast.walk(code) if isinstance(n, ast.Name)}):
            if name in definitions:
                self.need(module, name, definitions[name])
            for node in imports.get(name, []) if name not in definitions else []:
                self._import(module, name, node)

    def need(self, module: str, name: str, node: ast.stmt) -> None:
        if (module, name) in self.needed:
            return
        self.needed[module, name] = node
        self.after.setdefault(module, set())
        self.use(node, module)

    def _import(self, module: str, name: str, node: ast.Import | ast.ImportFrom) -> None:
        alias = next(a for a in node.names if (a.asname or a.name.split(".")[0]) == name)
        if isinstance(node, ast.Import):
            self.imports.add((alias.name, None, alias.asname or alias.name))
            return
        if node.level:  # one of the project's own: copied too
            package = module.rsplit(".", node.level)[0]
            origin = f"{package}.{node.module}" if node.module else package
            self.after.setdefault(module, set()).add(origin)
            self.need(origin, alias.name, self._top(origin)[0][alias.name])
            return
        if node.module != "__future__":
            self.imports.add((node.module, alias.name, alias.asname or alias.name))

    def copy(self, name: str) -> None:
        """Copy the definition of `name` in the first origin module that has one."""
        module = next(m for m in ORIGINS if name in self._top(m)[0])
        self.need(module, name, self._top(module)[0][name])

    def import_lines(self) -> list[str]:
        """The imports, grouped and sorted as ruff's isort rules want them."""
        stdlib = sys.stdlib_module_names
        groups: list[list[str]] = [["from __future__ import annotations"], [], []]
        plain = sorted((m, bound) for m, name, bound in self.imports if name is None)
        froms: dict[str, list[str]] = {}
        for m, name, bound in self.imports:
            if name is not None:
                froms.setdefault(m, []).append(name if bound == name else f"{name} as {bound}")
        for m, bound in plain:
            line = f"import {m}" if bound == m else f"import {m} as {bound}"
            groups[1 if m.split(".")[0] in stdlib else 2].append(line)
        for m in sorted(froms):
            names = ", ".join(sorted(froms[m], key=_isort_key))
            groups[1 if m.split(".")[0] in stdlib else 2].append(f"from {m} import {names}")
        out: list[str] = []
        for group in groups:
            if group:
                out += [*([""] if out else []), *group]
        return out

    def definition_lines(self) -> list[str]:
        """Each copied definition as written, its decorators too, the modules in the order they need."""
        order = list(TopologicalSorter(self.after).static_order())
        out: list[str] = []
        for module in order:
            lines = inspect.getsource(importlib.import_module(module)).splitlines()
            names = {name for (m, name) in self.needed if m == module}
            nodes = [node for (m, _), node in self.needed.items() if m == module]
            # and the statements that register a copied definition: `torch.fx.wrap("centre_crop")`
            nodes += [
                node
                for node in self.trees[module].body
                if isinstance(node, ast.Expr)
                and any(isinstance(c, ast.Constant) and c.value in names for c in ast.walk(node))
            ]
            for node in sorted(nodes, key=lambda n: n.lineno):
                first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
                out += ["", "", *lines[first - 1 : node.end_lineno]]
        return out


def _isort_key(name: str) -> tuple[int, str]:
    """isort's order of the names in one `from` import: constants, then classes, then the rest."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


# ---- runs of layers as loops

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![\w.])(?<![eE][-+])\d+(?![\w.])')
_NUMBERED = re.compile(r"(.*?)(\d+)")


def _template(lines: list[str]) -> tuple[str, list[int]]:
    """The lines with each integer outside a string a hole, and the integers."""
    numbers: list[int] = []

    def hole(match: re.Match) -> str:
        if match.group().startswith('"'):
            return match.group()
        numbers.append(int(match.group()))
        return "\0"

    return _TOKEN.sub(hole, "\n".join(lines)), numbers


def _progression(first: int, step: int, var: str, before: str) -> str:
    """`first + step * var`, shortened, and bracketed where an operator binds it."""
    if step == 0:
        return str(first)
    term = var if step == 1 else f"{step} * {var}" if step > 0 else None
    if term is None:
        text = f"{first} - {-step} * {var}" if step != -1 else f"{first} - {var}"
    else:
        text = term if first == 0 else f"{first} + {term}"
    return f"({text})" if before.rstrip()[-1:] in ("-", "*", "/", "%") and " " in text else text


# ---- the writer

# The settings the emitter gives dnetc's containers, written where they differ from the class's own.
SETTINGS = {
    "DenseBlock": ("concat_input", "links", "outputs", "bypass", "residual", "dual"),
    "Branches": ("join",),
    "Features": ("keeps", "joins", "taps"),
}
# torch modules: the constructor's arguments, read back from the module
TORCH_ARGUMENTS = {
    "Conv": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"),
    "ConvTranspose": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "bias"),
    "BatchNorm": ("num_features",),
    "InstanceNorm": ("num_features", "affine"),
    "GroupNorm": ("num_groups", "num_channels"),
    "ReLU": ("inplace",),
    "ReLU6": ("inplace",),
    "PReLU": ("num_parameters",),
    "SiLU": (),
    "GELU": (),
    "Dropout": ("p",),
    "MaxPool": ("kernel_size", "stride", "padding", "ceil_mode"),
    "AvgPool": ("kernel_size", "stride", "padding", "ceil_mode"),
    "ChannelShuffle": ("groups",),
    "Linear": ("in_features", "out_features"),
    "Sequential": (),
    "ModuleList": (),
}


def _value(v: object) -> str:
    if isinstance(v, tuple) and len(set(v)) == 1:
        return repr(v[0])
    return repr(v)


def _constructor(m: object) -> tuple[str, list[str]]:
    """`nn.Conv2d`, `["8", "16", "kernel_size=3", "padding=1", "bias=False"]` for a module of torch's:
    its arguments read back, those equal to the constructor's defaults left out."""
    name = type(m).__name__
    family = re.sub(r"[123]d$", "", name)
    if type(m).__module__.split(".")[0] != "torch" or family not in TORCH_ARGUMENTS:
        raise SourceError(f"no standalone source for {name}")
    defaults = inspect.signature(type(m)).parameters
    args = []
    for arg in TORCH_ARGUMENTS[family]:
        v = getattr(m, arg)
        if arg == "bias":
            v = v is not None if not isinstance(v, bool) else v
        default = defaults[arg].default
        if default is inspect.Parameter.empty or arg == "p":
            args.append(_value(v))
        elif _value(v) != _value(default):
            args.append(f"{arg}={_value(v)}")
    return f"nn.{name}", args


def _parameters(cls: type) -> list[inspect.Parameter]:
    """The named parameters of the class's own constructor (not torch's containers' `*args` or `modules`)."""
    if "__init__" not in cls.__dict__:
        return []
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p for p in inspect.signature(cls).parameters.values() if p.kind in named]


def _own(m: object) -> list[str]:
    """The constructor arguments of one of dnetc's modules: each kept under its parameter's name."""
    args = []
    for p in _parameters(type(m)):
        v = getattr(m, p.name)
        if p.default is inspect.Parameter.empty:
            args.append(_literal(v))
        elif v != p.default:
            args.append(f"{p.name}={_literal(v)}")
    return args


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


class _Writer:
    """Writes the builder function: `d0 = Features()`, its children at `d1`, theirs at `d2`, ..."""

    def __init__(self, g: nx.DiGraph, memory_efficient: bool) -> None:
        from .emit import emit  # torch is needed from here on

        self.g = g
        self.model = emit(g, "naive")
        self.memory_efficient = memory_efficient
        self.copier = _Copier()
        self.classes = g.nodes["classifier"]["shape"][0] if "classifier" in g else None
        self.classifiers = {id(self.model.classifier)} | {
            id(e.classifier) for e in (self.model.exits or []) if "classifier" in e._modules
        }
        self.dense = any(type(m).__name__ == "DenseBlock" for m in self.model.modules())

    def made(self, m: object) -> tuple[str, list[str]]:
        if type(m).__module__ != "dnetc.compiler.modules":
            head, args = _constructor(m)
            if id(m) in self.classifiers and self.classes is not None and args[1] == str(self.classes):
                args[1] = "classes"
            return head, args
        name = type(m).__name__
        if name == "DenseBlock":
            return "dense_block", []
        return name, _own(m)

    def build(self, m: object, target: str, depth: int, indent: str) -> list[str]:
        """Statements that make `m` at `target` (`d2.denselayer1`), its settings and its children, one
        local name a level (`d1`, `d2`, ...) so that every line stays short."""
        head, args = self.made(m)
        own = type(m).__module__ == "dnetc.compiler.modules"
        makes_its_own = own and bool(_parameters(type(m)))  # its children made by its constructor
        children = [] if makes_its_own else list(m.named_children())
        cls = type(m)
        settings = {
            name: getattr(m, name)
            for name in SETTINGS.get(cls.__name__, ())
            if own
            if getattr(m, name) != getattr(cls, name, None) and getattr(m, name) not in ({}, None)
        }
        if not children and not settings:
            return _call(indent, f"{target} = {head}(", args)
        var = f"d{depth}"
        made_text = f"{head}({', '.join(args)})"
        out = [f"{indent}{var} = {target} = {made_text}" if target != var else f"{indent}{var} = {made_text}"]
        for name, value in settings.items():
            text = _literal(value)
            if isinstance(value, list) and len(f"{indent}{var}.{name} = {text}") > WIDTH:
                out += _call(indent, f"{var}.{name} = [", [_literal(x) for x in value], "]", literal=True)
            elif isinstance(value, dict) and len(f"{indent}{var}.{name} = {text}") > WIDTH:
                entries = [f"{_literal(k)}: {_literal(x)}" for k, x in value.items()]
                out += _call(indent, f"{var}.{name} = {{", entries, "}", literal=True)
            else:
                out.append(f"{indent}{var}.{name} = {text}")
        i = 0
        while i < len(children):
            name, child = children[i]
            run = self.loop(children, i, var, depth, indent)
            if run:
                out += run[0]
                i += run[1]
                continue
            if name.isidentifier():
                out += self.build(child, f"{var}.{name}", depth + 1, indent)
            else:  # a list's entry (`exits.0`): made, then added by name
                out += self.build(child, f"d{depth + 1}", depth + 1, indent)
                out.append(f'{indent}{var}.add_module("{name}", d{depth + 1})')
            i += 1
        return out

    def loop(self, children: list, start: int, var: str, depth: int, indent: str) -> tuple[list[str], int] | None:
        """Children `name{k}`, `name{k+1}`, ... (three or more) whose statements differ only in integers
        that grow by a constant step: one `for` loop."""
        match = _NUMBERED.fullmatch(children[start][0])
        if not match or not match.group(1).isidentifier():
            return None
        prefix, first = match.group(1), int(match.group(2))
        counter = "ijklmn"[depth % 6]
        skeleton, rows = None, []
        for k, (name, child) in enumerate(children[start:]):
            if name != f"{prefix}{first + k}":
                break
            text, numbers = _template(self.build(child, f"d{depth + 1}", depth + 1, indent + INDENT))
            if skeleton is not None and (text != skeleton or not _steady([*rows, numbers])):
                break
            skeleton = text
            rows.append(numbers)
        if len(rows) < 3:
            return None
        pieces = skeleton.split("\0")
        body = pieces[0]
        for p, (a, b) in enumerate(zip(rows[0], rows[1], strict=True)):
            body += _progression(a, b - a, counter, body) + pieces[p + 1]
        label = counter if first == 0 else f"{counter} + {first}"
        lines = [
            f"{indent}for {counter} in range({len(rows)}):",
            *body.split("\n"),
            f'{indent}{INDENT}{var}.add_module(f"{prefix}{{{label}}}", d{depth + 1})',
        ]
        if any(len(line) > WIDTH for line in lines):
            return None
        return lines, len(rows)

    def function(self) -> list[str]:
        model, i1 = self.model, INDENT
        args = []
        if self.classes is not None:
            args.append(f"classes: int = {self.classes}")
        if self.dense:
            args.append(f"memory_efficient: bool = {self.memory_efficient}")
        features = self.build(model.features, "d0", 0, i1)
        if model.classifier is not None:
            classifier = self.build(model.classifier, "classifier", 1, i1)
        else:
            classifier = [f"{i1}classifier = None"]
        head = self.build(model.head, "head", 0, i1)
        exits = self.build(model.exits, "exits", 0, i1) if model.exits is not None else [f"{i1}exits = None"]
        name = self.g.graph["name"]
        doc = f"{name}, as dnetc compiled it: `features`, `head` and `classifier`"
        if self.dense:
            doc += "; `memory_efficient` recomputes each dense layer in the backward pass instead of keeping its inputs"
        doc_lines = textwrap.wrap(f'"""{doc}."""', WIDTH - len(i1), break_long_words=False)
        lines = [
            *_call("", f"def {name}(", args, ") -> DenseNet:"),
            *(i1 + line for line in doc_lines),
        ]
        if self.dense:
            lines.append(f"{i1}dense_block = CheckpointDenseBlock if memory_efficient else DenseBlock")
        lines += [
            *features,
            f"{i1}features = d0",
            *head,
            *classifier,
            *exits,
            f"{i1}model = DenseNet(features, head, classifier, exits)",
            f"{i1}initialise(model)",
            f"{i1}return model",
        ]
        self.copier.use(ast.parse("\n".join(lines)), "dnetc.compiler.modules")
        for name in ("DenseNet", "initialise", "load_weights", *(("CheckpointDenseBlock",) if self.dense else ())):
            self.copier.copy(name)
        return lines


def _steady(rows: list[list[int]]) -> bool:
    """Whether every column of integers grows by one step."""
    if len({len(r) for r in rows}) != 1:
        return False
    if len(rows) < 3:
        return True
    return all(
        all(r[c] - rows[0][c] == k * (rows[1][c] - rows[0][c]) for k, r in enumerate(rows)) for c in range(len(rows[0]))
    )


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


def _header(g: nx.DiGraph, overrides: list[str], tool: str) -> list[str]:
    """The file's docstring: what it is, where it came from, how to load weights into it."""
    net = g.graph["network"]
    shape_in = "x".join(map(str, g.nodes["input"]["shape"]))
    shape_out = "x".join(map(str, g.nodes[g.graph["output"]]["shape"]))
    params = ", ".join(f"{k}={literal(v)}" for k, v in net.parameters.items()) or "none"
    overrides = " ".join(f"--set {o}" for o in overrides) or "none"
    text = [
        f'"""{net.name}: a densely connected network in plain PyTorch, written by {tool}.',
        "",
        f"Spec: {_where(net.file)} (network {net.name})",
        f"Overrides: {overrides}",
        f"Parameters: {params}",
        f"Input {shape_in} -> output {shape_out}; {g.graph['params']:,} parameters, "
        f"{g.graph['macs']:,} multiply-adds per sample.",
        "",
        "Only torch is needed. The state_dict keys are those of dnetc's compiled module, so its checkpoints and "
        "weights load with strict=True:",
        "",
        f"    model = {net.name}()",
        '    model.load_state_dict(load_weights("runs/RUN/checkpoints/best.pt"))',
        '"""',
    ]
    out = []
    for line in text:
        out += textwrap.wrap(line, WIDTH, break_long_words=False) if len(line) > WIDTH else [line]
    return [*out, ""]


def python_source(
    g: nx.DiGraph, memory_efficient: bool = False, overrides: list[str] | None = None, tool: str = "dnetc"
) -> str:
    """Standalone PyTorch source of a graph: `NAME()` there equals `emit(g)` here, key for key.

    `memory_efficient` is the default of the builder's flag that recomputes each dense layer in the
    backward pass (the checkpoint lowering, copied); `overrides` are recorded in the header.
    """
    if not g.graph["name"].isidentifier():
        raise SourceError(f"network name {g.graph['name']!r} is not a Python name")
    writer = _Writer(g, memory_efficient)
    function = writer.function()
    lines = [
        *_header(g, list(overrides or []), tool),
        *writer.copier.import_lines(),
        *writer.copier.definition_lines(),
        "",
        "",
        *function,
    ]
    return "\n".join(lines) + "\n"
