"""Expand user-defined layers: bind a `layer NAME(...) { ... }` to its arguments and evaluate its body
into a `spec.Composite` of the language's operations, nested layers and branches. Nothing runs but
the evaluator's arithmetic; a layer that uses itself is refused.
"""

from __future__ import annotations

from typing import Any

from . import ast, spec
from .calls import bind_call, bind_parameters
from .errors import DnetError, Span, did_you_mean
from .evaluate import LayerValue, Scope, evaluate, kind_of, plain, render, show

MAX_NESTING = 32


def layers_of(definition: Any) -> dict[str, Any]:
    """The layers visible where a definition was written: its file's and those it imports."""
    return {name: d for name, d in definition.scope.items() if isinstance(d.node, ast.LayerDef)}


def is_layer(call: ast.Call, scope: Scope) -> bool:
    """Whether a call names a user-defined layer: one defined or imported, or a parameter holding one."""
    return call.op in scope.layers or isinstance(scope.values.get(call.op), LayerValue)


def call_value(call: ast.Call, scope: Scope) -> LayerValue:
    """A call of a user-defined layer, `name(args)`, as a value (the arguments after any it holds)."""
    held = scope.values.get(call.op)
    base = held if isinstance(held, LayerValue) else LayerValue(call.op, scope.layers[call.op], span=call.span)
    args, keywords = list(base.args), list(base.keywords)
    for a in call.args:
        if a.name is None:
            if len(keywords) > len(base.keywords):
                raise DnetError("a positional argument cannot follow a keyword argument", a.span)
            args.append(evaluate(a.value, scope))
        else:
            keywords.append((a.name, evaluate(a.value, scope)))
    return LayerValue(base.name, base.definition, tuple(args), tuple(keywords), call.span)


def expand(value: LayerValue, extra: dict[str, Any] | None = None, stack: tuple[str, ...] = ()) -> spec.Composite:
    """The layer `value` names, its parameters bound (`extra` fills those the call leaves unset, as a
    dense block gives `growth`), its body evaluated."""
    node: ast.LayerDef = value.definition.node
    if node.name in stack or len(stack) >= MAX_NESTING:
        cycle = " -> ".join([*stack[stack.index(node.name) :], node.name]) if node.name in stack else ""
        raise DnetError(
            f"layer `{node.name}` uses itself" + (f": {cycle}" if cycle else f" (more than {MAX_NESTING} deep)"),
            value.span,
            help="a layer may use other layers, but not itself",
        )
    params = [p.name for p in node.parameters]
    bound: dict[str, Any] = {}
    if len(value.args) > len(params):
        raise DnetError(
            f"layer `{node.name}` takes {len(params)} argument{'s' if len(params) != 1 else ''}"
            + (f" ({', '.join(params)})" if params else "")
            + f", not {len(value.args)}",
            value.span,
            notes=[f"`{node.name}` is defined at {node.span.file}:{node.span.line}"],
        )
    bound.update(zip(params, value.args, strict=False))
    for name, v in value.keywords:
        if name not in params:
            raise DnetError(
                f"layer `{node.name}` has no parameter `{name}`",
                value.span,
                help=did_you_mean(name, params)
                or (f"its parameters are {', '.join(f'`{p}`' for p in params)}" if params else "it has none"),
            )
        if name in bound:
            raise DnetError(f"argument `{name}` of `{node.name}` is given twice", value.span)
        bound[name] = v
    for name, v in (extra or {}).items():
        if name in params and name not in bound:
            bound[name] = v
    scope = Scope(parameters=set(params), layers=layers_of(value.definition))
    bind_parameters(
        node.parameters,
        bound,
        scope,
        lambda p: DnetError(
            f"layer `{node.name}` needs a value for its parameter `{p.name}`",
            value.span,
            help=f"pass it: `{node.name}({p.name} = ...)`, or give the parameter a default",
            notes=[f"`{node.name}` is defined at {node.span.file}:{node.span.line}"],
        ),
    )
    ops = _ops(node.body, scope, (*stack, node.name))
    if not ops:
        raise DnetError(f"layer `{node.name}` has no operations", node.span, help="add some: norm act conv(3, growth)")
    arguments = {p: plain(scope.values[p]) for p in params}
    return spec.Composite(name=node.name, arguments=arguments, ops=ops, span=value.span)


def _ops(body: tuple[ast.Op, ...], scope: Scope, stack: tuple[str, ...]) -> list:
    out: list = []
    for op in body:
        if isinstance(op, ast.Branches):
            if op.join not in spec.JOINS:
                raise DnetError(
                    f"unknown join `{op.join}` for parallel branches",
                    op.join_span,
                    help=did_you_mean(op.join, spec.JOINS) or "join branches with `concat` or `add`",
                )
            branches = [_ops(b, scope.child(), stack) for b in op.branches]
            out.append(spec.Branches(kind=op.join, branches=branches, span=op.span))
        elif is_layer(op, scope):
            out.append(expand(call_value(op, scope), None, stack))
        elif op.op in spec.LAYER_OPS:
            bound = bind_call(op, spec.LAYER_OPS, scope, "a layer")
            if not (isinstance(bound, spec.Dropout) and bound.p == 0):  # a rate of 0 drops nothing: no op
                out.append(bound)
        else:
            raise DnetError(
                f"unknown operation `{op.op}` in a layer",
                op.op_span,
                help=did_you_mean(op.op, [*spec.LAYER_OPS, *spec.JOINS, *scope.layers])
                or "a layer may use "
                + ", ".join(f"`{o}`" for o in [*spec.LAYER_OPS, *spec.JOINS])
                + " and other layers",
            )
    return out


def layer_argument(value: Any, what: str, span: Span | None, expr: ast.Expr | None) -> LayerValue:
    """Check that an argument such as `layer = ...` is a user-defined layer."""
    if isinstance(value, LayerValue):
        return value
    text = render(expr) if expr is not None else show(value)
    raise DnetError(
        f"`{what}` must be a layer defined with `layer NAME(...) {{ ... }}`, but `{text}` is {kind_of(value)}",
        span,
        help="define one, e.g. `layer bottleneck(growth) { norm act conv(1, 4 * growth) norm act conv(3, growth) }`, "
        f"and pass it: `{what} = bottleneck`",
    )
