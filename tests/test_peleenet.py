"""PeleeNet: the two-way dense layer, the stem block, transitions without compression."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dnetc import compiler, dsl
from dnetc.compiler.emit import emit
from dnetc.compiler.modules import StemBlock, TwoWayDenseLayer

REFERENCE = json.loads((Path(__file__).parent / "reference.json").read_text())["peleenet"]


def conv_bn(c_in: int, c_out: int, kernel: int, positions: int) -> tuple[int, int]:
    """Parameters and multiply-adds of Conv (no bias) + BN, in torchinfo's convention."""
    weights = c_in * c_out * kernel * kernel
    return weights + 2 * c_out, weights * positions + 2 * c_out


def paper_counts() -> tuple[int, int]:
    """PeleeNet counted from the paper's description, independently of dnetc's graph."""
    parts = [conv_bn(3, 32, 3, 112 * 112), conv_bn(32, 16, 1, 112 * 112), conv_bn(16, 32, 3, 56 * 56)]
    parts.append(conv_bn(64, 32, 1, 56 * 56))
    channels, positions, half = 32, 56 * 56, 16
    for stage, (layers, width) in enumerate(zip([3, 4, 8, 6], [1, 2, 4, 4], strict=True)):
        for _ in range(layers):
            inter = int(half * width / 4) * 4
            inter = int(channels / 8) * 4 if inter > channels / 2 else inter
            parts += [conv_bn(channels, inter, 1, positions), conv_bn(inter, half, 3, positions)] * 2
            parts.append(conv_bn(half, half, 3, positions))
            channels += 2 * half
        parts.append(conv_bn(channels, channels, 1, positions))
        positions //= 4 if stage < 3 else 1
    parts.append((channels * 1000 + 1000,) * 2)
    return sum(p for p, _ in parts), sum(m for _, m in parts)


def test_counts_are_the_papers():
    g = compiler.build_graph(dsl.load("peleenet"))
    assert (g.graph["params"], g.graph["macs"]) == paper_counts() == (2_802_248, 507_768_296)
    assert round(g.graph["params"] / 1e6, 1) == REFERENCE["params_millions"]
    assert round(g.graph["macs"] / 1e6) == REFERENCE["mult_adds_millions"]


def test_structure():
    g = compiler.build_graph(dsl.load("peleenet"))
    assert g.nodes["features.stemblock.stem3.relu"]["shape"] == (32, 56, 56)
    widths = [g.nodes[f"features.denseblock{b}.denselayer2.branch1a.conv"]["shape"][0] for b in (1, 2, 3, 4)]
    assert widths == [16, 32, 64, 64]  # k/2 x (1, 2, 4, 4)
    assert g.nodes["features.denseblock1.denselayer1.new"]["shape"] == (32, 56, 56)
    assert [g.nodes[f"features.transition{t}.conv"]["shape"][0] for t in (1, 2, 3, 4)] == [128, 256, 512, 704]
    assert g.nodes["features.transition4.relu"]["shape"] == (704, 7, 7)  # the last transition keeps the size
    model = emit(g)
    assert isinstance(model.features.stemblock, StemBlock)
    assert isinstance(model.features.denseblock1.denselayer1, TwoWayDenseLayer)
    assert list(model.features.transition1._modules) == ["conv", "norm", "relu", "pool"]  # Conv-BN-ReLU


def test_the_first_layer_width_is_capped_at_half_its_input():
    g = compiler.build_graph(dsl.load("peleenet", stem=16))
    # k/2 x 1 = 16 would exceed half of 16 input channels: int(16 / 8) * 4 = 8, as the authors' code
    assert g.nodes["features.denseblock1.denselayer1.branch1a.conv"]["shape"][0] == 8


def test_peleenet_trains_a_step_in_every_lowering():
    net = dsl.load("peleenet", blocks=[1, 1, 1, 1], size=64, classes=5)
    for memory in ("naive", "checkpoint", "shared"):
        torch.manual_seed(0)
        model = compiler.compile(net, memory=memory)
        model(torch.randn(2, 3, 64, 64)).sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_two_way_layers_refuse_what_they_do_not_have():
    text = "network n {{ input 3 x 32 x 32 stem conv(3, 32) dense(2, {}, two_way = true) }}"
    for args in ("32, bottleneck = 2, dropout = 0.2", "31, bottleneck = 2", "32, bottleneck = none"):
        with pytest.raises(dsl.DnetError, match="a two-way dense layer takes an even growth rate"):
            compiler.build_graph(dsl.parse(text.format(args)))
