"""The examples in README.md and docs/ are real: each parses and compiles."""

from __future__ import annotations

import re

import pytest

from dnetc import compiler, dsl

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


@pytest.mark.parametrize(
    ("doc", "table"),
    [("docs/performance.md", t) for t in ("memory-cpu", "memory-cpu-quick", "speed-cpu", "trainer-cpu", "fused-cpu")]
    + [("docs/training.md", "trainer-cpu"), ("docs/editor.md", "lsp-cpu"), ("docs/ecosystem.md", "weights-cpu")],
)
def test_the_docs_show_the_benchmarks_as_measured(doc, table):
    page = (ROOT / doc).read_text()
    key = table.split("-")[0] if table == "memory-cpu" else table
    shown = re.search(rf"<!-- {key}:start -->\n(.*?)<!-- {key}:end -->", page, re.S)
    assert shown, f"{doc} has no table between <!-- {key}:start --> and <!-- {key}:end -->"
    assert shown.group(1).strip() == (ROOT / "bench" / "results" / f"{table}.md").read_text().strip()


def test_the_performance_page_quotes_the_trainer_as_measured():
    """The targets' figures are the committed results', not numbers typed in."""
    import json

    page = (ROOT / "docs" / "performance.md").read_text()
    rows = json.loads((ROOT / "bench" / "results" / "trainer-cpu.json").read_text())["rows"]
    trainer = next(r for r in rows if r["kind"] == "trainer")
    assert f"**{trainer['vs_hand_loop']:.3f}x** the hand loop's time" in page
    decode = json.loads((ROOT / "bench" / "results" / "decode-cpu.json").read_text())
    assert f"about\n{decode['sixteen_cores']:,.0f} images/s" in page


def test_the_reliability_report_shows_the_figures_as_measured():
    """docs/reliability.md quotes bench/results/faults.json and fuzz.json: the same counts."""
    import json

    doc = (ROOT / "docs" / "reliability.md").read_text()
    faults = json.loads((ROOT / "bench" / "results" / "faults.json").read_text())
    for mode, s in faults["summary"].items():
        assert f"| {mode}: " in doc and f"bit-identical in {s['identical']} of {s['trials']}" in doc, mode
    fuzz = json.loads((ROOT / "bench" / "results" / "fuzz.json").read_text())
    for outcome, count in fuzz["outcomes"].items():
        assert f"{outcome}: {count:,}" in doc, outcome
