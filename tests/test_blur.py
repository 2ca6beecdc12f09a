"""Blur pooling (anti-aliased downsampling) in the stem and in transitions, in 1D, 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from dnetc import compiler, dsl
from dnetc.compiler.emit import emit
from dnetc.compiler.modules import BlurPool

from .test_memory import compare
from .test_source import BLURRED, check_equal


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_blur_pool_keeps_constants_and_halves_sizes(rank):
    pool = BlurPool(4, kernel=3, stride=2, rank=rank)
    x = torch.full((2, 4, *(9,) * rank), 3.0)
    y = pool(x)
    assert y.shape == (2, 4, *(5,) * rank) and torch.allclose(y, torch.full_like(y, 3.0))
    assert not list(pool.state_dict())  # the filter is fixed, not a weight


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_blurred_networks_count_lower_and_emit(dims, tmp_path):
    net = dsl.parse(BLURRED, dims=dims, size=16 if dims < 3 else 12)
    g = compiler.build_graph(net)
    assert g.nodes["features.transition1.pool"]["op"] == "blurpool"
    model = emit(g)
    out = model(torch.randn(2, *g.nodes["input"]["shape"]))
    assert out.shape == (2, 5)
    compare(net, torch.float64)
    check_equal(net, tmp_path, memory_efficient=False)


def test_blur_pool_needs_room_to_reflect():
    with pytest.raises(dsl.DnetError, match="a blur pool pads by reflection"):
        compiler.build_graph(dsl.parse(BLURRED, size=2))


def test_densenetblur121d_runs_and_blurs_transitions_on_request():
    net = dsl.load("densenetblur121d", blocks=[2, 2, 2, 2], size=64, blur_transitions=True)
    g = compiler.build_graph(net)
    assert [g.nodes[f"features.transition{i}.pool"]["op"] for i in (1, 2, 3)] == ["blurpool"] * 3
    assert compiler.compile(net)(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
