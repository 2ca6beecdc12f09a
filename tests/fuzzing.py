"""What the fuzz tests and bench/fuzz.py share: the zoo's sources, ways to mutate them (characters,
tokens, lines, bytes), specs generated from the grammar itself, and the oracle every input must pass."""

from __future__ import annotations

import contextlib
import random
import re
import signal
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from dnetc import compiler, dsl
from dnetc.dsl import syntax

SOURCES = {p.name: p.read_text() for p in sorted(dsl.zoo_dir().glob("*.dnet"))}
PIECES = [
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ",",
    "=",
    "x",
    "/",
    "//",
    "%",
    "*",
    "-",
    "+",
    "#",
    '"',
    "'",
    "\n",
    " ",
    "0",
    "-1",
    "1.5",
    "1e400",
    "99999999999999999999",
    "none",
    "true",
    "dense",
    "transition",
    "repeat",
    "for",
    "in",
    "let",
    "input",
    "stem",
    "head",
    "use",
    "network",
    "separated by",
    "3x3",
    "3x3x3",
    "é",
    "\x00",
    "layer",
    "concat",
    "add",
    "if",
    "else",
    "and",
    "not",
    "==",
    "<",
    "connect = harmonic(1.7)",
    "connect = window(2)",
    "connect = partial(0.5)",
    "aggregate",
    "exponential",
    "layer = ",
    "fuse = ",
    "residual = true",
    "groups = 3",
    "dwconv",
    "se(0.25)",
    "shuffle(2)",
    "exit",
    "scales(8, [1, 2])",
    "msdense(2, 4)",
    "connect = dual(4)",
    "entry = ",
]

# layers of the generated specs' own: branches, depthwise convs, squeeze-excitation
GENERATED_LAYERS = """layer gen_plain(growth) { norm act conv(3, growth) }
layer gen_branches(growth, width = 2) { norm act conv(1, width * growth) concat { conv(3, growth) } { dwconv norm } }
layer gen_residual(growth) { conv(1, growth) norm act add { } { dwconv norm act } se(0.5) }
layer gen_entry(channels) { norm act conv(1, channels) }
"""
CONNECTIVITIES = ["all", "window(2)", "exponential", "harmonic(1.6)", "aggregate", "dual(2)"]
# what a connectivity needs beside it: DPN's dual path starts from an entry layer of more than r channels
BESIDE = {"dual(2)": ", entry = gen_entry(5)"}
LAYER_CHOICES = ["", "gen_plain", "gen_branches", "gen_residual"]


def mutate(text: str, rng: random.Random) -> str:
    if not text.strip():
        return text + rng.choice(PIECES)
    kind = rng.randrange(6)
    if kind == 0:  # delete a span
        i = rng.randrange(len(text))
        return text[:i] + text[i + rng.randint(1, 8) :]
    if kind == 1:  # insert a piece
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(PIECES) + text[i:]
    if kind == 2:  # replace a number
        numbers = list(re.finditer(r"\d+(\.\d+)?", text))
        if numbers:
            m = rng.choice(numbers)
            return (
                text[: m.start()]
                + rng.choice(["0", "1", "2", "7", "1000", "100000", "0.5", "3.3", "-2"])
                + text[m.end() :]
            )
        return text
    if kind == 3:  # replace a word
        words = list(re.finditer(r"[A-Za-z_]+", text))
        if not words:
            return text
        m = rng.choice(words)
        return text[: m.start()] + rng.choice([*PIECES, m.group()[::-1], m.group()[:-1]]) + text[m.end() :]
    lines = text.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    if kind == 4:  # drop or duplicate a line
        return "".join(lines[:i] + (lines[i : i + 1] * 2 if rng.random() < 0.5 else []) + lines[i + 1 :])
    j = rng.randrange(len(lines))  # swap two lines
    lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Byte-level damage: flipped bits, random bytes (invalid UTF-8 among them), cuts and repeats."""
    if not data:
        return bytes([rng.randrange(256)])
    kind = rng.randrange(4)
    i = rng.randrange(len(data))
    if kind == 0:
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if kind == 1:
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))) + data[i:]
    if kind == 2:
        return data[:i]
    j = min(len(data), i + rng.randint(1, 64))
    return data[:j] + data[i:j] * rng.randint(2, 50) + data[j:]


# names and literals a spec uses, so that generated text reaches validation and not only the parser
WORDS = sorted({*re.findall(r"[A-Za-z_]\w*", " ".join(SOURCES.values()))} - {"network", "use", "from"})


@st.composite
def specs(draw: st.DrawFn) -> str:
    """Valid specs of every dimension, normalisation, activation and block layout, small enough to run."""
    rank = draw(st.integers(1, 3))
    size = draw(st.sampled_from([8, 12, 16]) if rank < 3 else st.just(8))
    lines = [*GENERATED_LAYERS.splitlines(), "network generated {"]
    lines.append(f"    input {draw(st.integers(1, 4))} x " + " x ".join([str(size)] * rank))
    lines.append(f"    normalization {draw(st.sampled_from(['batch', 'layer', 'group(1)']))}")
    lines.append(f"    activation {draw(st.sampled_from(['relu', 'prelu', 'silu', 'gelu']))}")
    stem = draw(st.integers(4, 16))
    lines.append(f"    stem conv({draw(st.sampled_from([1, 3]))}, {stem})")  # θ=0.3 keeps >= 1
    blocks = draw(st.integers(1, 3))
    head = draw(st.booleans())
    classes = draw(st.integers(1, 20))
    # early exits, which need a head to match; exit after a block is one of these, drawn per block
    exits = [
        "",
        f"    exit classifier({classes})",
        f"    exit {{ conv(3, 8, stride = 2) linear_classifier({classes}) }}",
    ]
    if draw(st.booleans()):  # MSDNet's grid of scales: msdense blocks instead of dense ones
        factors = draw(st.sampled_from([[1, 2], [1, 1, 2], [1, 2, 4]]))
        width = f"[{', '.join('1' for _ in factors)}]"
        lines.append(f"    scales({stem}, [{', '.join(map(str, factors))}])")
        for _ in range(blocks):
            bottlenecks = draw(st.sampled_from(["none", width]))
            growth, reduction = 2 * draw(st.integers(1, 4)), draw(st.sampled_from(["0", "0.5"]))
            layers = draw(st.integers(1, 3))
            lines.append(f"    msdense({layers}, {growth}, bottlenecks = {bottlenecks}, reduction = {reduction})")
            if head:
                lines.append(draw(st.sampled_from(exits[:2])))
        if head:
            lines.append(f"    head classifier({classes})")
        return "\n".join([*lines, "}"])
    for b in range(blocks):
        bottleneck = draw(st.sampled_from(["none", "1", "2", "4"]))
        dropout = draw(st.sampled_from(["0", "0.2"]))
        connect = draw(st.sampled_from([*CONNECTIVITIES, "partial(0.5)"] if b == 0 else CONNECTIVITIES))
        layer = draw(st.sampled_from(LAYER_CHOICES))
        # a layer of the spec's own says its own widths: the built-in layer's settings go with the built-in
        own = f", layer = {layer}" if layer else f", bottleneck = {bottleneck}, dropout = {dropout}"
        beside = BESIDE.get(connect, "")
        lines.append(
            f"    dense({draw(st.integers(1, 4))}, {draw(st.integers(1, 12))}, connect = {connect}{own}{beside})"
        )
        if b < blocks - 1:
            # a window's or SparseNet's block may return as few as 2 channels: 0.3 of them would be none
            small = connect in ("window(2)", "exponential")
            choices = ["0.5", "1", "0.75"] if small else ["0.5", "1", "0.75", "0.3"]
            lines.append(f"    transition(compression = {draw(st.sampled_from(choices))})")
        if head and rank == 2:
            lines.append(draw(st.sampled_from(exits)))
    if head:
        lines.append(f"    head classifier({classes})")
    return "\n".join([*lines, "}"])


def grammar_specs() -> st.SearchStrategy[str]:
    """Texts derived from dnet.lark by hypothesis, every terminal set apart by spaces; names drawn
    from the zoo's vocabulary, numbers small or absurd, imports of zoo files or of nothing."""
    grammar = Lark(syntax.GRAMMAR.read_text(encoding="utf-8"), start="start")
    explicit: dict[str, st.SearchStrategy[str]] = {}
    for t in grammar.terminals:
        if t.pattern.type == "str":
            explicit[t.name] = st.just(t.pattern.value)
        else:
            explicit[t.name] = st.from_regex(t.pattern.to_regexp(), fullmatch=True)
    names = sorted(SOURCES)
    explicit |= {
        "NAME": st.sampled_from(WORDS) | explicit["NAME"],
        "INT": st.sampled_from(["0", "1", "2", "3", "4", "12", "32", "1000", "100000", "99999999999999999999"]),
        "STRING": st.sampled_from([f'"{n}"' for n in names] + ['""', '"nowhere.dnet"', '"../x.dnet"', '"/etc/passwd"']),
        "COMMENT": st.just("# a comment\n"),
    }
    explicit = {k: v.map(lambda s: f" {s} ") for k, v in explicit.items()}
    return from_lark(grammar, explicit=explicit)


def check(source: str | Path, filename: str | None = None) -> str:
    """The oracle, for spec text (named `filename`) or a spec file: a valid network ("valid") or a
    DnetError located at a line and column of the input and rendered as file:line:col: error: ...
    ("error"); anything else fails the caller's assertion."""
    try:
        if isinstance(source, Path):
            network = dsl.load(source)
        else:
            network = dsl.parse(source, filename) if filename else dsl.parse(source)
        compiler.build_graph(network)
    except dsl.DnetError as e:
        assert e.line is not None and e.col is not None and e.line >= 1 and e.col >= 1, (source, str(e))
        rendered = str(e)
        where = e.file or "<string>"
        assert rendered.startswith(f"{where}:{e.line}:{e.col}: error: "), rendered
        assert "__ANON" not in rendered and "Traceback" not in rendered, rendered
        assert e.file is not None or (filename is None and not isinstance(source, Path)), rendered
        return "error"
    return "valid"


@contextlib.contextmanager
def bounded(seconds: float = 30, megabytes: int = 512) -> Iterator[None]:
    """Fails what runs longer than `seconds` (SIGALRM, main thread) or whose Python allocations peak
    above `megabytes` (tracemalloc): a hang or a runaway allocation is a finding, not a stalled run."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < megabytes * 2**20, f"Python allocations peaked at {peak / 2**20:.0f} MiB"
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
