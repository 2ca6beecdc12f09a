"""What an editor shows of a .dnet file, computed from the spec and its graph without torch: the
diagnostics, hovers, inlay hints, completions, definitions and symbols that `dnetc lsp` serves
(runtime/lsp.py). Positions are 0-based (line, character), as the Language Server Protocol counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnetc import dsl
from dnetc.compiler import build_graph, report
from dnetc.compiler.estimate import estimate_all, saved_by_unit
from dnetc.compiler.lowerings import LOWERINGS
from dnetc.compiler.lowerings import choices as lowering_choices
from dnetc.dsl import ast, spec
from dnetc.dsl.errors import DnetError, Span
from dnetc.dsl.evaluate import CHOICES, CONNECTIVITIES, FUNCTIONS, Scope, evaluate, render, show
from dnetc.dsl.syntax import parse_module

KEYWORDS = (
    "network",
    "layer",
    "use",
    "from",
    "input",
    "let",
    "stem",
    "head",
    "exit",
    "repeat",
    "for",
    "in",
    "separated",
    "by",
    "keep",
    "memory",
    "normalization",
    "activation",
    "if",
    "else",
    "and",
    "or",
    "not",
)


@dataclass
class Settings:
    """What the client may set (`dnetc` in its settings): the batch of memory hovers, and overrides."""

    batch: int = 64
    dtype: str = "float32"
    overrides: list[str] = field(default_factory=list)


def _range(span: Span) -> tuple[tuple[int, int], tuple[int, int]]:
    """A span as 0-based ((line, char), (line, char)), at least one character wide."""
    start = (span.line - 1, span.col - 1)
    end_line = (span.end_line or span.line) - 1
    end_col = (span.end_col - 1) if span.end_col else span.col
    if (end_line, end_col) <= start:
        end_line, end_col = start[0], start[1] + 1
    return start, (end_line, end_col)


def _contains(span: Span | None, line: int, char: int) -> bool:
    """Whether a 0-based position lies in a span."""
    if span is None:
        return False
    (l0, c0), (l1, c1) = _range(span)
    return (l0, c0) <= (line, char) < (l1, c1) or (l0 < line < l1)


@dataclass
class Diagnostic:
    range: tuple[tuple[int, int], tuple[int, int]]
    message: str
    notes: list[str]
    fix: str | None  # the replacement a "did you mean" help suggests


class Document:
    """One open file: its text parsed, loaded and lowered to the graph once per edit."""

    def __init__(self, text: str, path: str, settings: Settings | None = None) -> None:
        self.text, self.path, self.settings = text, path, settings or Settings()
        self.module: ast.Module | None = None
        self.network: spec.Network | None = None
        self.graph: Any = None
        self.error: DnetError | None = None
        self.memo: dict[Any, Any] = {}
        try:
            self.module = parse_module(text, path)
            overrides = dsl.parse_overrides(self.settings.overrides) if self.settings.overrides else {}
            self.network = dsl.parse(text, path, **{k: v for k, v in overrides.items()})
            self.graph = build_graph(self.network)
        except DnetError as e:
            self.error = e
        except RecursionError:
            self.error = DnetError("the spec nests too deeply", Span(path, 1, 1))

    # ---- diagnostics

    def diagnostics(self) -> list[Diagnostic]:
        e = self.error
        if e is None:
            return []
        here = e.span is not None and Path(e.span.file).name == Path(self.path).name
        span = e.span if here else self._use_span(e) or Span(self.path, 1, 1)
        message = e.message if here or e.span is None else f"{e.span}: {e.message}"
        fix = None
        if e.help and e.help.startswith("did you mean `") and e.help.count("`") == 2:
            fix = e.help.split("`")[1]
        notes = [*e.notes, *([e.help] if e.help else [])]
        return [Diagnostic(_range(span), message, notes, fix if here else None)]

    def _use_span(self, e: DnetError) -> Span | None:
        """The `use` through which an error in another file reaches this one."""
        for use in self.module.uses if self.module else []:
            if e.span is not None and Path(use.path).name == Path(e.span.file).name:
                return use.path_span
        return None

    # ---- the statements and what the graph made of them

    def _units_at(self, span: Span) -> list[dict[str, Any]]:
        """The graph's parts (report.units rows) made by the statement at `span`."""
        if self.graph is None:
            return []
        lines = range(span.line, (span.end_line or span.line) + 1)
        here = Path(self.path).name
        units = {
            d["unit"]
            for _, d in self.graph.nodes(data=True)
            if d["span"] is not None and d["span"].line in lines and Path(d["span"].file).name == here
        }
        return [row for row in self._rows() if row["name"] in units]

    def _once(self, key: Any, make: Any) -> Any:
        """What the graph gives for `key`, computed on the first hover of this text version only."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def _rows(self) -> list[dict[str, Any]]:
        return self._once("rows", lambda: report.units(self.graph))

    def _held(self, lowering: str) -> dict[str, int]:
        b, t = self.settings.batch, self.settings.dtype
        return self._once(("held", lowering), lambda: saved_by_unit(self.graph, lowering, b, t))

    def _memory(self) -> str:
        def text() -> str:
            est = estimate_all(self.graph, self.settings.batch, self.settings.dtype)
            rows = ", ".join(f"{name} {e.training / 2**20:,.0f} MiB" for name, e in est.items())
            return f"training memory of a step at batch {self.settings.batch} ({self.settings.dtype}): {rows}"

        return self._once("memory", text)

    def _statements(self) -> Iterator[ast.Statement]:
        for net in self.module.networks if self.module else []:
            if isinstance(net, ast.NetworkDef):
                yield from _walk(net.body)

    def _scope(self) -> dict[str, Any]:
        """The network's parameters as bound, and its top-level `let`s evaluated in order."""
        values = dict(self.network.parameters) if self.network else {}
        scope = Scope(values=values, layers={})
        for net in self.module.networks if self.module else []:
            if not isinstance(net, ast.NetworkDef) or (self.network and net.name != self.network.name):
                continue
            for stmt in net.body:
                if isinstance(stmt, ast.Let):
                    try:
                        scope.values[stmt.name] = evaluate(stmt.value, scope)
                    except (DnetError, KeyError, TypeError, ValueError):
                        break
        return scope.values

    # ---- hover

    def hover(self, line: int, char: int) -> str | None:
        """Markdown for the thing at a position: a let's value and how it was computed, a statement's
        shapes, counts and memory, a network's totals, an imported family's header."""
        if self.module is None:
            return None
        for use in self.module.uses:
            if _contains(use.span, line, char):
                return self._use_hover(use)
        values = self._scope()
        for net in self.module.networks:
            if _contains(net.name_span, line, char) and self.graph is not None:
                return f"**network {net.name}**\n\n{report.one_line(self.graph)}\n\n{self._memory()}"
            if isinstance(net, ast.NetworkDef):
                for p in net.parameters:
                    if _contains(p.span, line, char) and p.name in values:
                        return f"parameter `{p.name}` = `{show(values[p.name])}`"
        for stmt in self._statements():
            if isinstance(stmt, ast.Let) and _contains(stmt.span, line, char):
                return self._let_hover(stmt, values)
        for stmt in self._statements():
            if isinstance(stmt, ast.Call | ast.Section) and _contains(stmt.span, line, char):
                rows = self._units_at(stmt.span)
                if rows:
                    return "\n\n".join(_unit_text(r) for r in rows) + "\n\n" + self._saved([r["name"] for r in rows])
        return None

    def _let_hover(self, stmt: ast.Let, values: dict[str, Any]) -> str:
        text = render(stmt.value)
        if stmt.name not in values:
            return f"`{stmt.name}` = `{text}`"
        steps = [text]
        substituted = render(stmt.value, lambda n: values.get(n, n))
        if substituted != text:
            steps.append(substituted)
        if show(values[stmt.name]) not in steps:
            steps.append(show(values[stmt.name]))
        return f"`{stmt.name}` = `" + " = ".join(steps) + "`"

    def _use_hover(self, use: ast.Use) -> str:
        try:
            target = Path(self.path).parent / use.path
            path = target if target.is_file() else dsl.zoo_dir() / use.path
            text = path.read_text(encoding="utf-8")
        except OSError:
            return f"`{use.path}`: not found"
        head = [line for line in text.splitlines() if line.startswith(("#", "network", "layer"))][:6]
        return f"**{use.path}**\n\n```dnet\n" + "\n".join(head) + "\n```"

    def _saved(self, units: list[str]) -> str:
        """What these parts hold for the backward pass, under each lowering."""
        b, t = self.settings.batch, self.settings.dtype
        held = {name: sum(self._held(name).get(u, 0) for u in units) for name in LOWERINGS}
        rows = ", ".join(f"{name} {n / 2**20:,.1f} MiB" for name, n in held.items())
        return f"saved for backward at batch {b} ({t}): {rows}"

    # ---- inlay hints

    def inlay_hints(self) -> list[tuple[tuple[int, int], str]]:
        """After each statement: the channels and size it leaves (each part, where a statement repeats)."""
        out = []
        for stmt in self._statements():
            if isinstance(stmt, ast.Call | ast.Section):
                rows = self._units_at(stmt.span)
                if rows:
                    end = _range(stmt.span)[1]
                    shapes = ", ".join(f"{report.size((r['channels_out'], *r['size_out']))}" for r in rows)
                    out.append((end, f"  -> {shapes}"))
        return out

    # ---- completion

    def completions(self, line: int, char: int) -> list[tuple[str, str]]:
        """(label, kind) where kind is keyword, operation, argument, name, choice, file."""
        before = self.text.splitlines()[line][:char] if line < len(self.text.splitlines()) else ""
        if before.rstrip().startswith("use") and before.count('"') == 1:
            return [(p.name, "file") for p in sorted(dsl.zoo_dir().glob("*.dnet"))]
        out: list[tuple[str, str]] = []
        call = _open_call(before)
        if call is not None:
            out += [(f"{a} = ", "argument") for a in _arguments(call)]
        if before.rstrip().endswith("memory"):
            return [(c, "choice") for c in lowering_choices()]
        out += [(k, "operation") for k in sorted(_operations())]
        out += [(k, "keyword") for k in KEYWORDS]
        out += [(n, "name") for n in sorted(self._names_in_scope())]
        out += [(c, "choice") for c in (*CHOICES, *CONNECTIVITIES, *lowering_choices())]
        out += [(f, "function") for f in sorted(FUNCTIONS)]
        return out

    def _names_in_scope(self) -> set[str]:
        names: set[str] = set()
        for net in self.module.networks if self.module else []:
            if isinstance(net, ast.NetworkDef):
                names |= {p.name for p in net.parameters}
        names |= {s.name for s in self._statements() if isinstance(s, ast.Let)}
        names |= {layer.name for layer in self.module.layers} if self.module else set()
        names |= {n for use in self.module.uses for n, _ in use.names} if self.module else set()
        return names

    # ---- definitions and symbols

    def definition(self, line: int, char: int) -> tuple[str, Span] | None:
        """Where the name at a position is defined: a file for a `use`, a span for a let, parameter or layer."""
        if self.module is None:
            return None
        for use in self.module.uses:
            if _contains(use.span, line, char):
                target = Path(self.path).parent / use.path
                path = target if target.is_file() else dsl.zoo_dir() / use.path
                return str(path.resolve()), Span(str(path), 1, 1)
        word = _word_at(self.text, line, char)
        if word is None:
            return None
        for use in self.module.uses:
            if word in {n for n, _ in use.names}:
                return self.definition(use.span.line - 1, use.span.col - 1)
        for layer in self.module.layers:
            if layer.name == word:
                return self.path, layer.name_span
        for net in self.module.networks:
            if isinstance(net, ast.NetworkDef):
                for p in net.parameters:
                    if p.name == word:
                        return self.path, p.span
        for stmt in self._statements():
            if isinstance(stmt, ast.Let) and stmt.name == word:
                return self.path, stmt.name_span
        return None

    def symbols(self) -> list[tuple[str, str, Span]]:
        """(name, kind, span): networks, layers, and the lets inside networks."""
        if self.module is None:
            return []
        out = [(net.name, "network", net.span) for net in self.module.networks]
        out += [(layer.name, "layer", layer.span) for layer in self.module.layers]
        out += [(s.name, "let", s.span) for s in self._statements() if isinstance(s, ast.Let)]
        return out

    def formatted(self) -> str | None:
        """The file laid out by `dnetc fmt`, or None when it does not parse."""
        try:
            return dsl.format_source(self.text, self.path)
        except DnetError:
            return None


def _walk(body: tuple[ast.Statement, ...]) -> Iterator[ast.Statement]:
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.Repeat):
            if stmt.separator is not None:
                yield stmt.separator
            yield from _walk(stmt.body)


def _unit_text(row: dict[str, Any]) -> str:
    shape_in = report.size((row["channels_in"], *row["size_in"]))
    shape_out = report.size((row["channels_out"], *row["size_out"]))
    return (
        f"**{row['name']}** ({row['kind']}): {shape_in} -> {shape_out}, "
        f"{row['params']:,} parameters, {row['mult_adds']:,} multiply-adds"
    )


OP_TABLES = (spec.STEM_OPS, spec.LAYER_OPS, spec.HEAD_PART_OPS, spec.BODY_OPS)


def _operations() -> set[str]:
    """Every operation name the language knows (stems, layers, heads, blocks)."""
    names: set[str] = set(spec.JOINS)
    for table in OP_TABLES:
        names |= set(table)
    return names


def _arguments(op: str) -> list[str]:
    """The keyword arguments of an operation: the fields of its pydantic model."""
    for table in OP_TABLES:
        model = table.get(op)
        if model is not None:
            return [n for n, f in model.model_fields.items() if n != "kind" and not f.exclude]
    return []


def _open_call(before: str) -> str | None:
    """The operation whose parenthesis is open at the end of `before` (`dense(12, gro` -> dense)."""
    depth = 0
    for i in range(len(before) - 1, -1, -1):
        c = before[i]
        if c == ")":
            depth += 1
        elif c == "(":
            if depth == 0:
                j = i
                while j > 0 and (before[j - 1].isalnum() or before[j - 1] == "_"):
                    j -= 1
                return before[j:i] or None
            depth -= 1
    return None


def _word_at(text: str, line: int, char: int) -> str | None:
    lines = text.splitlines()
    if line >= len(lines):
        return None
    s = lines[line]
    start = end = min(char, len(s))
    while start > 0 and (s[start - 1].isalnum() or s[start - 1] == "_"):
        start -= 1
    while end < len(s) and (s[end].isalnum() or s[end] == "_"):
        end += 1
    return s[start:end] or None
