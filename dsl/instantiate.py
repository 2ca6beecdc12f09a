"""Instantiate a network: bind its parameters, run its body, and produce a `spec.Network`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import ast, spec
from .calls import bind_call, bind_parameters
from .errors import DnetError, Span, did_you_mean
from .evaluate import CHOICES, Scope, evaluate, kind_of, plain, render, show
from .layers import call_value, expand, is_layer, layer_argument, layers_of

MAX_ALIAS_DEPTH = 50


@dataclass(frozen=True)
class Override:
    """A parameter value given from outside the spec: `--set NAME=VALUE` or a keyword argument."""

    value: Any
    span: Span
    source: str


@dataclass(frozen=True)
class Definition:
    """A network definition and the names visible from the file that holds it."""

    node: ast.NetworkDef | ast.NetworkAlias | ast.LayerDef
    module: ast.Module
    scope: dict[str, Definition]


def instantiate(defn: Definition, overrides: dict[str, Override]) -> spec.Network:
    """Resolve aliases down to a written-out network, then evaluate it with the bindings."""
    chain = [defn]
    bindings: dict[str, tuple[Any, Span]] = {}
    while isinstance(chain[-1].node, ast.NetworkAlias):
        alias = chain[-1]
        node = alias.node
        family = alias.scope.get(node.family)
        if family is None:
            raise DnetError(
                f"unknown network `{node.family}`",
                node.family_span,
                help=did_you_mean(node.family, alias.scope)
                or f'import it first: use {node.family} from "{node.family}.dnet"',
            )
        if isinstance(family.node, ast.LayerDef):
            raise DnetError(
                f"`{node.family}` is a layer, not a network",
                node.family_span,
                help=f"a network uses a layer in its body: `{node.family}(...)` or `dense(..., layer = {node.family})`",
            )
        if len(chain) > MAX_ALIAS_DEPTH or family in chain:
            raise DnetError(f"network `{node.name}` is defined in terms of itself", node.family_span)
        target_params = _parameter_names(family)
        for arg in node.args:
            if arg.name is None:
                raise DnetError(
                    "a family's parameters are bound by name",
                    arg.span,
                    help=f"write `{target_params[0] if target_params else 'name'} = {render(arg.value)}`",
                )
            if arg.name not in target_params:
                raise DnetError(
                    f"network `{node.family}` has no parameter `{arg.name}`",
                    arg.name_span or arg.span,
                    help=did_you_mean(arg.name, target_params)
                    or f"its parameters are {', '.join(f'`{p}`' for p in target_params)}",
                )
            # an outer alias's binding wins over an inner one's
            bindings.setdefault(arg.name, (evaluate(arg.value, Scope(layers=layers_of(alias))), arg.span))
        chain.append(family)
    base = chain[-1]
    assert isinstance(base.node, ast.NetworkDef)
    params = [p.name for p in base.node.parameters]
    for name, o in overrides.items():
        if name not in params:
            raise DnetError(
                f"network `{defn.node.name}` has no parameter `{name}`",
                o.span,
                source=o.source,
                help=did_you_mean(name, params)
                or ("its parameters are " + ", ".join(f"`{p}`" for p in params) if params else "it has no parameters"),
            )
        bindings[name] = (o.value, o.span)
    return _run(defn.node.name, base.node, defn.module.file, bindings, layers_of(base))


def _parameter_names(defn: Definition) -> list[str]:
    seen = set()
    while isinstance(defn.node, ast.NetworkAlias) and id(defn) not in seen:
        seen.add(id(defn))
        nxt = defn.scope.get(defn.node.family)
        if nxt is None or isinstance(nxt.node, ast.LayerDef):
            return []
        defn = nxt
    return [p.name for p in defn.node.parameters] if isinstance(defn.node, ast.NetworkDef) else []


class _Body:
    """Walks a network body in order, collecting its parts."""

    def __init__(self, name: str, node: ast.NetworkDef) -> None:
        self.name = name
        self.node = node
        self.input: spec.Input | None = None
        self.parts: list[spec.Stem | spec.DenseBlock | spec.Transition | spec.Head] = []
        self.layers = 0
        self.memory: str | None = None
        self.memory_span: Span | None = None
        self.settings: dict[str, str] = {}
        self.where: dict[str, Span] = {}

    def run(self, body: tuple[ast.Statement, ...], scope: Scope) -> None:
        for stmt in body:
            self.statement(stmt, scope)

    def statement(self, stmt: ast.Statement, scope: Scope) -> None:
        if isinstance(stmt, ast.Input):
            self.take_input(stmt, scope)
        elif isinstance(stmt, ast.Let):
            if stmt.name in scope.values and stmt.name not in scope.lets:
                raise DnetError(
                    f"`{stmt.name}` is already a parameter of `{self.node.name}`",
                    stmt.name_span,
                    help="choose another name for the `let`",
                )
            if stmt.name in scope.lets and scope.where[stmt.name] != stmt.span:
                first = scope.where[stmt.name]
                raise DnetError(
                    f"`{stmt.name}` is defined twice",
                    stmt.name_span,
                    notes=[f"first defined at line {first.line}"],
                )
            scope.values[stmt.name] = evaluate(stmt.value, scope)
            scope.lets[stmt.name] = stmt.value
            scope.where[stmt.name] = stmt.span
        elif isinstance(stmt, ast.Memory):
            if self.memory is not None:
                raise DnetError("`memory` is set twice", stmt.span)
            self.memory, self.memory_span = stmt.lowering, stmt.value_span  # the compiler checks the name
        elif isinstance(stmt, ast.Setting):
            self.setting(stmt, scope)
        elif isinstance(stmt, ast.Keep):
            if stmt.name in scope.values:
                raise DnetError(
                    f"`{stmt.name}` already names a value; kept feature maps need a name of their own",
                    stmt.name_span,
                    help=f"keep them as `{stmt.name}_maps` or another unused name",
                )
            kept = scope.kept.setdefault(stmt.name, [])
            kept.append(spec.Ref(name=stmt.name, index=len(kept)))
            self.add(spec.Keep(name=stmt.name, span=stmt.span))
        elif isinstance(stmt, ast.Section):
            ops = spec.STEM_OPS if stmt.kind == "stem" else spec.HEAD_PART_OPS
            calls = [
                expand(call_value(c, scope)) if is_layer(c, scope) else bind_call(c, ops, scope, f"a `{stmt.kind}`")
                for c in stmt.calls
            ]
            if stmt.kind != "stem":
                self.classifier_last(stmt, calls)
            model = {"stem": spec.Stem, "head": spec.Head, "exit": spec.Exit}[stmt.kind]
            self.add(model(ops=calls, span=stmt.span))
        elif isinstance(stmt, ast.Repeat):
            self.repeat(stmt, scope)
        else:
            self.add(self.body_call(stmt, scope))

    @staticmethod
    def classifier_last(stmt: ast.Section, ops: list[spec.Node]) -> None:
        """A head or an exit ends in one classifier, after the operations that lead to it."""
        at = [i for i, op in enumerate(ops) if op.kind in spec.HEAD_OPS]
        example = f"{stmt.kind} {{ conv(3, 128, stride = 2) norm relu classifier(classes) }}"
        if not at:
            raise DnetError(
                f"a `{stmt.kind}` ends in a classifier, and this one has none",
                stmt.span,
                help=f"end it with one of {', '.join(f'`{k}`' for k in spec.HEAD_OPS)}: `{example}`",
            )
        if len(at) > 1 or at[0] != len(ops) - 1:
            where = stmt.calls[at[0] if at[0] != len(ops) - 1 else at[1]].span
            raise DnetError(
                f"a `{stmt.kind}` has one classifier, at its end",
                where,
                help="put the operations that lead to it first"
                if len(at) == 1
                else f"a network with several classifiers writes the early ones as `exit`s: `{example}`",
            )

    def body_call(self, call: ast.Call, scope: Scope) -> spec.Node:
        """An operation of the body, or a user-defined layer called there (a transition of one's own)."""
        if is_layer(call, scope):
            return expand(call_value(call, scope))
        deferred: dict[str, tuple[Any, ast.Argument]] = {}
        node = bind_call(call, spec.BODY_OPS, scope, "the network body", deferred)
        if "layer" in deferred:  # the built-in layer's settings mean nothing to a layer of one's own
            names = spec.DenseBlock.positional_names()
            for i, arg in enumerate(call.args):
                name = arg.name or (names[i] if i < len(names) else None)
                if name in ("bottleneck", "dropout", "bias"):
                    raise DnetError(
                        f"`{name}` shapes the built-in dense layer, and this block's layer is `layer = ...`",
                        arg.span,
                        help=f"give the layer its own {name}: in its definition or as its argument",
                    )
        return self.dense_layers(node, deferred) if deferred else node

    @staticmethod
    def dense_layers(node: spec.Node, deferred: dict[str, tuple[Any, ast.Argument]]) -> spec.Node:
        """`dense(..., layer = L, fuse = F)`: each layer's H_l expanded, `growth` bound to its width
        where L leaves it unset (the block's growth rate, or HarDNet's widths)."""
        assert isinstance(node, spec.DenseBlock)
        update: dict[str, Any] = {}
        if "layer" in deferred:
            value, arg = deferred["layer"]
            given = value if isinstance(value, list) else [value]
            layers = [layer_argument(v, "layer", arg.value.span, arg.value) for v in given]
            if len(layers) not in (1, node.layers):
                raise DnetError(
                    f"a list of layers gives one per layer: {node.layers}, not {len(layers)}",
                    arg.value.span,
                    help="pass one layer for all, or a list as long as the block",
                )
            if node.two_way:
                raise DnetError("a block takes `two_way` or a `layer`, not both", arg.span)
            made: dict[tuple[int, int], spec.Composite] = {}
            out = []
            for i in range(1, node.layers + 1):
                which = 0 if len(layers) == 1 else i - 1
                width = node.connect.width(i, node.growth)
                if (which, width) not in made:
                    made[which, width] = expand(layers[which], {"growth": width})
                out.append(made[which, width])
            update["layer"] = out
        for name in ("fuse", "entry"):
            if name in deferred:
                value, arg = deferred[name]
                update[name] = expand(layer_argument(value, name, arg.value.span, arg.value))
        return node.model_copy(update=update)

    def setting(self, stmt: ast.Setting, scope: Scope) -> None:
        """`normalization X` or `activation X`, once a network, checked against the choices."""
        if stmt.what in self.settings:
            first = self.where[stmt.what]
            raise DnetError(f"`{stmt.what}` is set twice", stmt.span, notes=[f"first set at line {first.line}"])
        e = stmt.value
        unknown = isinstance(e, ast.Name) and e.id not in scope.values and e.id not in CHOICES
        value = e.id if unknown else evaluate(e, scope)  # a misspelled choice is named as one
        if stmt.what == "activation":
            choices = list(spec.ACTIVATIONS)
            valid = value in spec.ACTIVATIONS
        else:
            choices = [*spec.NORMALIZATIONS, "group(G)"]
            valid = isinstance(value, str) and re.match(spec.NORMALIZATION_PATTERN, value) is not None
        if not valid:
            shown = (
                render(stmt.value) if render(stmt.value) == show(value) else f"{render(stmt.value)}` = `{show(value)}"
            )
            raise DnetError(
                f"`{shown}` is not {'an activation' if stmt.what == 'activation' else 'a normalization'}",
                stmt.value.span,
                help=(did_you_mean(show(value), [*choices, *scope.values]) if isinstance(value, str) else None)
                or "choose " + ", ".join(f"`{c}`" for c in choices),
            )
        self.settings[stmt.what] = value
        self.where[stmt.what] = stmt.span

    def take_input(self, stmt: ast.Input, scope: Scope) -> None:
        if self.input is not None:
            first = self.input.span.line if self.input.span else "?"
            raise DnetError("a network has one `input`", stmt.span, notes=[f"the first is at line {first}"])
        values: list[int] = []
        for i, d in enumerate(stmt.dims):
            value = evaluate(d, scope)
            # a size such as 96x96x96 (or a list) after the channels stands for one size per dimension
            items = list(value) if i > 0 and isinstance(value, tuple | list) else [value]
            for v in items:
                what, limit = ("channels", spec.MAX_CHANNELS) if not values else ("an input size", spec.MAX_SIZE)
                if (
                    isinstance(v, bool)
                    or not isinstance(v, int | float)
                    or (isinstance(v, float) and not v.is_integer())
                ):
                    raise DnetError(f"{what} must be an integer, but `{render(d)}` is {show(value)}", d.span)
                if not 1 <= v <= limit:
                    raise DnetError(
                        f"{what} must be at least 1 and at most {limit}, but `{render(d)}` is {show(value)}", d.span
                    )
                values.append(int(v))
        if len(values) < 2:
            raise DnetError(
                "`input` needs channels and at least one spatial size",
                stmt.span,
                help="write channels x sizes, e.g. `input 3 x 32 x 32` (2D) or `input 1 x 4096` (1D)",
            )
        if len(values) - 1 > spec.MAX_SPATIAL_DIMS:
            raise DnetError(
                f"an input has 1, 2 or 3 spatial dimensions, not {len(values) - 1}",
                stmt.span,
                help="write channels x sizes, e.g. `input 3 x 224 x 224`",
            )
        self.input = spec.Input(channels=values[0], size=tuple(values[1:]), span=stmt.span)

    def repeat(self, stmt: ast.Repeat, scope: Scope) -> None:
        if stmt.count is not None:
            n = evaluate(stmt.count, scope)
            if isinstance(n, bool) or not isinstance(n, int | float) or (isinstance(n, float) and not n.is_integer()):
                raise DnetError(f"`repeat` needs an integer, but `{render(stmt.count)}` is {show(n)}", stmt.count.span)
            if not 0 <= n <= spec.MAX_REPEAT:
                raise DnetError(f"`repeat {show(n)}`: the count must be 0 to {spec.MAX_REPEAT}", stmt.count.span)
            items: list[Any] = list(range(int(n)))
        else:
            assert stmt.iterable is not None
            items = evaluate(stmt.iterable, scope)
            if not isinstance(items, list):
                raise DnetError(
                    f"`for` needs a list, but `{render(stmt.iterable)}` is {kind_of(items)} ({show(items)})",
                    stmt.iterable.span,
                    help=f"write a list such as [{show(items)}, ...]" if isinstance(items, int) else None,
                )
        for i, item in enumerate(items):
            if i and stmt.separator is not None:
                self.add(self.body_call(stmt.separator, scope))
            inner = scope.child()
            if stmt.var is not None:
                inner.values[stmt.var] = item
            self.run(stmt.body, inner)

    def add(self, part: spec.Stem | spec.DenseBlock | spec.Transition | spec.Head) -> None:
        if self.parts and isinstance(self.parts[-1], spec.Head):
            raise DnetError(
                "nothing may follow the `head`", part.span, notes=[f"the head is at line {self.parts[-1].span.line}"]
            )
        if isinstance(part, spec.Stem) and self.parts:
            first = self.parts[0]
            if isinstance(first, spec.Stem):
                raise DnetError(
                    "a network has one `stem`", part.span, notes=[f"the first is at line {first.span.line}"]
                )
            raise DnetError("the `stem` must come before the dense blocks", part.span)
        if isinstance(part, spec.DenseBlock):
            self.layers += part.layers
            if self.layers > spec.MAX_TOTAL_LAYERS:
                raise DnetError(
                    f"the network has over {spec.MAX_TOTAL_LAYERS} dense layers, more than dnetc builds",
                    part.span,
                )
        self.parts.append(part)


def _run(
    name: str, node: ast.NetworkDef, file: str, bindings: dict[str, tuple[Any, Span]], layers: dict[str, Any]
) -> spec.Network:
    scope = Scope(parameters={p.name for p in node.parameters}, layers=layers)
    bind_parameters(
        node.parameters,
        {k: v for k, (v, _) in bindings.items()},
        scope,
        lambda p: DnetError(
            f"network `{name}` needs a value for its parameter `{p.name}`",
            p.span,
            help=f"give one with `--set {p.name}=VALUE`, or a default: `{p.name} = VALUE`",
        ),
    )
    body = _Body(name, node)
    body.run(node.body, scope)
    if body.input is None:
        raise DnetError(
            f"network `{node.name}` has no `input`",
            node.name_span,
            help="say what it takes, e.g. `input 3 x 32 x 32` as its first statement",
        )
    params = {p.name: plain(scope.values[p.name]) for p in node.parameters}
    return spec.Network(
        name=name,
        file=file,
        parameters=params,
        input=body.input,
        parts=body.parts,
        memory=body.memory,
        memory_span=body.memory_span,
        span=node.span,
        **body.settings,
    )
