"""The canonical layout of .dnet text: `dnetc fmt`.

Four spaces a level, one statement a line, spaces around `=` and binary operators, no redundant
parentheses, `norm` rather than `norm()`. A network header that is too long for one line gets one
parameter a line. Comments are kept where they were written, on their own line or at the end of
one; a blank line between statements is kept (several become one). The result is checked: it
parses to the same syntax tree as the input, comments included, or formatting stops.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, NamedTuple

from . import ast
from .errors import DnetError, Span
from .evaluate import render
from .syntax import parse_module

WIDTH = 100
INDENT = "    "


class Comment(NamedTuple):
    line: int
    col: int
    text: str
    own_line: bool  # nothing but blanks before it on its line


def comments(text: str) -> list[Comment]:
    """Every `#` comment outside a string. Strings never span lines, so a line scan is exact."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        quoted = False
        for col, ch in enumerate(line, 1):
            if ch == '"':
                quoted = not quoted
            elif ch == "#" and not quoted:
                out.append(Comment(n, col, line[col - 1 :].rstrip(), not line[: col - 1].strip()))
                break
    return out


def _call(c: ast.Call) -> str:
    if not c.args:
        return c.op
    return f"{c.op}(" + ", ".join(_argument(a) for a in c.args) + ")"


def _argument(a: ast.Argument) -> str:
    return render(a.value) if a.name is None else f"{a.name} = {render(a.value)}"


def _split_arguments(text: str) -> list[str]:
    """`a, f(b, c), [d, e]` -> its top-level items."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    return [*out, text[start:].strip()]


def _parameter(p: ast.Parameter) -> str:
    return p.name if p.default is None else f"{p.name} = {render(p.default)}"


def _wrapped(head: str, items: list[str], tail: str, indent: str) -> list[str]:
    """`head(items)tail` on one line when it fits, else one item a line."""
    one = f"{indent}{head}(" + ", ".join(items) + f"){tail}"
    if len(one) <= WIDTH or not items:
        return [one]
    return [f"{indent}{head}(", *(f"{indent}{INDENT}{i}," for i in items), f"{indent}){tail}"]


def _inline(ops: tuple[ast.Op, ...]) -> str:
    """A layer's ops on one line: `norm act conv(3, growth) concat { ... } { }`."""
    parts = []
    for op in ops:
        if isinstance(op, ast.Call):
            parts.append(_call(op))
        else:
            parts.append(op.join + "".join(f" {{ {_inline(b)} }}" if b else " { }" for b in op.branches))
    return " ".join(parts)


class _Printer:
    def __init__(self, source: str) -> None:
        self.source = source.splitlines()
        self.pending = deque(comments(source))
        self.out: list[str] = []
        self.comments: dict[int, str] = {}  # output line -> its end-of-line comment
        self.last = 0  # the last source line accounted for

    # ---- comments and blank lines
    def _blank_between(self, a: int, b: int) -> bool:
        return any(not self.source[i - 1].strip() for i in range(a + 1, b) if 0 < i <= len(self.source))

    def _gap(self, line: int, first: bool) -> None:
        if not first and self._blank_between(self.last, line) and self.out and self.out[-1] != "":
            self.out.append("")

    def leading(self, before: int, indent: str, first: bool, through: int | None = None) -> None:
        """Comments standing before source line `before` (and own-line ones up to `through`),
        on lines of their own, after a blank line where the source had one."""
        while self.pending and (
            self.pending[0].line < before
            or (through is not None and self.pending[0].line <= through and self.pending[0].own_line)
        ):
            c = self.pending.popleft()
            self._gap(c.line, first)
            first = False
            self.out.append(indent + c.text)
            self.last = max(self.last, c.line)
        self._gap(before, first)

    def trailing(self, first: int, last: int) -> str:
        """The end-of-line comments written on source lines `first`..`last`, joined."""
        texts = []
        while self.pending and self.pending[0].line <= last and not self.pending[0].own_line:
            if self.pending[0].line < first:
                break
            texts.append(self.pending.popleft().text)
        return " ".join(texts)

    def emit(self, code: str, comment: str) -> None:
        """An output line, its end-of-line comment (if any) kept apart until the comments are aligned."""
        if comment:
            self.comments[len(self.out)] = comment
        self.out.append(code)

    def line(self, text: str, span: Span, indent: str, first: bool) -> None:
        """A statement printed on one line, whatever lines it took in the source."""
        end = span.end_line or span.line
        self.leading(span.line, indent, first, through=end)
        self.emit(indent + text, self.trailing(span.line, end))
        self.last = max(self.last, end)

    def block(self, header: list[str], span: Span, body: tuple, indent: str, first: bool) -> None:
        """`header {`, the body one level in, `}`; comments on the header's lines end its last line."""
        end = span.end_line or span.line
        header_end = body[0].span.line - 1 if body else end - 1
        self.leading(span.line, indent, first)
        comment = self.trailing(span.line, max(span.line, header_end))
        for i, h in enumerate(header):
            self.emit(indent + h, comment if i == len(header) - 1 else "")
        self.last = max(self.last, span.line, header_end)
        for i, s in enumerate(body):
            self.statement(s, indent + INDENT, i == 0)
        self.leading(end, indent + INDENT, not body)
        self.emit(indent + "}", self.trailing(end, end))
        self.last = max(self.last, end)

    # ---- statements
    def statement(self, s: ast.Statement, indent: str, first: bool) -> None:
        if isinstance(s, ast.Input):
            self.line("input " + " x ".join(render(d) for d in s.dims), s.span, indent, first)
        elif isinstance(s, ast.Let):
            self.line(f"let {s.name} = {render(s.value)}", s.span, indent, first)
        elif isinstance(s, ast.Memory):
            self.line(f"memory {s.lowering}", s.span, indent, first)
        elif isinstance(s, ast.Keep):
            self.line(f"keep {s.name}", s.span, indent, first)
        elif isinstance(s, ast.Setting):
            self.line(f"{s.what} {render(s.value)}", s.span, indent, first)
        elif isinstance(s, ast.Call):
            self.wrapped(
                _wrapped(s.op, [_argument(a) for a in s.args], "", "") if s.args else [s.op], s.span, indent, first
            )
        elif isinstance(s, ast.Branches):
            self.branches(s, indent, first)
        elif isinstance(s, ast.Section):
            self.section(s, indent, first)
        elif isinstance(s, ast.Repeat):
            head = f"repeat {render(s.count)}" if s.var is None else f"for {s.var} in {render(s.iterable)}"
            if s.separator is not None:
                head += f" separated by {_call(s.separator)}"
            self.block([head + " {"], s.span, s.body, indent, first)
        else:
            raise TypeError(s)

    def wrapped(self, lines: list[str], span: Span, indent: str, first: bool) -> None:
        """A statement on one line, or one argument a line when too long; comments end its last line."""
        end = span.end_line or span.line
        if len(lines) == 1 and len(indent + lines[0]) <= WIDTH:
            self.line(lines[0], span, indent, first)
            return
        if len(lines) == 1:  # it fit at the margin, not at this indent
            head, _, rest = lines[0].partition("(")
            lines = [f"{head}(", *(f"{INDENT}{a}," for a in _split_arguments(rest[:-1])), ")"]
        self.leading(span.line, indent, first, through=end)
        comment = self.trailing(span.line, end)
        for i, text in enumerate(lines):
            self.emit(indent + text, comment if i == len(lines) - 1 else "")
        self.last = max(self.last, end)

    def branches(self, b: ast.Branches, indent: str, first: bool) -> None:
        """`concat { ... } { ... }` on one line when it fits and holds no comment, else a branch a block."""
        end = b.span.end_line or b.span.line
        one = _inline((b,))
        if len(indent + one) <= WIDTH and not any(b.span.line <= c.line <= end for c in self.pending):
            self.line(one, b.span, indent, first)
            return
        self.leading(b.span.line, indent, first)
        head = b.join + " {"
        for branch in b.branches:
            self.emit(indent + head, "")
            for j, op in enumerate(branch):
                self.statement(op, indent + INDENT, j == 0)
            head = "} {"
        self.leading(end, indent + INDENT, False)
        self.emit(indent + "}", self.trailing(end, end))
        self.last = max(self.last, end)

    def layer(self, n: ast.LayerDef, first: bool) -> None:
        params = [_parameter(p) for p in n.parameters]
        header = _wrapped(f"layer {n.name}", params, " {", "") if n.parameters else [f"layer {n.name} {{"]
        end = n.span.end_line or n.span.line
        one = f"{header[0]} {_inline(n.body)} }}" if n.body else f"{header[0]} }}"
        inside = any(n.span.line <= c.line < end or (c.line == end and c.own_line) for c in self.pending)
        if len(header) == 1 and len(one) <= WIDTH and not inside:
            self.line(one, n.span, "", first)
        elif inside:  # comments among the ops: one op a line, each comment where it was
            self.block(header, n.span, n.body, "", first)
        else:  # the ops filled into lines, as text is
            self.leading(n.span.line, "", first)
            for h in header:
                self.emit(h, "")
            self.packed(n.body, INDENT)
            self.emit("}", "")
            self.last = max(self.last, end)

    def packed(self, ops: tuple[ast.Op, ...], indent: str) -> None:
        """A layer's ops filled into lines of at most WIDTH; branches too long for a line get a block each."""
        line: list[str] = []
        for op in ops:
            text = _inline((op,))
            if line and len(indent + " ".join([*line, text])) > WIDTH:
                self.emit(indent + " ".join(line), "")
                line = []
            if isinstance(op, ast.Branches) and len(indent + text) > WIDTH:
                head = op.join + " {"
                for branch in op.branches:
                    self.emit(indent + head, "")
                    self.packed(branch, indent + INDENT)
                    head = "} {"
                self.emit(indent + "}", "")
                continue
            line.append(text)
        if line:
            self.emit(indent + " ".join(line), "")

    def section(self, s: ast.Section, indent: str, first: bool) -> None:
        end = s.span.end_line or s.span.line
        inside = any(s.span.line <= c.line < end for c in self.pending)
        if len(s.calls) == 1 and not inside:
            self.line(f"{s.kind} {_call(s.calls[0])}", s.span, indent, first)
        else:
            self.block([f"{s.kind} {{"], s.span, s.calls, indent, first)

    def network(self, n: ast.NetworkDef | ast.NetworkAlias, first: bool) -> None:
        if isinstance(n, ast.NetworkAlias):
            lines = _wrapped(f"network {n.name} = {n.family}", [_argument(a) for a in n.args], "", "")
            if len(lines) == 1:
                self.line(lines[0], n.span, "", first)
            else:  # a long alias: comments on its lines end its last line
                self.leading(n.span.line, "", first)
                comment = self.trailing(n.span.line, n.span.end_line or n.span.line)
                for i, text in enumerate(lines):
                    self.emit(text, comment if i == len(lines) - 1 else "")
                self.last = max(self.last, n.span.end_line or n.span.line)
            return
        params = [_parameter(p) for p in n.parameters]
        header = _wrapped(f"network {n.name}", params, " {", "") if n.parameters else [f"network {n.name} {{"]
        self.block(header, n.span, n.body, "", first)

    def module(self, m: ast.Module) -> str:
        items = sorted([*m.uses, *m.layers, *m.networks], key=lambda i: (i.span.line, i.span.col))
        for i, item in enumerate(items):
            after_layers = i and isinstance(item, ast.NetworkDef) and isinstance(items[i - 1], ast.LayerDef)
            if after_layers and self.out and self.out[-1] != "":  # a network stands apart from the layers
                self.out.append("")
            if isinstance(item, ast.Use):
                names = ", ".join(name for name, _ in item.names)
                self.line(f'use {names} from "{item.path}"', item.span, "", i == 0)
            elif isinstance(item, ast.LayerDef):
                self.layer(item, i == 0)
            else:
                self.network(item, i == 0)
        self.leading(len(self.source) + 1, "", not items)
        while self.out and self.out[-1] == "":
            self.out.pop()
        return "\n".join(self.aligned()) + "\n" if self.out else ""

    def aligned(self) -> list[str]:
        """End-of-line comments on consecutive lines start in one column, two spaces after the
        longest code among them, as gofmt aligns them."""
        out = list(self.out)
        i = 0
        while i < len(out):
            j = i
            while j in self.comments:
                j += 1
            if j > i:
                column = max(len(out[k]) for k in range(i, j)) + 2
                for k in range(i, j):
                    out[k] = out[k].ljust(column) + self.comments[k]
            i = j + 1 if j == i else j
        return out


def _tree(node: Any) -> Any:
    """A syntax tree without positions, for comparing two parses of the same spec."""
    if isinstance(node, Span):
        return None
    if dataclasses.is_dataclass(node):
        skip = {"span", "file", "source"}
        fields = [f.name for f in dataclasses.fields(node) if f.name not in skip and not f.name.endswith("_span")]
        return (type(node).__name__, *(_tree(getattr(node, f)) for f in fields))
    if isinstance(node, list | tuple):
        return tuple(_tree(x) for x in node)
    return node


def same_tree(a: ast.Module, b: ast.Module) -> bool:
    return _tree(a) == _tree(b)


def format_source(text: str, file: str = "<string>") -> str:
    """The canonical layout of a .dnet file's text. Raises DnetError for text that does not parse."""
    module = parse_module(text, file)
    out = _Printer(text).module(module)
    again = parse_module(out, file)
    kept = " ".join(c.text for c in comments(out)) == " ".join(c.text for c in comments(text))
    if not same_tree(module, again) or not kept:
        raise DnetError(
            "formatting would change this spec, so it was left as it is",
            Span(file, 1, 1),
            source=text,
            help="this is a bug in `dnetc fmt`: please report it with the file",
        )
    return out
