"""Diagrams: clusters per dense block, every dense connection drawn, collapsed when big."""

from __future__ import annotations

import re
import shutil

import pytest

from dnetc import compiler, dsl
from dnetc.compiler import viz


def edges(dot) -> set[tuple[str, str]]:
    return {(a.strip('"'), b.strip('"')) for a, b in re.findall(r"^\t(\S+) -> (\S+)$", dot.source, re.M)}


def test_layer_detail_draws_every_dense_connection():
    g = compiler.build_graph(dsl.load("figure1"))
    dot = viz.diagram(g, "layer")
    e = edges(dot)
    n = 5
    layer = [f"denseblock1.denselayer{i}" for i in range(1, n + 1)]
    into_layers = [(a, b) for a, b in e if b in layer]
    assert len(into_layers) == n * (n + 1) // 2
    assert len([1 for a, b in e if b == "denseblock1.concat"]) == n + 1
    for j in range(n):
        for i in range(j):
            assert (layer[i], layer[j]) in e
        assert ("stem", layer[j]) in e
    assert "subgraph cluster_denseblock1" in dot.source
    assert "5 layers, k=4" in dot.source


def test_block_detail_collapses_to_one_node_per_unit():
    g = compiler.build_graph(dsl.load("densenet121"))
    dot = viz.diagram(g)  # auto: 58 layers is big
    e = edges(dot)
    assert e == {
        ("input", "stem"),
        ("stem", "denseblock1"),
        ("denseblock1", "transition1"),
        ("transition1", "denseblock2"),
        ("denseblock2", "transition2"),
        ("transition2", "denseblock3"),
        ("denseblock3", "transition3"),
        ("transition3", "denseblock4"),
        ("denseblock4", "head"),
    }
    assert "24 layers, k=32" in dot.source and "256 -> 1024 channels" in dot.source and "14x14" in dot.source
    forced = viz.diagram(g, "layer")
    assert "denseblock3.denselayer24" in forced.source


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_rendered_formats(tmp_path, fmt):
    g = compiler.build_graph(dsl.load("figure1"))
    path = viz.render(viz.diagram(g), str(tmp_path / f"f.{fmt}"))
    with open(path, "rb") as f:
        head = f.read(8)
    assert {"svg": b"<?xml", "png": b"\x89PNG", "pdf": b"%PDF"}[fmt] in head or (fmt == "svg" and b"<svg" in head)


def test_dot_format_needs_no_executable(tmp_path):
    g = compiler.build_graph(dsl.load("figure1"))
    path = viz.render(viz.diagram(g), str(tmp_path / "f.dot"))
    with open(path) as f:
        assert f.read().startswith("digraph figure1")
