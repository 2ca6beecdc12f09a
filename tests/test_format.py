"""`dnetc fmt`: one canonical layout, comments kept, the same spec before and after."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnetc import dsl
from dnetc.dsl.format import comments, format_source, same_tree
from dnetc.dsl.syntax import parse_module

from .conftest import ROOT, run_cli
from .fuzzing import SOURCES, mutate

MESSY = """# a family   \n\
network  tiny( growth=4 ,classes = 10,)   {  # the header
  input 3x32x32
    let layers=( 2*3 ) + ((1))   # redundant parentheses

  # the stem
  stem { conv( 3x3 , 2*growth ) }
  repeat 2 separated by transition( compression=0.5 ) { dense(layers, growth, bottleneck = none) }
  head { classifier ( classes ) }
    # before the closing brace
}
use densenet_bc from "densenet_bc.dnet"
network other=densenet_bc(depth=40)   # an alias
# the end
"""

CANONICAL = """# a family
network tiny(growth = 4, classes = 10) {  # the header
    input 3 x 32 x 32
    let layers = 2 * 3 + 1  # redundant parentheses

    # the stem
    stem conv(3x3, 2 * growth)
    repeat 2 separated by transition(compression = 0.5) {
        dense(layers, growth, bottleneck = none)
    }
    head classifier(classes)
    # before the closing brace
}
use densenet_bc from "densenet_bc.dnet"
network other = densenet_bc(depth = 40)  # an alias
# the end
"""


def test_the_canonical_layout():
    assert format_source(MESSY) == CANONICAL
    assert format_source(CANONICAL) == CANONICAL


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_zoo_files_are_formatted(name):
    assert format_source(SOURCES[name], name) == SOURCES[name], f"run `dnetc fmt archs/{name}`"


def test_needed_parentheses_stay_and_long_headers_break():
    text = "network n(a = (1 - 2) - (3 - 4), b = -(1 + 2) * 3, c = [1, 2][0], d = (a // 2) % 3) {\n}\n"
    out = format_source(text)
    assert "a = 1 - 2 - (3 - 4), b = -(1 + 2) * 3, c = [1, 2][0], d = a // 2 % 3" in out
    long = "network n(" + ", ".join(f"parameter{i} = {i}" for i in range(8)) + ") { input 3 x 8 }"
    assert format_source(long).splitlines()[:3] == ["network n(", "    parameter0 = 0,", "    parameter1 = 1,"]


def strip_comments(text: str) -> str:
    return "\n".join(
        re.sub(r"#.*", "", line).rstrip() for line in text.splitlines() if not line.lstrip().startswith("#")
    )


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(SOURCES)), st.randoms(use_true_random=False))
def test_any_whitespace_gives_the_same_layout(name, rng):
    """Re-spacing a zoo file at random (no blank lines) does not change its formatted text."""
    plain = strip_comments(SOURCES[name])
    tokens = re.findall(r'"[^"]*"|//|==|!=|<=|>=|\d+\.\d+|\w+|[^\s\w]', plain)
    respaced = tokens[0] + "".join(rng.choice([" ", "  ", "\t", "\n", " \n    "]) + t for t in tokens[1:])
    assert format_source(respaced) == format_source(plain)


@pytest.mark.parametrize("seed", range(300))
def test_mutated_specs_format_to_the_same_tree(seed):
    """Any text that parses formats without loss: same tree, same comments, and again unchanged."""
    rng = random.Random(seed)
    name = rng.choice(sorted(SOURCES))
    text = SOURCES[name]
    for _ in range(rng.randint(1, 4)):
        text = mutate(text, rng)
    try:
        before = parse_module(text)
    except dsl.DnetError:
        return
    out = format_source(text)
    assert same_tree(before, parse_module(out))
    assert " ".join(c.text for c in comments(out)) == " ".join(c.text for c in comments(text))
    assert format_source(out) == out


def test_fmt_check_rewrite_and_errors(tmp_path):
    messy, clean, broken = tmp_path / "messy.dnet", tmp_path / "clean.dnet", tmp_path / "broken.dnet"
    messy.write_text(MESSY)
    clean.write_text(CANONICAL)
    broken.write_text("network n { repeat 3 { dense(2, 4) }\n")
    check = run_cli("fmt", "--check", str(messy), str(clean))
    assert check.returncode == 1 and f"would reformat {messy}" in check.stdout
    assert str(clean) not in check.stdout and messy.read_text() == MESSY
    diff = run_cli("fmt", "--diff", str(tmp_path / "messy.dnet"))
    assert diff.returncode == 1 and "+    input 3 x 32 x 32" in diff.stdout
    bad = run_cli("fmt", str(broken))
    assert bad.returncode == 2 and "broken.dnet:1:37: error: unexpected end of file" in bad.stderr
    assert broken.read_text().startswith("network n {")
    done = run_cli("fmt", str(tmp_path))
    assert done.returncode == 2 and f"reformatted {messy}" in done.stdout  # the broken file still counts
    assert messy.read_text() == CANONICAL and run_cli("fmt", "--check", str(messy), str(clean)).returncode == 0


def test_fmt_reads_standard_input():
    result = subprocess.run(
        [sys.executable, "-m", "dnetc.runtime.cli", "fmt", "-"], input=MESSY, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and result.stdout == CANONICAL


def test_zoo_passes_fmt_check_as_ci_runs_it():
    result = run_cli("fmt", "--check", "archs")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_docs_examples_are_formatted():
    for path in (ROOT / "README.md", ROOT / "docs" / "language.md"):
        for block in re.findall(r"```dnet\n(.*?)```", path.read_text(), re.S):
            assert format_source(block) == block, f"{path.name}: run its examples through `dnetc fmt -`"


def test_comments_on_consecutive_lines_are_aligned():
    text = "network n {\n    input 3 x 8  # a\n    stem conv(3, 8)   # b\n\n    dense(2, 4)      # c\n}\n"
    assert format_source(text).splitlines()[1:5] == [
        "    input 3 x 8      # a",
        "    stem conv(3, 8)  # b",
        "",
        "    dense(2, 4)  # c",
    ]
