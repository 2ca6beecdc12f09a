"""The syntax tree of a .dnet file: plain dataclasses, each carrying where it was written."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Span

# ---- expressions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Num:
    value: int | float
    span: Span
    text: str


@dataclass(frozen=True, slots=True)
class Dims:
    """A size written as `3x3` or `3x32x32`."""

    values: tuple[int, ...]
    span: Span
    text: str


@dataclass(frozen=True, slots=True)
class Const:
    """`none`, `true` or `false`."""

    value: bool | None
    span: Span


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str
    left: Expr
    right: Expr
    span: Span
    op_span: Span


@dataclass(frozen=True, slots=True)
class Unary:
    op: str
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Index:
    target: Expr
    index: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Function:
    """A call of one of the language's few pure functions: min, max, floor, ceil, len, range."""

    name: str
    args: tuple[Expr, ...]
    span: Span
    name_span: Span
    keywords: tuple[Argument, ...] = ()  # `name = value`: for a user-defined layer as a value


@dataclass(frozen=True, slots=True)
class IfElse:
    """`then if condition else otherwise`."""

    then: Expr
    condition: Expr
    otherwise: Expr
    span: Span


Expr = Num | Dims | Const | Name | BinOp | Unary | ListExpr | Index | Function | IfElse

# ---- statements ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Argument:
    """`expr` (positional, name None) or `name = expr` in a call."""

    name: str | None
    value: Expr
    span: Span
    name_span: Span | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """An operation: `dense(12, growth = 12)`, `norm`, `transition(compression = 0.5)`."""

    op: str
    args: tuple[Argument, ...]
    span: Span
    op_span: Span


@dataclass(frozen=True, slots=True)
class Input:
    dims: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Let:
    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class Memory:
    """`memory shared`: the spec's choice of lowering for its dense blocks."""

    lowering: str
    span: Span
    value_span: Span


@dataclass(frozen=True, slots=True)
class Setting:
    """`normalization group(8)` or `activation silu`: a choice for the whole network."""

    what: str
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Keep:
    """`keep NAME`: the current feature maps, appended to the list NAME for a later skip connection."""

    name: str
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class Section:
    """`stem ...` or `head ...`: a group of operations named as one part of the network."""

    kind: str
    calls: tuple[Call, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Repeat:
    """`repeat N` or `for NAME in LIST`, with an optional call placed between iterations."""

    count: Expr | None
    var: str | None
    iterable: Expr | None
    separator: Call | None
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Branches:
    """`concat { ... } { ... }` or `add { ... } { ... }` inside a layer: parallel branches, joined."""

    join: str
    branches: tuple[tuple[Op, ...], ...]
    span: Span
    join_span: Span


Op = Call | Branches

Statement = Input | Let | Memory | Setting | Keep | Section | Repeat | Call

# ---- top level -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class NetworkDef:
    name: str
    parameters: tuple[Parameter, ...]
    body: tuple[Statement, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class NetworkAlias:
    """`network NAME = FAMILY(bindings)`: a member of a family, its parameters bound."""

    name: str
    family: str
    args: tuple[Argument, ...]
    span: Span
    name_span: Span
    family_span: Span


@dataclass(frozen=True, slots=True)
class LayerDef:
    """`layer NAME(parameters) { ops }`: a composite function H_l written in the language."""

    name: str
    parameters: tuple[Parameter, ...]
    body: tuple[Op, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class Use:
    names: tuple[tuple[str, Span], ...]
    path: str
    span: Span
    path_span: Span


@dataclass(slots=True)
class Module:
    """One parsed file."""

    file: str
    source: str
    uses: list[Use] = field(default_factory=list)
    networks: list[NetworkDef | NetworkAlias] = field(default_factory=list)
    layers: list[LayerDef] = field(default_factory=list)
