"""Bind calls: a call's arguments to its operation's pydantic fields (positional, by name, validated),
a network's or layer's parameters to their values, and the diagnostics that explain a value that does not
fit, traced back through the `let`s to the parameters that would fix it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from . import ast, spec
from .errors import DnetError, did_you_mean
from .evaluate import Scope, evaluate, kind_of, render, show


def bind_parameters(
    parameters: tuple[ast.Parameter, ...],
    given: dict[str, Any],
    scope: Scope,
    missing: Callable[[ast.Parameter], DnetError],
) -> None:
    """Each parameter of a network or layer its given value, else its default (which may use the ones
    before it); a parameter declared twice, or with neither, is an error."""
    for p in parameters:
        if p.name in scope.values:
            raise DnetError(f"parameter `{p.name}` is declared twice", p.span)
        if p.name in given:
            scope.values[p.name] = given[p.name]
        elif p.default is not None:
            scope.values[p.name] = evaluate(p.default, scope)
        else:
            raise missing(p)
        scope.where[p.name] = p.span


# ---- explaining a value that is not what a field needs -------------------------------------


def _depends_on(e: ast.Expr, scope: Scope, seen: set[str] | None = None) -> list[str]:
    """The integer parameters an expression depends on, through its `let`s."""
    seen = set() if seen is None else seen
    out: list[str] = []
    stack: list[ast.Expr] = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, ast.Name) and x.id not in seen:
            seen.add(x.id)
            if x.id in scope.lets:
                stack.append(scope.lets[x.id])
            elif x.id in scope.parameters and isinstance(scope.values.get(x.id), int):
                out.append(x.id)
        elif isinstance(x, ast.BinOp):
            stack += [x.left, x.right]
        elif isinstance(x, ast.Unary):
            stack.append(x.operand)
        elif isinstance(x, ast.ListExpr | ast.Function):
            stack += list(x.items if isinstance(x, ast.ListExpr) else x.args)
        elif isinstance(x, ast.Index):
            stack += [x.target, x.index]
        elif isinstance(x, ast.IfElse):
            stack += [x.then, x.condition, x.otherwise]
    return out


def _evaluate_with(e: ast.Expr, scope: Scope, changed: dict[str, Any]) -> Any:
    """Re-evaluate `e` as if some parameters had other values, recomputing the `let`s between."""

    def lookup(n: ast.Name) -> Any:
        if n.id in changed:
            return changed[n.id]
        if n.id in scope.lets:
            return evaluate(scope.lets[n.id], scope, lookup)
        return scope.values[n.id]

    return evaluate(e, scope, lookup)


def explain_non_integer(e: ast.Expr, scope: Scope) -> tuple[list[str], str | None]:
    """Notes that trace a non-integer back to the parameters, and values of them that would work."""
    notes: list[str] = []
    x = e
    while isinstance(x, ast.Name) and x.id in scope.lets:
        definition = scope.lets[x.id]
        value = scope.values.get(x.id)
        steps = [render(definition), render(definition, lambda n: scope.values.get(n))]
        chain = " = ".join(dict.fromkeys(steps))
        notes.append(f"`{x.id}` = {chain} = {show(value)} (line {scope.where[x.id].line})")
        x = definition
    fixes = []
    for name in _depends_on(e, scope):
        now = scope.values[name]
        found = []
        for direction in (-1, 1):
            for step in range(1, 61):
                candidate = now + direction * step
                if candidate <= 0:
                    break
                try:
                    v = _evaluate_with(e, scope, {name: candidate})
                except DnetError:
                    continue
                if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and v > 0):
                    found.append(candidate)
                    break
        if found:
            fixes.append(" or ".join(f"{name} = {c}" for c in found))
    help = f"{'; '.join(fixes)} would give an integer" if fixes else None
    return notes, help


# ---- calls ---------------------------------------------------------------------------------


def bind_call(
    call: ast.Call,
    ops: dict[str, type[spec.Node]],
    scope: Scope,
    where: str,
    deferred: dict[str, tuple[Any, ast.Argument]] | None = None,
) -> spec.Node:
    """Evaluate a call's arguments against the pydantic model of its operation and validate. Arguments
    that take a user-defined layer (the model's `layer_fields`) go to `deferred`, for the caller to expand."""
    model = ops.get(call.op)
    if model is None:
        elsewhere = _where_allowed(call.op)
        raise DnetError(
            f"unknown operation `{call.op}` in {where}" if not elsewhere else f"`{call.op}` is not allowed in {where}",
            call.op_span,
            help=(
                f"`{call.op}` belongs in {elsewhere}"
                + (
                    f", or in a layer of your own that the body calls: `layer pool {{ {call.op}(...) }}`"
                    if call.op in spec.LAYER_OPS and ops is spec.BODY_OPS
                    else ""
                )
                if elsewhere
                else None
            )
            or did_you_mean(call.op, ops)
            or "here you can use " + ", ".join(f"`{o}`" for o in ops),
        )
    fields = model.argument_names()
    values: dict[str, Any] = {}
    exprs: dict[str, ast.Argument] = {}
    keyword_seen = False
    for i, arg in enumerate(call.args):
        name = arg.name
        if name is None and keyword_seen:
            # `dense(layers, growth, bottleneck = 4, dropout)`: a bare name after keywords names its field
            if isinstance(arg.value, ast.Name) and arg.value.id in fields:
                name = arg.value.id
            else:
                raise DnetError(
                    "a positional argument cannot follow a keyword argument",
                    arg.span,
                    help=f"write it as `name = {render(arg.value)}`",
                )
        if name is None:
            positional = model.positional_names()
            if i >= len(positional):
                named = [f for f in fields if f not in positional]
                raise DnetError(
                    f"`{call.op}` takes at most {len(positional)} argument{'s' if len(positional) != 1 else ''}"
                    + (f" ({', '.join(positional)})" if positional else ""),
                    arg.span,
                    label="one too many",
                    help=f"{', '.join(f'`{f}`' for f in named)} {'is' if len(named) == 1 else 'are'} given by name: "
                    f"`{named[0]} = {render(arg.value)}`"
                    if named
                    else None,
                )
            name = positional[i]
        else:
            keyword_seen = True
            if name not in fields:
                raise DnetError(
                    f"`{call.op}` has no argument `{name}`",
                    arg.name_span or arg.span,
                    help=did_you_mean(name, fields)
                    or (f"its arguments are {', '.join(f'`{f}`' for f in fields)}" if fields else None),
                )
        if name in values:
            raise DnetError(f"argument `{name}` of `{call.op}` is given twice", arg.span)
        values[name] = evaluate(arg.value, scope)
        exprs[name] = arg
    for name in model.layer_fields:
        if name in values:
            value, arg = values.pop(name), exprs.pop(name)
            if deferred is None:
                raise DnetError(f"`{name}` of `{call.op}` cannot take a layer here", arg.span)
            deferred[name] = (value, arg)
    return validate(model, values, exprs, call, scope)


def validate(
    model: type[spec.Node], values: dict[str, Any], exprs: dict[str, ast.Argument], call: ast.Call, scope: Scope
) -> spec.Node:
    try:
        return model.model_validate({**values, "span": call.span})
    except ValidationError as err:
        raise field_error(err, model, values, exprs, call, scope) from None


def field_error(
    err: ValidationError,
    model: type[spec.Node],
    values: dict[str, Any],
    exprs: dict[str, ast.Argument],
    call: ast.Call,
    scope: Scope,
) -> DnetError:
    """Turn pydantic's first complaint into a diagnostic at the argument that caused it."""
    first = err.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    info = model.model_fields.get(name)
    described = info.description if info and info.description else None
    arg = exprs.get(name)
    if first["type"] == "missing":
        return DnetError(
            f"`{call.op}` needs `{name}`" + (f": {described}" if described else ""),
            call.span,
            label=f"`{name}` missing",
            help=f"add it: {call.op}({', '.join(model.argument_names()[: model.argument_names().index(name) + 1])})",
        )
    value = values.get(name)
    span = arg.value.span if arg else call.span
    text = render(arg.value) if arg else name
    if info is not None and info.annotation is spec.Ref:
        hint = f"pick one: `{text}[-1]` is the last kept" if isinstance(value, list) else described
        return DnetError(
            f"`{name}` of `{call.op}` must be feature maps kept with `keep`, but `{text}` is {kind_of(value)}",
            span,
            help=hint,
        )
    if first["type"] == "int_from_float":
        notes, fix = explain_non_integer(arg.value, scope) if arg else ([], None)
        return DnetError(
            f"`{name}` of `{call.op}` must be an integer, but `{text}` is {show(value)}",
            span,
            label="not an integer",
            notes=notes,
            help=fix or described,
        )
    shown = f"`{text}` = {show(value)}" if text != show(value) else f"`{text}`"
    reason = first["msg"][0].lower() + first["msg"][1:]
    reason = reason.replace("input should", "it should")
    return DnetError(f"invalid `{name}` for `{call.op}`: {shown}; {reason}", span, help=described)


def _where_allowed(op: str) -> str | None:
    places = [
        place
        for place, ops in (
            ("a `stem { }`", spec.STEM_OPS),
            ("the network body", spec.BODY_OPS),
            ("a `head { }`", spec.HEAD_OPS),
        )
        if op in ops
    ]
    return " or ".join(places) if places else None
