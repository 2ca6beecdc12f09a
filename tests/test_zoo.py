"""The zoo against the published counts, and the graph's counts against torchinfo's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchinfo

from dnetc import compiler, dsl
from dnetc.compiler import report

from .conftest import ZOO_DISTINCT

REFERENCE = json.loads((Path(__file__).parent / "reference.json").read_text())
ZOO = dsl.zoo_names()
ROOT = Path(__file__).resolve().parent.parent


def graph(name: str):
    return compiler.build_graph(dsl.load(name))


def test_zoo_has_every_published_model():
    expected = (
        set(REFERENCE["cifar_params_millions"])
        | set(REFERENCE["imagenet_exact"])
        | set(REFERENCE["imagenet_about_millions"])
    )
    assert expected <= set(ZOO)
    for name in expected:
        assert (dsl.zoo_dir() / f"{name}.dnet").is_file()


@pytest.mark.parametrize("name", sorted(REFERENCE["cifar_params_millions"]))
def test_cifar_params_to_published_rounding(name):
    g = graph(name)
    assert round(g.graph["params"] / 1e6, 1) == REFERENCE["cifar_params_millions"][name]
    assert g.nodes["input"]["shape"] == (3, 32, 32)
    assert g.nodes["classifier"]["shape"] == (10,)


@pytest.mark.parametrize("name", sorted(REFERENCE["imagenet_exact"]))
def test_imagenet_exact_counts(name):
    g = graph(name)
    ref = REFERENCE["imagenet_exact"][name]
    assert (g.graph["params"], g.graph["macs"]) == (ref["params"], ref["mult_adds"])


@pytest.mark.parametrize("name", sorted(REFERENCE["imagenet_about_millions"]))
def test_imagenet_approximate_params(name):
    # the reference gives "about N M": within one million
    assert abs(graph(name).graph["params"] / 1e6 - REFERENCE["imagenet_about_millions"][name]) < 1.0


MONAI = [(n, int(d)) for n, dims in REFERENCE["monai_params"].items() if not n.startswith("_") for d in dims]
SIZES = {1: 4096, 2: 224, 3: 96}


@pytest.mark.parametrize(("name", "dims"), MONAI, ids=[f"{n}-{d}d" for n, d in MONAI])
def test_monai_densenets_in_1d_2d_3d(name, dims):
    """MONAI's DenseNet121/169/201/264 with spatial_dims 1-3, one channel in and two classes out."""
    zoo = dsl.load(name)
    net = dsl.load(name, channels=1, classes=2, dims=dims, size=SIZES[dims])
    assert len(net.input.size) == dims and zoo.parameters["blocks"] == net.parameters["blocks"]
    assert compiler.build_graph(net).graph["params"] == REFERENCE["monai_params"][name][str(dims)]
    own = dsl.zoo_dir() / f"{name}_{dims}d.dnet"
    if own.is_file():  # the zoo's members for volumes and signals are these networks
        assert dsl.load(own.stem).parameters == net.parameters


def test_monai_itself_agrees():
    monai = pytest.importorskip("monai.networks.nets")
    for name, dims in MONAI:
        cls = getattr(monai, name.replace("densenet", "DenseNet"))
        model = cls(spatial_dims=dims, in_channels=1, out_channels=2)
        assert sum(p.numel() for p in model.parameters()) == REFERENCE["monai_params"][name][str(dims)]


TIMM = {k: v for k, v in REFERENCE["timm_params"].items() if not k.startswith("_")}


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_deep_stem_and_blur_pool_models(name):
    assert graph(name).graph["params"] == TIMM[name]


def test_timm_itself_agrees():
    timm = pytest.importorskip("timm")
    from timm.layers import BlurPool2d

    from dnetc.compiler.modules import BlurPool

    for name, params in TIMM.items():
        assert sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters()) == params
    x = torch.randn(2, 8, 17, 16)
    assert torch.equal(BlurPool(8, 3, 2, rank=2)(x), BlurPool2d(8, 3, 2)(x))


def test_classes_is_a_parameter_of_the_cifar_models():
    assert dsl.load("densenet_bc_190_40", classes=100).parameters["classes"] == 100
    g = compiler.build_graph(dsl.load("densenet_bc_190_40", classes=100))
    assert g.nodes["classifier"]["shape"] == (100,)


@pytest.mark.parametrize("name", ZOO_DISTINCT)
def test_graph_counts_equal_torchinfo(name):
    g = graph(name)
    model = compiler.compile(name)
    with torch.no_grad():
        stats = torchinfo.summary(model, input_size=(1, *g.nodes["input"]["shape"]), verbose=0)
    assert stats.total_params == g.graph["params"]
    assert stats.total_mult_adds == g.graph["macs"]
    per_unit = {u["name"]: u["params"] for u in report.units(g)}
    for unit, params in per_unit.items():
        if unit.startswith(("denseblock", "transition")):
            assert sum(p.numel() for p in model.features.get_submodule(unit).parameters()) == params


def test_the_zoo_page_table_is_the_tools_output():
    page = (ROOT / "docs" / "zoo.md").read_text()
    table = re.search(r"<!-- zoo:start -->\n(.*?)\n<!-- zoo:end -->", page, re.S)
    assert table, "docs/zoo.md has no zoo table between <!-- zoo:start --> and <!-- zoo:end -->"
    assert table.group(1).strip() == report.zoo_table([graph(n) for n in ZOO]).strip()
