"""The examples in README.md and docs/ are real: each parses and compiles."""

from __future__ import annotations

import re

import pytest

import compiler
import dsl

from .conftest import ROOT

BLOCKS = [
    (path.name, i, block)
    for path in (ROOT / "README.md", ROOT / "docs" / "language.md")
    for i, block in enumerate(re.findall(r"```dnet\n(.*?)```", path.read_text(), re.S))
]


@pytest.mark.parametrize(("doc", "index", "text"), BLOCKS, ids=[f"{d}#{i}" for d, i, _ in BLOCKS])
def test_example_compiles(doc, index, text):
    net = dsl.parse(text, str(dsl.zoo_dir() / "example.dnet"))
    g = compiler.build_graph(net)
    if net.name in dsl.zoo_names():  # an example that shows a zoo model agrees with it
        assert g.graph["params"] == compiler.build_graph(dsl.load(net.name)).graph["params"]


def test_there_are_examples():
    assert len(BLOCKS) >= 7


def test_readme_shows_the_benchmark_as_measured():
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"<!-- memory:start -->\n(.*?)<!-- memory:end -->", readme, re.S)
    assert shown, "README.md has no benchmark table between <!-- memory:start --> and <!-- memory:end -->"
    assert shown.group(1).strip() == (ROOT / "bench" / "results" / "memory-cpu.md").read_text().strip()
