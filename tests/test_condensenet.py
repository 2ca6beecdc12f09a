"""CondenseNet (Huang et al. 2018): learned group convolutions condensed while training, counted against
the authors' code in both forms, converted to index-select + group convolution, and trained by dnetc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dnetc import compiler, dsl
from dnetc.compiler.condense import ConversionError, convert
from dnetc.compiler.emit import emit
from dnetc.compiler.modules import LearnedGroupConv

REFERENCE = {
    k: v
    for k, v in json.loads((Path(__file__).parent / "reference.json").read_text())["condensenet"].items()
    if not k.startswith("_")
}
SMALL = {"stages": [2, 2], "growth": [4, 8], "size": 8}


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_both_forms_count_as_the_authors_code(key):
    name, classes = key.split("/")
    ref = REFERENCE[key]
    trained = compiler.build_graph(dsl.load(name, classes=int(classes)))
    converted = compiler.build_graph(dsl.load(name, classes=int(classes), converted=True))
    assert trained.graph["params"] == ref["params"]
    assert converted.graph["params"] == ref["converted_params"]
    assert converted.graph["macs"] == ref["converted_mult_adds"]
    # the training form: every weight times its positions, and dnetc's 2 per channel of each norm
    norms = sum(d["params"] for _, d in trained.nodes(data=True) if d["op"] == "norm")
    assert trained.graph["macs"] == ref["conv_fc_mult_adds"] + norms + int(classes)


def test_torchinfo_counts_the_learned_convolutions():
    torchinfo = pytest.importorskip("torchinfo")
    g = compiler.build_graph(dsl.load("condensenet", **SMALL))
    stats = torchinfo.summary(emit(g), input_size=(1, 3, 8, 8), verbose=0)
    assert (stats.total_params, stats.total_mult_adds) == (g.graph["params"], g.graph["macs"])


def test_condensation_prunes_a_quarter_of_each_groups_inputs_at_each_stage():
    torch.manual_seed(0)
    lgc = LearnedGroupConv(16, 8, groups=4, condense=4)
    for progress, density in [(0.0, 1.0), (0.17, 0.75), (0.34, 0.5), (0.5, 0.25), (1.0, 0.25)]:
        lgc.schedule(progress)
        assert lgc.mask.mean().item() == density
    for g in range(4):  # each group (outputs g, g + 4) reads 4 of the 16 inputs, the same 4
        rows = lgc.mask[g::4].flatten(1)
        assert int(rows[0].sum()) == 4 and torch.equal(rows[0], rows[1])
        # the weights did not move between the stages: what is left is the group's 4 strongest inputs
        strength = lgc.weight.detach().abs().flatten(1)[g::4].sum(0)
        assert set(rows[0].nonzero().flatten().tolist()) == set(strength.topk(4).indices.tolist())
    # the stage is state: a copy loaded from the state_dict goes on from there
    fresh = LearnedGroupConv(16, 8, groups=4, condense=4)
    fresh.load_state_dict(lgc.state_dict())
    fresh.schedule(1.0)
    assert torch.equal(fresh.mask, lgc.mask)


def test_group_lasso_until_the_last_stages():
    torch.manual_seed(0)
    lgc = LearnedGroupConv(8, 8, groups=4, condense=4, lasso=1e-3)
    w = lgc.weight.detach().flatten(1).pow(2).view(2, 4, 8).sum(0)
    assert lgc.penalty().item() == pytest.approx(1e-3 * w.sqrt().sum().item(), rel=1e-5)
    lgc.penalty().backward()
    assert lgc.weight.grad is not None and lgc.weight.grad.abs().sum() > 0
    lgc.schedule(0.4)  # stage 2: the lasso still weighs
    assert lgc.penalty().item() > 0
    lgc.schedule(0.5)  # stage 3 = G - 1: off
    assert lgc.penalty().item() == 0


def _condensed(**overrides) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    trained = emit(compiler.build_graph(dsl.load("condensenet", **SMALL, **overrides))).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    trained.train()
    for _ in range(3):  # batch statistics worth carrying over
        trained(x)
    for m in trained.modules():
        if isinstance(m, LearnedGroupConv):
            m.schedule(0.5)
    trained.eval()
    converted = emit(compiler.build_graph(dsl.load("condensenet", **SMALL, **overrides, converted=True))).double()
    return trained, converted, x


@pytest.mark.parametrize("form", [{}, {"groups": 2, "condense": 2}], ids=["C=G=4", "C=G=2"])
def test_the_converted_network_computes_the_condensed_features(form):
    trained, converted, x = _condensed(**form)
    convert(trained, converted.eval())
    with torch.no_grad():
        features = trained.forward_head(trained.features(x), pre_logits=True)  # the pooled features
        pooled = converted.features(x)
        for name, module in converted.head.named_children():  # up to the classifier's selection
            if name == "select3":
                break
            pooled = module(pooled)
        assert torch.allclose(pooled, features, rtol=0, atol=1e-10)
        select = converted.head.get_submodule("select3")
        expected = features[:, select.index] @ converted.classifier.weight.T + converted.classifier.bias
        assert torch.allclose(converted(x), expected, atol=1e-10)
        # the classifier keeps the half of the features whose weights weigh most
        strength = trained.classifier.weight.abs().sum(0)
        assert strength[select.index].min() >= strength.sort().values[-len(select.index)]


def test_conversion_refuses_an_uncondensed_network():
    torch.manual_seed(0)
    trained = emit(compiler.build_graph(dsl.load("condensenet", **SMALL)))
    converted = emit(compiler.build_graph(dsl.load("condensenet", **SMALL, converted=True)))
    with pytest.raises(ConversionError, match="condense fully first"):
        convert(trained, converted)


def test_export_condensed_writes_weights_the_converted_form_loads(tmp_path, dnetc):
    trained, _, _ = _condensed()
    torch.save(trained.float().state_dict(), tmp_path / "trained.pt")
    out = tmp_path / "condensed.pt"
    flags = [f"--set=stages={SMALL['stages']}", f"--set=growth={SMALL['growth']}", "--set=size=8"]
    r = dnetc("condensenet", *flags, "--weights", str(tmp_path / "trained.pt"), "--export", "condensed", str(out))
    assert r.returncode == 0, r.stderr
    assert "--set converted=true" in r.stdout
    r = dnetc("condensenet", *flags, "--set", "converted=true", "--weights", str(out), "--summary")
    assert r.returncode == 0, r.stderr
    assert "every one matched" in r.stdout
    r = dnetc("densenet_bc", "--weights", str(tmp_path / "trained.pt"), "--export", "condensed", str(out))
    assert r.returncode == 2 and "`converted` parameter" in r.stderr


def test_the_trainer_condenses_and_adds_the_group_lasso(tmp_path):
    from dnetc.runtime.launch import plan
    from dnetc.runtime.train import Trainer

    flags = {"epochs": 2, "device": "cpu", "precision": "fp32"}  # not deterministic: that flag is process-wide
    overrides = {"stages": [2, 2], "growth": [4, 8], "lasso": 1e-4}
    t = Trainer(plan("condensenet", "digits", overrides=overrides, flags=flags, out=tmp_path))
    lgcs = [m for m in t.model.modules() if isinstance(m, LearnedGroupConv)]
    assert lgcs and t.train_step.penalties == lgcs
    t.train()
    for m in lgcs:  # half of training condenses fully: each group reads 1/C of its inputs
        assert m.stage.item() == 3 and m.mask.mean().item() == pytest.approx(0.25)
