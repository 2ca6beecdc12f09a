"""Parse .dnet text into the syntax tree of `dsl.ast`, turning Lark's errors into diagnostics."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.tree import Meta

from . import ast
from .errors import DnetError, Span, did_you_mean

GRAMMAR = Path(__file__).with_name("dnet.lark")

# What a person calls the terminals that are not plain keywords or punctuation.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "DIMS": "a size such as `3x3`",
    "STRING": 'a quoted file name such as "densenet_bc.dnet"',
    "COMPARE": "a comparison such as `==` or `<`",
    "$END": "the end of the file",
}
_EXPRESSION_START = {"INT", "FLOAT", "DIMS", "NAME", "LPAR", "LSQB", "MINUS", "PLUS", "NONE", "TRUE", "FALSE"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "FLOORDIV", "PERCENT"}


@functools.cache
def parser() -> Lark:
    return Lark(
        GRAMMAR.read_text(encoding="utf-8"),
        parser="lalr",
        start=["start", "expr"],
        propagate_positions=True,
        maybe_placeholders=True,
    )


@functools.cache
def _keywords() -> dict[str, str]:
    """Terminal name -> literal text, for the terminals that are fixed strings."""
    return {t.name: t.pattern.value for t in parser().terminals if t.pattern.type == "str"}


def describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    literal = _keywords().get(name)
    return f"`{literal}`" if literal is not None else name.lower()


def describe_expected(expected: set[str]) -> str:
    """Say what the parser wanted in words: 'an expression or `)`', never raw token names."""
    expected = set(expected)
    words: list[str] = []
    if len(expected & _EXPRESSION_START) >= 6:
        expected -= _EXPRESSION_START
        words.append("an expression")
    if len(expected & _OPERATORS) >= 4:
        expected -= _OPERATORS
        words.append("an operator")
    if {"NAME", "RBRACE"} <= expected and "LET" in expected:
        expected -= {
            "NAME",
            "LET",
            "INPUT",
            "REPEAT",
            "FOR",
            "STEM",
            "HEAD",
            "EXIT",
            "MEMORY",
            "NORMALIZATION",
            "ACTIVATION",
            "KEEP",
        }
        words.append(
            "a statement (`input`, `let`, `stem`, `head`, `exit`, `repeat`, `for`, `memory`, `normalization`, "
            "`activation`, `keep` or an operation)"
        )
    words += sorted(describe_terminal(t) for t in expected)
    if not words:
        return "nothing more here"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _span(file: str, item: Token | Meta) -> Span:
    return Span(file, item.line, item.column, item.end_line, item.end_column)


@v_args(meta=True)
class ToAst(Transformer_NonRecursive):
    """Lark tree -> `dsl.ast` nodes, one method a rule, spans from Lark's positions."""

    def __init__(self, file: str, source: str) -> None:
        super().__init__()
        self.file = file
        self.source = source

    def _s(self, item: Token | Meta) -> Span:
        return _span(self.file, item)

    # ---- expressions
    def int(self, meta: Meta, c: list) -> ast.Num:
        return ast.Num(int(c[0]), self._s(meta), str(c[0]))

    def float(self, meta: Meta, c: list) -> ast.Num:
        return ast.Num(float(c[0]), self._s(meta), str(c[0]))

    def dims(self, meta: Meta, c: list) -> ast.Dims:
        return ast.Dims(tuple(int(v) for v in str(c[0]).split("x")), self._s(meta), str(c[0]))

    def none(self, meta: Meta, c: list) -> ast.Const:
        return ast.Const(None, self._s(meta))

    def true(self, meta: Meta, c: list) -> ast.Const:
        return ast.Const(True, self._s(meta))

    def false(self, meta: Meta, c: list) -> ast.Const:
        return ast.Const(False, self._s(meta))

    def name(self, meta: Meta, c: list) -> ast.Name:
        return ast.Name(str(c[0]), self._s(meta))

    def function(self, meta: Meta, c: list) -> ast.Function:
        args = c[1] or ()
        keywords = tuple(a for a in args if a.name is not None)
        positional = [a for a in args if a.name is None]
        if keywords and positional and args.index(positional[-1]) > args.index(keywords[0]):
            late = next(a for a in args[args.index(keywords[0]) :] if a.name is None)
            raise DnetError(
                "a positional argument cannot follow a keyword argument",
                late.span,
                source=self.source,
                help="give it by name: `name = value`",
            )
        return ast.Function(
            str(c[0]), tuple(a.value for a in positional), self._s(meta), self._s(c[0]), keywords=keywords
        )

    def list(self, meta: Meta, c: list) -> ast.ListExpr:
        return ast.ListExpr(tuple(x for x in c if x is not None), self._s(meta))

    def index(self, meta: Meta, c: list) -> ast.Index:
        return ast.Index(c[0], c[1], self._s(meta))

    def neg(self, meta: Meta, c: list) -> ast.Unary:
        return ast.Unary("-", c[0], self._s(meta))

    def pos(self, meta: Meta, c: list) -> ast.Unary:
        return ast.Unary("+", c[0], self._s(meta))

    def _binop(self, op: str, meta: Meta, c: list) -> ast.BinOp:
        left, right = c[0], c[-1]
        # The operator sits between the operands; anonymous tokens are filtered, so locate it.
        op_span = Span(self.file, left.span.end_line or meta.line, left.span.end_col or meta.column)
        text = self.source.splitlines()[op_span.line - 1] if self.source else ""
        col = op_span.col
        while col <= len(text) and text[col - 1] in " \t":
            col += 1
        op_span = Span(self.file, op_span.line, col, op_span.line, col + len(op))
        return ast.BinOp(op, left, right, self._s(meta), op_span)

    def add(self, meta: Meta, c: list) -> ast.BinOp:
        return self._binop("+", meta, c)

    def sub(self, meta: Meta, c: list) -> ast.BinOp:
        return self._binop("-", meta, c)

    def mul(self, meta: Meta, c: list) -> ast.BinOp:
        return self._binop("*", meta, c)

    def div(self, meta: Meta, c: list) -> ast.BinOp:
        return self._binop("/", meta, c)

    def floordiv(self, meta: Meta, c: list) -> ast.BinOp:
        return self._binop("//", meta, c)

    def mod(self, meta: Meta, c: list) -> ast.BinOp:
        return self._binop("%", meta, c)

    def compare(self, meta: Meta, c: list) -> ast.BinOp:
        return self._binop(str(c[1]), meta, [c[0], c[2]])

    def and_(self, meta: Meta, c: list) -> ast.BinOp:
        return self._binop("and", meta, c)

    def or_(self, meta: Meta, c: list) -> ast.BinOp:
        return self._binop("or", meta, c)

    def not_(self, meta: Meta, c: list) -> ast.Unary:
        return ast.Unary("not", c[0], self._s(meta))

    def if_else(self, meta: Meta, c: list) -> ast.IfElse:
        return ast.IfElse(c[0], c[1], c[2], self._s(meta))

    # ---- statements
    def keyword(self, meta: Meta, c: list) -> ast.Argument:
        return ast.Argument(str(c[0]), c[1], self._s(meta), self._s(c[0]))

    def arguments(self, meta: Meta, c: list) -> tuple[ast.Argument, ...]:
        return tuple(a if isinstance(a, ast.Argument) else ast.Argument(None, a, a.span) for a in c if a is not None)

    def call(self, meta: Meta, c: list) -> ast.Call:
        return ast.Call(str(c[0]), c[1] or (), self._s(meta), self._s(c[0]))

    def shape(self, meta: Meta, c: list) -> ast.Input:
        if len(c) == 1 and isinstance(c[0], ast.Dims):  # input 3x32x32
            d = c[0]
            return ast.Input(tuple(ast.Num(v, d.span, str(v)) for v in d.values), self._s(meta))
        return ast.Input(tuple(c), self._s(meta))

    def input(self, meta: Meta, c: list) -> ast.Input:
        return ast.Input(c[0].dims, self._s(meta))

    def let(self, meta: Meta, c: list) -> ast.Let:
        return ast.Let(str(c[0]), c[1], self._s(meta), self._s(c[0]))

    def memory(self, meta: Meta, c: list) -> ast.Memory:
        return ast.Memory(str(c[0]), self._s(meta), self._s(c[0]))

    def setting(self, meta: Meta, c: list) -> ast.Setting:
        return ast.Setting(str(c[0]), c[1], self._s(meta))

    def keep(self, meta: Meta, c: list) -> ast.Keep:
        return ast.Keep(str(c[0]), self._s(meta), self._s(c[0]))

    def section(self, meta: Meta, c: list) -> ast.Section:
        return ast.Section(str(c[0]), tuple(c[1:]), self._s(meta))

    def separator(self, meta: Meta, c: list) -> ast.Call:
        return c[0]

    def body(self, meta: Meta, c: list) -> tuple:
        return tuple(c)

    def repeat(self, meta: Meta, c: list) -> ast.Repeat:
        return ast.Repeat(c[0], None, None, c[1], c[2], self._s(meta))

    def for_each(self, meta: Meta, c: list) -> ast.Repeat:
        return ast.Repeat(None, str(c[0]), c[1], c[2], c[3], self._s(meta))

    # ---- top level
    def parameter(self, meta: Meta, c: list) -> ast.Parameter:
        return ast.Parameter(str(c[0]), c[1], self._s(meta))

    def parameters(self, meta: Meta, c: list) -> tuple[ast.Parameter, ...]:
        return tuple(p for p in c if p is not None)

    def layer_def(self, meta: Meta, c: list) -> ast.LayerDef:
        return ast.LayerDef(str(c[0]), c[1] or (), tuple(c[2:]), self._s(meta), self._s(c[0]))

    def branch(self, meta: Meta, c: list) -> tuple:
        return tuple(c)

    def branches(self, meta: Meta, c: list) -> ast.Branches:
        return ast.Branches(str(c[0]), tuple(c[1:]), self._s(meta), self._s(c[0]))

    def network_def(self, meta: Meta, c: list) -> ast.NetworkDef:
        return ast.NetworkDef(str(c[0]), c[1] or (), c[2], self._s(meta), self._s(c[0]))

    def network_alias(self, meta: Meta, c: list) -> ast.NetworkAlias:
        return ast.NetworkAlias(str(c[0]), str(c[1]), c[2] or (), self._s(meta), self._s(c[0]), self._s(c[1]))

    def use(self, meta: Meta, c: list) -> ast.Use:
        names = tuple((str(t), self._s(t)) for t in c[:-1])
        path = c[-1]
        return ast.Use(names, str(path)[1:-1], self._s(meta), self._s(path))

    def start(self, meta: Meta, c: list) -> ast.Module:
        module = ast.Module(self.file, self.source)
        for item in c:
            if isinstance(item, ast.Use):
                module.uses.append(item)
            elif isinstance(item, ast.LayerDef):
                module.layers.append(item)
            else:
                module.networks.append(item)
        return module


def parse_module(text: str, file: str = "<string>") -> ast.Module:
    """Parse a whole .dnet file."""
    return _parse(text, file, "start")


def parse_expression(text: str, file: str = "<string>") -> ast.Expr:
    """Parse one expression: the value of a `--set NAME=VALUE` override."""
    return _parse(text, file, "expr")


def _parse(text: str, file: str, start: str):
    try:
        tree = parser().parse(text, start=start)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    try:
        return ToAst(file, text).transform(tree)
    except VisitError as e:  # a diagnostic raised while building the tree
        if isinstance(e.orig_exc, DnetError):
            raise e.orig_exc from None
        raise


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> DnetError:
    lines = text.splitlines() or [""]
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        span = Span(file, e.line, e.column, e.line, e.column + 1)
        hint = None
        if ch == "'":
            hint = 'file names are written in double quotes: "file.dnet"'
        elif ch in "^&|!<>":
            hint = "the language has + - * / // %, comparisons (== != < <= > >=), `and`, `or` and `not`"
        return DnetError(
            f"unexpected character `{ch}`",
            span,
            source=text,
            label=f"expected {describe_expected(set(e.allowed or ()))}",
            help=hint,
        )
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        line = len(lines)
        col = len(lines[-1]) + 1
        expected = set(e.expected)
        notes = []
        opened = _unclosed_brace(text)
        if opened:
            notes.append(f"the `{{` at line {opened[0]}, column {opened[1]} is never closed")
        return DnetError(
            "unexpected end of file",
            Span(file, line, col, line, col + 1),
            source=text,
            label=f"expected {describe_expected(expected)}",
            notes=notes,
        )
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    expected = set(e.expected)
    span = Span(file, tok.line, tok.column, tok.end_line, tok.end_column)
    what = describe_terminal(tok.type)
    message = f"unexpected {what}" if tok.type not in ("NAME", "INT", "FLOAT", "DIMS") else f"unexpected `{tok}`"
    hint = None
    keywords = [v for k, v in _keywords().items() if k in expected and v.isalpha()]
    if tok.type == "NAME" and keywords:
        hint = did_you_mean(str(tok), keywords)
    if hint is None:
        # `repat 3 { ... }`, `lett n = 3`: a misspelled keyword stands before the error on its line
        all_keywords = [v for v in _keywords().values() if v.isalpha()]
        before = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", lines[tok.line - 1][: tok.column - 1].split("#")[0])
        for word in reversed(before[-2:]):
            if len(word) > 2 and word not in all_keywords and (hint := did_you_mean(word, all_keywords)):
                break
    wants_else = any(_keywords().get(k) == "else" for k in expected)
    if hint is None and (re.match(r"\s*if\b", lines[tok.line - 1]) or (wants_else and tok.type == "LBRACE")):
        hint = (
            "`if` is not a statement: choose a value with `A if CONDITION else B`, e.g. "
            "`let t = pooled if down[i] else plain` and then `t(channels)`"
        )
    if hint is None and tok.type == "EQUAL" and "RPAR" in expected:
        hint = "only a name can be given a value here: `name = value`"
    if hint is None and tok.type == "X":
        hint = "`x` separates sizes, as in `input 3 x 32 x 32`; it cannot be a name"
    return DnetError(message, span, source=text, label=f"expected {describe_expected(expected)}", help=hint)


def _unclosed_brace(text: str) -> tuple[int, int] | None:
    """Where the innermost `{` that is never closed was opened, ignoring comments and strings."""
    stack: list[tuple[int, int]] = []
    for n, line in enumerate(text.splitlines(), 1):
        quoted = False
        for col, ch in enumerate(line, 1):
            if ch == '"':
                quoted = not quoted
            elif quoted:
                continue
            elif ch == "#":
                break
            elif ch == "{":
                stack.append((n, col))
            elif ch == "}" and stack:
                stack.pop()
    return stack[-1] if stack else None
