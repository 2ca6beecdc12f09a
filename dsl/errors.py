"""Diagnostics: every mistake in a spec becomes a located, rustc-style `DnetError`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """Where something stands in a source: 1-based line and column, end column exclusive."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class DnetError(Exception):
    """A user's mistake in a spec, an import or an override, with where it is and how to fix it."""

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        *,
        source: str | None = None,
        label: str = "",
        help: str | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.source = source
        self.label = label
        self.help = help
        self.notes = list(notes)

    @property
    def file(self) -> str | None:
        return self.span.file if self.span else None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def col(self) -> int | None:
        return self.span.col if self.span else None

    def with_source(self, source: str) -> DnetError:
        """Attach the text of the file the span points into (kept if already set)."""
        if self.source is None:
            self.source = source
        return self

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        """Render as `file:line:col: error: ...`, the line, a caret, then notes and help."""
        head = f"{self.span}: error: {self.message}" if self.span else f"error: {self.message}"
        out = [head]
        if self.span and self.source is not None:
            lines = self.source.splitlines()
            if 1 <= self.span.line <= len(lines):
                text = lines[self.span.line - 1].expandtabs(1)
                gutter = " " * len(str(self.span.line))
                width = 1
                if self.span.end_col and (self.span.end_line in (None, self.span.line)):
                    width = max(1, self.span.end_col - self.span.col)
                width = min(width, max(1, len(text) - self.span.col + 1))
                caret = " " * (self.span.col - 1) + "^" * width
                out += [
                    f"{gutter} |",
                    f"{self.span.line} | {text}",
                    f"{gutter} | {caret}{(' ' + self.label) if self.label else ''}",
                ]
        pad = " " * (len(str(self.span.line)) + 1 if self.span and self.source is not None else 0)
        out += [f"{pad}= note: {n}" for n in self.notes]
        if self.help:
            out.append(f"{pad}= help: {self.help}")
        return "\n".join(out)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelled name, or None when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=3, cutoff=0.6)
    if not close:
        return None
    # the clearly closest alone: `dnese` is `dense`, not also `msdense`
    score = [difflib.SequenceMatcher(None, word, c).ratio() for c in close]
    close = [c for c, r in zip(close, score, strict=True) if r >= score[0] - 0.1]
    return "did you mean " + " or ".join(f"`{c}`" for c in close) + "?"
