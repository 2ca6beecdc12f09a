"""`normalization` and `activation`: every choice counts, lowers, emits and estimates as batch/ReLU do."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
import torchinfo
from torch import nn

from dnetc import compiler, dsl
from dnetc.compiler.emit import emit
from dnetc.compiler.estimate import estimate
from dnetc.compiler.lowerings import LOWERINGS

from .test_memory import REDUCED, compare, measured_saved_bytes
from .test_source import check_equal

NORMS = ["batch", "instance", "layer", "group(4)"]
ACTS = ["relu", "prelu", "silu", "gelu"]
CHOICES = list(itertools.product(NORMS, ACTS))
IDS = [f"{n}-{a}" for n, a in CHOICES]
NORM_TYPES = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d, "layer": nn.GroupNorm, "group(4)": nn.GroupNorm}
ACT_TYPES = {"relu": nn.ReLU, "prelu": nn.PReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def network(norm: str, act: str, **more) -> dsl.Network:
    return dsl.load("densenet_bc", **REDUCED["densenet_bc"], norm=norm, act=act, **more)


@pytest.mark.parametrize(("norm", "act"), CHOICES, ids=IDS)
def test_counts_equal_torchinfo_and_modules_are_the_choice(norm, act):
    g = compiler.build_graph(network(norm, act))
    model = emit(g)
    stats = torchinfo.summary(model, input_size=(1, *g.nodes["input"]["shape"]), verbose=0)
    assert (stats.total_params, stats.total_mult_adds) == (g.graph["params"], g.graph["macs"])
    layer = model.features.denseblock1.denselayer1
    assert type(layer.norm1) is NORM_TYPES[norm] and type(layer.relu2) is ACT_TYPES[act]
    assert type(model.features.transition1.norm) is NORM_TYPES[norm] and type(model.head.relu4) is ACT_TYPES[act]
    if norm in ("layer", "group(4)"):
        assert layer.norm1.num_groups == (1 if norm == "layer" else 4)


@pytest.mark.parametrize(("norm", "act"), CHOICES, ids=IDS)
def test_every_lowering_equals_naive(norm, act):
    compare(network(norm, act), torch.float64)


@pytest.mark.parametrize(("norm", "act"), [("group(4)", "silu"), ("instance", "prelu"), ("layer", "gelu")])
def test_lowerings_with_dropout_and_emitted_source(norm, act, tmp_path):
    compare(network(norm, act, dropout=0.2), torch.float64)
    check_equal(network(norm, act), tmp_path, memory_efficient=True)
    check_equal(network(norm, act), tmp_path, memory_efficient=False)


@pytest.mark.parametrize(("norm", "act"), CHOICES, ids=IDS)
def test_estimator_predicts_saved_memory(norm, act):
    g = compiler.build_graph(network(norm, act))
    for lowering in LOWERINGS:
        got = measured_saved_bytes(emit(g, lowering), torch.randn(2, *g.nodes["input"]["shape"]))
        predicted = estimate(g, lowering, batch=2).saved
        assert abs(predicted - got) <= 0.15 * got, (lowering, predicted, got)


def test_the_imagenet_family_takes_choices_in_3d():
    net = dsl.load("densenet121_3d", blocks=[2, 2, 2, 2], size=64, norm="instance", act="prelu")
    model = compiler.compile(net)
    assert type(model.features.norm0) is nn.InstanceNorm3d and type(model.features.relu0) is nn.PReLU
    assert model(torch.randn(2, 1, 64, 64, 64)).shape == (2, 2)
    with pytest.raises(dsl.DnetError, match=r"instance normalization needs more than one position.* 1x1x1"):
        compiler.build_graph(dsl.load("densenet121_3d", blocks=[2, 2, 2, 2], size=32, norm="instance"))


def test_choices_from_the_command_line(dnetc):
    ok = dnetc("densenet_bc", "--set", "depth=16", "--set", "act=silu", "--set", "norm=group(4)", "--json")
    assert ok.returncode == 0, ok.stderr
    assert '"activation": "silu"' in ok.stdout and '"normalization": "group(4)"' in ok.stdout
    typo = dnetc("densenet_bc", "--set", "act=sliu")
    assert typo.returncode == 2 and "did you mean `silu`?" in typo.stderr
    uneven = dnetc("densenet_bc", "--set", "norm=group(5)")
    assert uneven.returncode == 2
    assert "group(5) normalization needs channels in groups of equal size, but this norm has 24" in uneven.stderr


def test_a_choice_is_a_value_of_its_kind():
    for text, message in [
        ("network n { activation instance input 3 x 8 }", "`instance` is not an activation"),
        ("network n { normalization silu input 3 x 8 }", "`silu` is not a normalization"),
        ("network n(x = silu + 1) { input 3 x 8 }", "`+` needs a number, but `silu` is an activation"),
        ("network n { normalization batch normalization layer input 3 x 8 }", "`normalization` is set twice"),
    ]:
        with pytest.raises(dsl.DnetError, match=re.escape(message)):
            dsl.parse(text)


@pytest.mark.parametrize("norm", ["group(4)", "instance"])
def test_shared_lowering_under_bf16_autocast(norm):
    """The backward pass recomputes norms under the forward pass's autocast. (The bug it guards showed on
    CUDA, where autocast runs group norm in float32; bench/lowerings.py checks it there.)"""
    g = compiler.build_graph(network(norm, "silu"))
    torch.manual_seed(0)
    naive, shared = emit(g, "naive"), emit(g, "shared")
    shared.load_state_dict(naive.state_dict())
    x = torch.randn(4, *g.nodes["input"]["shape"])
    grads = []
    for model in (naive, shared):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.isfinite(grads[1]).all()
    assert (grads[1] - grads[0]).norm() <= 0.05 * grads[0].norm()
