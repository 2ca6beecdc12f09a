"""Evaluate a network definition: bind parameters, compute expressions, unroll repetition.

The result is a validated `spec.Network`. Nothing here runs Python from a spec: expressions
are interpreted over numbers and lists by the small set of rules below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import ast, spec
from .errors import DnetError, Span, did_you_mean

MAX_INT = 1 << 62
MAX_LIST = 10_000

Value = int | float | bool | None | list | tuple


@dataclass(frozen=True)
class LayerValue:
    """A user-defined layer as a value (`bottleneck_se` or `bottleneck_se(12, width = 2)`): its
    definition and the arguments given so far, expanded where it is used (dsl/layers.py)."""

    name: str
    definition: Any  # the instantiate.Definition of its `layer` statement
    args: tuple[Any, ...] = ()
    keywords: tuple[tuple[str, Any], ...] = ()
    span: Span | None = None


def show(value: Any) -> str:
    """A value as the language writes it."""
    if isinstance(value, str):  # a choice: silu, group(8)
        return value
    if isinstance(value, spec.Connectivity):
        return str(value)
    if isinstance(value, LayerValue):
        given = [show(v) for v in value.args] + [f"{k} = {show(v)}" for k, v in value.keywords]
        return f"{value.name}({', '.join(given)})" if given else value.name
    if isinstance(value, spec.Ref):
        return f"{value.name}[{value.index}]"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return "x".join(show(v) for v in value)
    if isinstance(value, list):
        items = ", ".join(show(v) for v in value[:8])
        return f"[{items}{', ...' if len(value) > 8 else ''}]"
    return str(value)


def plain(value: Any) -> Any:
    """A value as the validated spec records it: layers by their text (`bottleneck_se(width = 2)`)."""
    if isinstance(value, LayerValue):
        return show(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def literal(value: Any) -> str:
    """A value as the language writes it, lists in full: what `--set NAME=VALUE` reads back."""
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return show(value)


def kind_of(value: Any) -> str:
    if isinstance(value, spec.Connectivity):
        return "a connectivity"
    if isinstance(value, LayerValue):
        return "a layer"
    if isinstance(value, spec.Ref):
        return "kept feature maps"
    if isinstance(value, str):
        return "an activation" if value in spec.ACTIVATIONS else "a normalization"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, tuple):
        return "a size"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


_PRECEDENCE = {"or": -2, "and": -1, "==": 0, "!=": 0, "<": 0, "<=": 0, ">": 0, ">=": 0}
_PRECEDENCE |= {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2}
_COMPARE = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def render(e: ast.Expr, subst: Callable[[str], Any] | None = None, outer: float = -10) -> str:
    """An expression as text; with `subst`, names are replaced by their values."""
    if isinstance(e, ast.Num | ast.Dims):
        return e.text
    if isinstance(e, ast.Const):
        return show(e.value)
    if isinstance(e, ast.Name):
        return show(subst(e.id)) if subst else e.id
    if isinstance(e, ast.BinOp):
        p = _PRECEDENCE[e.op]
        text = f"{render(e.left, subst, p)} {e.op} {render(e.right, subst, p + 1)}"
        return f"({text})" if p < outer else text
    if isinstance(e, ast.Unary):
        if e.op == "not":
            text = f"not {render(e.operand, subst, -0.5)}"
            return f"({text})" if outer > -0.5 else text
        return f"{e.op}{render(e.operand, subst, 3)}"
    if isinstance(e, ast.IfElse):
        text = f"{render(e.then, subst, -2)} if {render(e.condition, subst, -2)} else {render(e.otherwise, subst, -3)}"
        return f"({text})" if outer > -3 else text
    if isinstance(e, ast.ListExpr):
        return "[" + ", ".join(render(i, subst) for i in e.items) + "]"
    if isinstance(e, ast.Index):
        return f"{render(e.target, subst, 3)}[{render(e.index, subst)}]"
    if isinstance(e, ast.Function):
        args = [render(a, subst) for a in e.args] + [f"{k.name} = {render(k.value, subst)}" for k in e.keywords]
        return f"{e.name}(" + ", ".join(args) + ")"
    raise TypeError(e)


def _number(v: Any, e: ast.Expr, what: str) -> int | float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DnetError(f"{what} needs a number, but `{render(e)}` is {kind_of(v)} ({show(v)})", e.span)
    return v


def _checked(v: int | float, e: ast.Expr) -> int | float:
    if isinstance(v, float) and not math.isfinite(v):
        raise DnetError(f"`{render(e)}` is not a finite number", e.span, label="overflows here")
    if isinstance(v, int) and abs(v) > MAX_INT:
        raise DnetError(f"`{render(e)}` is too large ({len(str(v))} digits)", e.span, label="too large")
    return v


def _whole(v: Any, e: ast.Expr, what: str) -> int:
    v = _number(v, e, what)
    if isinstance(v, float):
        if not v.is_integer():
            raise DnetError(f"{what} needs an integer, but `{render(e)}` is {show(v)}", e.span)
        return int(v)
    return v


def _range(args: list, f: ast.Function) -> list[int]:
    bounds = [_whole(a, x, "range") for a, x in zip(args, f.args, strict=True)]
    if not 1 <= len(bounds) <= 2:
        raise DnetError("range takes one or two integers: range(n) or range(start, stop)", f.span)
    r = range(*bounds)
    if len(r) > MAX_LIST:
        raise DnetError(f"range of {len(r)} items is too long (at most {MAX_LIST})", f.span)
    return list(r)


def _min_max(pick: Callable) -> Callable[[list, ast.Function], Any]:
    def apply(args: list, f: ast.Function) -> Any:
        values = args[0] if len(args) == 1 and isinstance(args[0], list) else args
        if not values:
            raise DnetError(f"{f.name} of nothing", f.span)
        for v in values:
            _number(v, f, f.name)
        return pick(values)

    return apply


def _one_number(fn: Callable[[float], int]) -> Callable[[list, ast.Function], Any]:
    def apply(args: list, f: ast.Function) -> Any:
        if len(args) != 1:
            raise DnetError(f"{f.name} takes one number", f.span)
        return fn(_number(args[0], f.args[0], f.name))

    return apply


def _length(args: list, f: ast.Function) -> int:
    if len(args) != 1 or not isinstance(args[0], list | tuple):
        raise DnetError("len takes one list", f.span)
    return len(args[0])


def _group(args: list, f: ast.Function) -> str:
    """`group(8)`: group normalisation over 8 groups of channels, a value of `normalization`."""
    if len(args) != 1:
        raise DnetError("group takes one number: the number of groups of channels", f.span)
    return f"group({_whole(args[0], f.args[0], 'the number of groups')})"


def _connectivity(kind: str, what: str, check: Callable[[float], bool], hint: str) -> Callable:
    """`window(3)`, `harmonic(1.7)`, `partial(0.5)`: a dense block's connectivity with its number."""

    def apply(args: list, f: ast.Function) -> spec.Connectivity:
        if len(args) != 1:
            raise DnetError(f"{kind} takes one number: {what}", f.span, help=f"for example {hint}")
        v = _number(args[0], f.args[0], kind)
        if kind in ("window", "dual"):
            v = _whole(v, f.args[0], kind)
        if not check(v):
            raise DnetError(f"`{render(f)}`: {what}", f.span, help=f"for example {hint}")
        return spec.Connectivity(kind=kind, value=v)

    return apply


FUNCTIONS: dict[str, Callable[[list, ast.Function], Any]] = {
    "min": _min_max(min),
    "max": _min_max(max),
    "floor": _one_number(math.floor),
    "ceil": _one_number(math.ceil),
    "round": _one_number(round),
    "len": _length,
    "range": _range,
    "group": _group,
    "window": _connectivity(
        "window", "the number of latest feature maps each layer reads, >= 1", lambda v: v >= 1, "window(3)"
    ),
    "harmonic": _connectivity("harmonic", "HarDNet's width multiplier m, > 0", lambda v: v > 0, "harmonic(1.7)"),
    "dual": _connectivity(
        "dual", "the residual channels r of each layer's output, a whole number >= 1", lambda v: v >= 1, "dual(256)"
    ),
    "partial": _connectivity(
        "partial", "the fraction of channels that bypass the block, 0 < r < 1", lambda v: 0 < v < 1, "partial(0.5)"
    ),
}


CHOICES = (*spec.NORMALIZATIONS, *spec.ACTIVATIONS)
# connectivities without a number: names the language gives meaning, as it does the choices
CONNECTIVITIES = {"all": "all", "exponential": "exponential", "aggregate": "aggregate"}


@dataclass
class Scope:
    """Names visible at a point of a network body, and how the derived ones were computed."""

    values: dict[str, Any] = field(default_factory=dict)
    lets: dict[str, ast.Expr] = field(default_factory=dict)
    where: dict[str, Span] = field(default_factory=dict)
    parameters: set[str] = field(default_factory=set)
    kept: dict[str, list] = field(default_factory=dict)  # `keep NAME` lists, one set for the whole network
    layers: dict[str, Any] = field(default_factory=dict)  # user-defined layers visible here, by name

    def child(self) -> Scope:
        return Scope(dict(self.values), dict(self.lets), dict(self.where), self.parameters, self.kept, self.layers)


def evaluate(e: ast.Expr, scope: Scope, lookup: Callable[[ast.Name], Any] | None = None) -> Any:
    """Interpret an expression over numbers, sizes and lists."""
    if isinstance(e, ast.Num):
        return e.value
    if isinstance(e, ast.Dims):
        return e.values
    if isinstance(e, ast.Const):
        return e.value
    if isinstance(e, ast.Name):
        if lookup is not None:
            return lookup(e)
        if e.id not in scope.values:
            if e.id in scope.kept:  # feature maps kept with `keep`
                return scope.kept[e.id]
            if e.id in CHOICES:  # `silu`, `instance`: names the language gives meaning
                return e.id
            if e.id in CONNECTIVITIES:
                return spec.Connectivity(kind=CONNECTIVITIES[e.id])
            if e.id in scope.layers:
                return LayerValue(e.id, scope.layers[e.id], span=e.span)
            raise DnetError(
                f"unknown name `{e.id}`",
                e.span,
                label="not defined here",
                help=did_you_mean(e.id, [*scope.values, *CHOICES, *CONNECTIVITIES, *scope.layers]) or _name_help(scope),
            )
        return scope.values[e.id]
    if isinstance(e, ast.IfElse):
        chosen = e.then if _truth(evaluate(e.condition, scope, lookup), e.condition) else e.otherwise
        return evaluate(chosen, scope, lookup)
    if isinstance(e, ast.BinOp) and e.op in ("and", "or"):
        left = _truth(evaluate(e.left, scope, lookup), e.left)
        if left == (e.op == "or"):  # decided by the left side, as Python and C
            return left
        return _truth(evaluate(e.right, scope, lookup), e.right)
    if isinstance(e, ast.BinOp) and e.op in _COMPARE:
        left, right = evaluate(e.left, scope, lookup), evaluate(e.right, scope, lookup)
        if e.op in ("==", "!="):
            return _COMPARE[e.op](_comparable(left), _comparable(right))
        a = _number(left, e.left, f"`{e.op}`")
        b = _number(right, e.right, f"`{e.op}`")
        return _COMPARE[e.op](a, b)
    if isinstance(e, ast.BinOp) and e.op == "+" and isinstance(left := evaluate(e.left, scope, lookup), list):
        right = evaluate(e.right, scope, lookup)  # [a, b] + [c]: lists join
        if not isinstance(right, list):
            raise DnetError(f"a list joins only a list, but `{render(e.right)}` is {kind_of(right)}", e.right.span)
        if len(left) + len(right) > MAX_LIST:
            raise DnetError(f"`{render(e)}` would make a list of {len(left) + len(right)} items", e.span)
        return left + right
    if isinstance(e, ast.BinOp):
        left, right = evaluate(e.left, scope, lookup), evaluate(e.right, scope, lookup)
        if e.op == "*" and (isinstance(left, list) or isinstance(right, list)):  # [size] * dims: repetition
            items, n, at = (left, right, e.right) if isinstance(left, list) else (right, left, e.left)
            n = _whole(n, at, "a list's repetition count")
            if not 0 <= n * len(items) <= MAX_LIST:
                raise DnetError(f"`{render(e)}` would make a list of {n * len(items)} items", e.span)
            return items * n
        a = _number(left, e.left, f"`{e.op}`")
        b = _number(right, e.right, f"`{e.op}`")
        if e.op in ("/", "//", "%") and b == 0:
            raise DnetError(f"division by zero in `{render(e)}`", e.op_span, label=f"`{render(e.right)}` is 0")
        if e.op == "+":
            r = a + b
        elif e.op == "-":
            r = a - b
        elif e.op == "*":
            r = a * b
        elif e.op == "/":
            r = a // b if isinstance(a, int) and isinstance(b, int) and a % b == 0 else a / b
        elif e.op == "//":
            r = a // b
        else:
            r = a % b
        return _checked(r, e)
    if isinstance(e, ast.Unary) and e.op == "not":
        return not _truth(evaluate(e.operand, scope, lookup), e.operand)
    if isinstance(e, ast.Unary):
        v = _number(evaluate(e.operand, scope, lookup), e.operand, f"unary `{e.op}`")
        return -v if e.op == "-" else v
    if isinstance(e, ast.ListExpr):
        if len(e.items) > MAX_LIST:
            raise DnetError(f"a list of {len(e.items)} items is too long (at most {MAX_LIST})", e.span)
        return [evaluate(i, scope, lookup) for i in e.items]
    if isinstance(e, ast.Index):
        target = evaluate(e.target, scope, lookup)
        if not isinstance(target, list | tuple):
            raise DnetError(f"only a list can be indexed, but `{render(e.target)}` is {kind_of(target)}", e.span)
        i = _whole(evaluate(e.index, scope, lookup), e.index, "an index")
        if not -len(target) <= i < len(target):
            raise DnetError(
                f"index {i} is out of range: `{render(e.target)}` has {len(target)} items",
                e.index.span,
                help=f"indices run from 0 to {len(target) - 1}" if target else None,
            )
        return target[i]
    if isinstance(e, ast.Function):
        if e.name in scope.layers:  # a user-defined layer with some of its arguments
            args = tuple(evaluate(a, scope, lookup) for a in e.args)
            keywords = tuple((k.name, evaluate(k.value, scope, lookup)) for k in e.keywords)
            return LayerValue(e.name, scope.layers[e.name], args, keywords, e.span)
        fn = FUNCTIONS.get(e.name)
        if fn is None:
            raise DnetError(
                f"unknown function `{e.name}`",
                e.name_span,
                help=did_you_mean(e.name, [*FUNCTIONS, *scope.layers]) or "the functions are " + ", ".join(FUNCTIONS),
            )
        if e.keywords:
            raise DnetError(
                f"`{e.name}` takes no arguments by name", e.keywords[0].span, help=f"write {render(e)} positionally"
            )
        return _checked_any(fn([evaluate(a, scope, lookup) for a in e.args], e), e)
    raise TypeError(e)


def _truth(v: Any, e: ast.Expr) -> bool:
    if not isinstance(v, bool):
        raise DnetError(
            f"a condition needs true or false, but `{render(e)}` is {kind_of(v)} ({show(v)})",
            e.span,
            help=f"compare it: `{render(e)} > 0`" if isinstance(v, int | float) else None,
        )
    return v


def _comparable(v: Any) -> Any:
    """Layers compare by name and arguments, the rest as values."""
    return (v.name, v.args, v.keywords) if isinstance(v, LayerValue) else v


def _checked_any(v: Any, e: ast.Expr) -> Any:
    return _checked(v, e) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _name_help(scope: Scope) -> str | None:
    if not scope.values:
        return None
    names = sorted(scope.values)
    return "names defined here: " + ", ".join(f"`{n}`" for n in names[:12]) + (", ..." if len(names) > 12 else "")
