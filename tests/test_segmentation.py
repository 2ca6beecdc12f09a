"""FC-DenseNet: skip connections in the language, the authors' counts, and segmentation training."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dnetc import compiler, dsl
from dnetc.compiler.emit import emit
from dnetc.runtime.train import UsageError, check, resolve

SMALL = ["--set", "down=[2,2]", "--set", "middle=2", "--set", "up=[2,2]", "--set", "growth=8", "--set", "first=16"]


def test_fc_densenet_counts_as_the_authors_code():
    """9,322,091 trainable parameters for FC-DenseNet103 (convolutions with biases, BN scale and shift)."""
    g = compiler.build_graph(dsl.load("fc_densenet103"))
    assert g.graph["params"] == 9_322_091
    assert g.nodes[g.graph["output"]]["shape"] == (11, 224, 224)
    layers = sum(u["layers"] for u in g.graph["units"].values() if u["kind"] == "dense")
    assert layers == 4 + 5 + 7 + 10 + 12 + 15 + 12 + 10 + 7 + 5 + 4
    # the up path joins each transition up to the skip of the same resolution
    skips = [g.graph["units"][f"transition_up{i}"]["skip_node"] for i in range(1, 6)]
    assert skips == [f"features.denseblock{b}.cat" for b in (5, 4, 3, 2, 1)]
    for i, skip in enumerate(skips, 1):
        assert g.nodes[f"features.transition_up{i}.cat"]["shape"][1:] == g.nodes[skip]["shape"][1:]


def test_only_new_maps_go_up_and_the_last_block_passes_all():
    g = compiler.build_graph(dsl.load("fc_densenet103"))
    middle = g.nodes["features.denseblock6.cat"]["shape"][0]
    assert middle == 15 * 16  # the bottleneck block's new maps alone
    assert g.nodes["features.transition_up1.conv"]["shape"][0] == middle
    last = g.nodes["features.denseblock11.cat"]["shape"][0]
    assert last == 4 * 16 + g.nodes["features.transition_up5.cat"]["shape"][0]


def test_the_module_runs_at_any_batch_and_odd_sizes():
    net = dsl.load("fc_densenet", down=[2, 2, 2], middle=2, up=[2, 2, 2], growth=4, first=8, size=36)
    model = emit(compiler.build_graph(net)).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, 36, 36)).shape == (3, 11, 36, 36)


def test_skips_that_do_not_fit_are_named():
    base = "network n {{ input 3 x 32 x 32 stem conv(3, 8) dense(2, 4) keep a transition_down dense(2, 4) {} }}"
    with pytest.raises(dsl.DnetError, match=r"index 1 is out of range: `a` has 1 items"):
        dsl.parse(base.format("transition_up(a[1])"))
    with pytest.raises(dsl.DnetError, match="unknown name `b`"):
        dsl.parse(base.format("transition_up(b[0])"))
    wrong = base.format("transition_down transition_up(a[0])")  # 8x8 upsampled to 17x17, not 32x32
    with pytest.raises(dsl.DnetError, match="joins feature maps of 32x32 to upsampled maps of 17x17"):
        compiler.build_graph(dsl.parse(wrong))
    with pytest.raises(dsl.DnetError, match="`skip` of `transition_up` must be feature maps kept with `keep`"):
        dsl.parse(base.format("transition_up(3)"))
    with pytest.raises(dsl.DnetError, match=r"pick one: `a\[-1\]` is the last kept"):
        dsl.parse(base.format("transition_up(a)"))


def test_kept_names_do_not_shadow_values():
    with pytest.raises(dsl.DnetError, match="`growth` already names a value"):
        dsl.parse("network n(growth = 4) { input 3 x 8 x 8 keep growth }")


def test_segmentation_training_reaches_a_stated_miou(tmp_path, dnetc):
    out = tmp_path / "run"
    args = ["fc_densenet", *SMALL, "--set", "size=32", "--set", "dropout=0", "--train", "shapes", "--epochs", "8"]
    result = dnetc(*args, "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    miou = float(re.search(r"shapes test mIoU (\S+) \(pixel error", result.stdout).group(1))
    assert miou >= 0.8, result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["test_miou"] == pytest.approx(miou, abs=1e-3)
    again = dnetc("fc_densenet", *SMALL, "--set", "size=32", "--set", "dropout=0", "--eval", str(out))
    assert again.returncode == 0 and f"test mIoU {miou:.3f}" in again.stdout


def test_a_classifier_on_a_segmentation_dataset_and_back_exit_2(dnetc):
    wrong = dnetc("densenet_bc", "--set", "depth=10", "--train", "shapes", "--epochs", "1")
    assert wrong.returncode == 2 and "head pixel_classifier(classes)" in wrong.stderr
    back = dnetc("fc_densenet", *SMALL, "--train", "digits", "--epochs", "1")
    assert back.returncode == 2 and "not class scores" in back.stderr
    with pytest.raises(UsageError, match="masks are not augmented"):
        check(resolve("shapes", augment=True), 1)


def test_the_u_shape_is_drawn_with_its_skips(tmp_path, dnetc):
    target = tmp_path / "fc.dot"
    result = dnetc("fc_densenet56", "--viz", str(target))
    assert result.returncode == 0, result.stderr
    text = target.read_text()
    assert "skips[0]" in text and text.count("style=dashed") == 5
