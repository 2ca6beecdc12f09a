"""docs/api.md and README's API example are real: their Python blocks run, in order, in an empty folder."""

from __future__ import annotations

import re

import pytest

from .conftest import ROOT

DOCS = ROOT / "docs" / "api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)


def test_the_api_examples_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "api_docs"}
    assert len(BLOCKS) >= 7
    for i, block in enumerate(BLOCKS):
        try:
            exec(compile(block, f"{DOCS}:block{i}", "exec"), namespace)
        except Exception as e:  # name the block that broke
            raise AssertionError(f"block {i} of docs/api.md fails: {e!r}\n{block}") from e
    out = capsys.readouterr().out
    assert "densenet_bc 40 ['stem', 'dense', 'transition', 'dense', 'transition', 'dense', 'head']" in out
    assert "(48, 16, 16)" in out and "% test error; checkpoints in runs/api-demo" in out
    assert (tmp_path / "densenet_bc_10.onnx").is_file() and (tmp_path / "runs" / "api-demo" / "config.json").is_file()


def test_the_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (block,) = re.findall(r"## The Python API\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    namespace: dict = {"__name__": "readme"}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["g"].graph["params"] == 15_324_406  # DenseNet-BC (L=250, k=24), as the zoo table says
    assert namespace["result"]["test_error"] < 20


def test_the_ecosystem_page_examples_run(tmp_path, monkeypatch):
    """docs/ecosystem.md's Python blocks (torchvision's feature extraction and FCN on a dnetc backbone)."""
    pytest.importorskip("torchvision")
    monkeypatch.chdir(tmp_path)
    page = ROOT / "docs" / "ecosystem.md"
    namespace: dict = {"__name__": "ecosystem_docs"}
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
        block = block.replace('"path/to/dnetc"', repr(str(ROOT)))
        exec(compile(block, f"{page}:block{i}", "exec"), namespace)
    assert tuple(namespace["maps"].shape) == (1, 1024, 7, 7)
    assert [o.shape[-1] for o in namespace["outputs"].values()] == [112, 56, 28, 14, 7]
