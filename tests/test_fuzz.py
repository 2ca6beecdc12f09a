"""Mutated zoo specs: every one gives a valid network or a located DnetError, never anything else."""

from __future__ import annotations

import random
import re

import pytest

import compiler
import dsl

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
]


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


@pytest.mark.parametrize("seed", range(4))
def test_mutated_specs_give_a_network_or_a_located_error(seed):
    rng = random.Random(seed)
    outcomes = {"valid": 0, "error": 0}
    for _ in range(600):
        name, text = rng.choice(sorted(SOURCES.items()))
        for _ in range(rng.randint(1, 3)):
            text = mutate(text, rng)
        filename = str(dsl.zoo_dir() / name)
        try:
            compiler.build_graph(dsl.parse(text, filename))
            outcomes["valid"] += 1
        except dsl.DnetError as e:
            outcomes["error"] += 1
            assert e.file is not None and e.line >= 1 and e.col >= 1, (text, str(e))
            rendered = str(e)
            assert rendered.startswith(f"{e.file}:{e.line}:{e.col}: error: "), rendered
            assert "__ANON" not in rendered and "Traceback" not in rendered
    assert outcomes["valid"] > 0 and outcomes["error"] > 0, outcomes


@pytest.mark.parametrize(
    "text",
    [
        "network n { input 3 x 8 x 8 dense(" + "-" * 5000 + "1, 4) }",
        "network n { input 3 x 8 x 8 dense(" + "1 + (" * 2000 + "1" + ")" * 2000 + ", 4) }",
        "network n { input 3 x 8 x 8 dense(" + "[" * 3000 + "1" + "]" * 3000 + ", 4) }",
        "network n { input 3 x 100000 x 100000 stem conv(3, 8) dense(2, 4) }",
        "network n { input 3 x 8 x 8 repeat 1000 { dense(1000, 4) } }",
        "network n(depth = 1000000) { input 3 x 32 x 32 dense((depth - 4) / 6, 12) }",
    ],
)
def test_absurd_specs_end_in_a_clear_error_or_bounded_work(text):
    try:
        compiler.build_graph(dsl.parse(text))
    except dsl.DnetError as e:
        assert e.line is not None and e.col is not None
