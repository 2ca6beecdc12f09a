"""Networks designed in the language: user-defined layers, connectivity as a value, and the dense family's
later members (HarDNet, VoVNet) written as specs, counted against their authors' code and timm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dnetc import compiler, dsl
from dnetc.compiler.emit import emit
from dnetc.compiler.lowerings import LOWERINGS
from tests.test_memory import assert_same, step

REFERENCE = json.loads((Path(__file__).parent / "reference.json").read_text())
HARDNET = {k: v for k, v in REFERENCE["hardnet"].items() if not k.startswith("_")}
VOVNET = {k: v for k, v in REFERENCE["timm_families"].items() if not k.startswith("_")}

LAYERS = """
layer cna(channels, kernel = 3, stride = 1) { conv(kernel, channels, stride = stride) norm act }
layer bottleneck_se(growth, width = 4) { norm act conv(1, width * growth) norm act conv(3, growth) se(0.25) }
layer two_way(growth) {
    concat { cna(growth // 2, 1) cna(growth // 2) } { cna(growth // 2, 1) cna(growth // 2) cna(growth // 2) }
}
layer residual_dw { add { } { dwconv norm shuffle(2) } }
layer fuse_ese(channels) { cna(channels, 1) ese }
layer conv3(growth) { cna(growth) }
layer learned(growth) { norm act lgconv(4 * growth, 2, 2) norm act conv(3, growth, groups = 2) }
layer condensed(growth) { select(1) norm act conv(1, 4 * growth, groups = 2) shuffle(2) norm act conv(3, growth) }
layer down(channels) { cna(channels, 1) avgpool(2) }
"""


def network(body: str, size: int = 16) -> dsl.Network:
    return dsl.parse(f"{LAYERS}\nnetwork n {{\n    input 3 x {size} x {size}\n{body}\n}}")


# ---- the zoo's new families, exact against their reference code -----------------------------


@pytest.mark.parametrize("name", sorted(HARDNET))
def test_hardnet_counts_equal_the_authors_code(name):
    g = compiler.build_graph(dsl.load(name))
    assert (g.graph["params"], g.graph["macs"]) == (HARDNET[name]["params"], HARDNET[name]["mult_adds"])


@pytest.mark.parametrize("name", sorted(VOVNET))
def test_vovnet_and_dpn_counts_equal_timm(name):
    g = compiler.build_graph(dsl.load(name))
    assert g.graph["params"] == VOVNET[name]["params"]
    # torchinfo leaves out timm's BatchNormAct2d (not a leaf); dnetc counts 2 per channel for each norm
    norms = sum(2 * d["shape"][0] for _, d in g.nodes(data=True) if d["op"] == "norm")
    assert g.graph["macs"] - norms == VOVNET[name]["mult_adds"]


def test_timm_builds_the_recorded_vovnets_and_dpns():
    timm = pytest.importorskip("timm")
    for name, counts in VOVNET.items():
        model = timm.create_model(name, pretrained=False)
        assert sum(p.numel() for p in model.parameters()) == counts["params"], name


def test_dpn_computes_what_timms_computes():
    """A small DPN of timm's (its DualPathBlock and DPN classes) and the zoo's spec with the same
    settings, timm's weights loaded in order: the same scores (timm's batch norms use eps 1e-3)."""
    timm_dpn = pytest.importorskip("timm.models.dpn")
    settings = {"k_sec": (1, 2, 1, 1), "inc_sec": (4, 4, 8, 8), "k_r": 32, "groups": 4, "small": True}
    reference = timm_dpn.DPN(**settings, num_init_features=8, num_classes=10).eval()
    blocks, inc = list(settings["k_sec"]), list(settings["inc_sec"])
    ours = compiler.compile(
        "dpn", small=True, init=8, k_r=32, groups=4, blocks=blocks, inc=inc, classes=10, size=32
    ).eval()
    theirs = list(reference.state_dict().values())
    mine = ours.state_dict()
    assert [t.numel() for t in theirs] == [t.numel() for t in mine.values()]
    ours.load_state_dict({k: t.reshape(v.shape) for (k, v), t in zip(mine.items(), theirs, strict=True)})
    for m in ours.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


def test_hardnet_links_are_the_papers():
    """Layer k reads k - 2^n for each 2^n dividing k, nearest first; widths as the authors' code rounds them."""
    g = compiler.build_graph(dsl.load("hardnet68"))
    block = "features.denseblock2"
    links = [
        [
            int(u.split(".")[2].removeprefix("denselayer")) if "denselayer" in u else 0
            for u in _inputs(g, f"{block}.denselayer{k}.cat")
        ]
        for k in range(1, 17)
    ]
    assert links == [
        [0], [1, 0], [2], [3, 2, 0], [4], [5, 4], [6], [7, 6, 4, 0],
        [8], [9, 8], [10], [11, 10, 8], [12], [13, 12], [14], [15, 14, 12, 8, 0],
    ]  # fmt: skip
    widths = [g.nodes[f"{block}.denselayer{k}.conv_layer1.conv1"]["shape"][0] for k in range(1, 17)]
    assert widths == [16, 28, 16, 46, 16, 28, 16, 78, 16, 28, 16, 46, 16, 28, 16, 134]
    outputs = [int(u.split(".")[2].removeprefix("denselayer")) for u in _inputs(g, f"{block}.cat")]
    assert outputs == [1, 3, 5, 7, 9, 11, 13, 15, 16]  # the odd layers and the last, not the input


def _inputs(g, n: str) -> list[str]:
    """The node feeding each input of `n`, in concatenation order, each as the layer it ends."""
    out = []
    for u, _, _ in sorted(g.in_edges(n, data="index"), key=lambda e: e[2]):
        node = g.nodes[u]
        out.append(f"{node['unit'] and 'features.' + node['unit']}.{node['layer']}" if node["layer"] else "input")
    return out


# ---- connectivity as a value: exactly the edges the pattern names ----------------------------

PATTERNS = {
    "all": [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]],
    "window(2)": [[0], [0, 1], [1, 2], [2, 3], [3, 4]],
    "exponential": [[0], [0, 1], [1, 2], [0, 2, 3], [1, 3, 4]],
    "harmonic(2)": [[0], [1, 0], [2], [3, 2, 0], [4]],
    "aggregate": [[0], [1], [2], [3], [4]],
}
OUTPUTS = {
    "all": [0, 1, 2, 3, 4, 5],
    "window(2)": [4, 5],
    "exponential": [2, 4, 5],
    "harmonic(2)": [0, 1, 3, 5],
    "aggregate": [0, 1, 2, 3, 4, 5],
}


@pytest.mark.parametrize("connect", sorted(PATTERNS))
def test_the_graph_holds_exactly_the_patterns_edges(connect):
    g = compiler.build_graph(network(f"    stem conv(3, 8)\n    dense(5, 4, connect = {connect})"))
    source = {"features.conv0": 0, **{f"features.denseblock1.denselayer{i}.conv2": i for i in range(1, 6)}}
    for i, expected in enumerate(PATTERNS[connect], 1):
        preds = sorted(g.in_edges(f"features.denseblock1.denselayer{i}.cat", data="index"), key=lambda e: e[2])
        assert [source[u] for u, _, _ in preds] == expected
    preds = sorted(g.in_edges("features.denseblock1.cat", data="index"), key=lambda e: e[2])
    assert [source[u] for u, _, _ in preds] == OUTPUTS[connect]
    # parameters follow the edges: each layer's 1x1 conv reads 8 + 4 per linked layer (harmonic widths aside)
    if connect != "harmonic(2)":
        for i, links in enumerate(PATTERNS[connect], 1):
            conv = g.nodes[f"features.denseblock1.denselayer{i}.conv1"]
            assert conv["params"] == sum(8 if j == 0 else 4 for j in links) * 16


def test_partial_connectivity_bypasses_part_of_the_channels():
    g = compiler.build_graph(network("    stem conv(3, 8)\n    dense(2, 4, connect = partial(0.25))"))
    assert g.nodes["features.denseblock1.bypass"]["shape"][0] == 2
    assert g.nodes["features.denseblock1.denselayer1.norm1"]["shape"][0] == 6
    assert g.nodes["features.denseblock1.cat"]["shape"][0] == 2 + 6 + 4 + 4
    model = emit(g)
    x = torch.randn(2, 3, 16, 16)
    bypass = model.features.conv0(x)[:, :2]
    assert torch.equal(model.features(x)[:, :2], bypass)


SPECS = {
    "custom_layers": "    stem cna(8)\n    dense(3, 4, layer = bottleneck_se)\n    down(8)\n"
    "    dense(2, 4, layer = [two_way, residual_dw])\n    head classifier(5)",
    "harmonic": "    stem cna(8)\n    dense(4, 4, connect = harmonic(1.7), layer = conv3, concat_input = false)\n"
    "    head classifier(5)",
    "aggregate_fuse_residual": "    stem cna(12)\n    dense(3, 4, connect = aggregate, layer = conv3, "
    "fuse = fuse_ese(12), residual = true)\n    head linear_classifier(5)",
    "window_dropout": "    stem cna(8)\n    dense(3, 4, connect = window(2), dropout = 0.2)\n    head classifier(5)",
    "exponential_partial": "    stem cna(8)\n    dense(3, 4, connect = exponential)\n"
    "    dense(2, 4, connect = partial(0.5))\n    head classifier(5)",
    "dual": "    stem cna(8)\n    dense(3, 4, connect = dual(6), entry = cna(14, 1), layer = conv3)\n"
    "    dense(2, 4, connect = dual(4), entry = cna(12, 1), dropout = 0.1)\n    head classifier(5)",
}
# every new construct in one network, for the slower checks (ONNX export): own layers, branches, se, ese,
# shuffle, dwconv, each connectivity, fuse, residual, and CondenseNet's learned convs and selection
EVERYTHING = (
    "    activation relu6\n    stem cna(16)\n"
    "    dense(4, 4, connect = harmonic(1.7), layer = conv3, concat_input = false)\n"
    "    cna(16, 1)\n    dense(3, 4, connect = aggregate, layer = conv3, fuse = fuse_ese(16), residual = true)\n"
    "    dense(2, 4, layer = [two_way, residual_dw])\n    dense(2, 4, connect = window(2), layer = learned)\n"
    "    dense(2, 4, connect = exponential)\n    dense(2, 4, connect = partial(0.5), layer = condensed)\n"
    "    dense(2, 4, connect = dual(4), entry = cna(12, 1), layer = conv3)\n"
    "    head classifier(5, keep = 0.5)"
)


@pytest.mark.parametrize("name", [*sorted(SPECS), "everything"])
def test_counts_equal_torchinfo_and_every_lowering_equals_naive(name):
    torchinfo = pytest.importorskip("torchinfo")
    g = compiler.build_graph(network(SPECS.get(name, EVERYTHING)))
    torch.manual_seed(0)
    reference = emit(g, "naive").double()
    stats = torchinfo.summary(emit(g), input_size=(1, 3, 16, 16), verbose=0)
    assert (stats.total_params, stats.total_mult_adds) == (g.graph["params"], g.graph["macs"])
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    _every_lowering_equals(g, reference, x)


def _every_lowering_equals(g, reference: torch.nn.Module, x: torch.Tensor) -> None:
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    expected = step(reference, x)
    for lowering in LOWERINGS:
        model = emit(g, lowering).double()
        model.load_state_dict(state)
        assert_same(step(model, x), expected, 1e-10)


def test_summary_says_which_blocks_run_naive(capsys):
    from dnetc.runtime.cli import main

    assert main(["hardnet39ds", "--set", "size=64", "--summary", "--memory", "fused"]) == 0
    out = capsys.readouterr().out
    assert "The fused lowering runs denseblock1, denseblock2, denseblock3, denseblock4 as checkpoint" in out


def test_layers_are_values_parameters_and_imports(tmp_path):
    (tmp_path / "mine.dnet").write_text(LAYERS)
    (tmp_path / "net.dnet").write_text(
        'use cna, bottleneck_se from "mine.dnet"\n'
        "network net(h = bottleneck_se(width = 2), wide = false) {\n"
        "    input 3 x 16 x 16\n"
        "    let stem_layer = cna if not wide else bottleneck_se\n"
        "    stem stem_layer(8)\n"
        "    dense(2, 4, layer = h)\n"
        "}\n"
    )
    net = dsl.load(tmp_path / "net.dnet")
    assert [c.arguments for c in net.parts[1].layer] == [{"growth": 4, "width": 2}] * 2
    g = compiler.build_graph(net)
    assert g.nodes["features.denseblock1.denselayer1.conv1"]["shape"][0] == 8  # width 2 x growth 4
    assert g.nodes["features.cna0.conv1"]["shape"][0] == 8


# ---- located diagnostics for the new constructs ----------------------------------------------

ERRORS = [
    (
        "groups",
        "layer g(growth) { norm act conv(1, 30) conv(3, growth, groups = 4) }",
        "    stem conv(3, 8)\n    dense(2, 12, layer = g)",
        (1, 40),
        "needs input channels divisible by 4, but it has 30",
    ),
    (
        "unknown op",
        "layer g(growth) { norm act cnov(3, growth) }",
        "    dense(2, 4, layer = g)",
        (1, 28),
        "did you mean `conv`",
    ),
    (
        "itself",
        "layer a { b }\nlayer b { a }",
        "    dense(2, 4, layer = a)",
        (2, 11),
        "layer `a` uses itself: a -> b -> a",
    ),
    (
        "missing",
        "layer g(growth, width) { conv(1, width) }",
        "    dense(2, 4, layer = g)",
        (4, 25),
        "needs a value for its parameter `width`",
    ),
    ("not a layer", "", "    dense(2, 4, layer = 3)", (4, 25), "`layer` must be a layer defined with"),
    ("misspelt layer", "layer cna3 { conv(3, 4) }", "    dense(2, 4, layer = cn3)", (4, 25), "did you mean `cna3`"),
    ("list length", "layer l { conv(3, 4) }", "    dense(3, 4, layer = [l, l])", (4, 25), "one per layer: 3, not 2"),
    ("join", "layer j { cat { conv(1, 4) } { } }", "    dense(2, 4, layer = j)", (1, 11), "did you mean `concat`"),
    (
        "residual",
        "",
        "    stem conv(3, 8)\n    dense(2, 4, residual = true)",
        (5, 5),
        "cannot add feature maps of different shapes",
    ),
    (
        "partial",
        "",
        "    stem conv(3, 8)\n    dense(2, 4, connect = partial(0.1))",
        (5, 5),
        "partial(0.1) of 8 channels leaves no channel",
    ),
    ("window", "", "    dense(2, 4, connect = window(0))", (4, 27), "the number of latest feature maps"),
    ("condition", "", "    dense(2 if 3 else 1, 4)", (4, 16), "a condition needs true or false"),
    ("keyword", "layer k(a) { conv(3, a) }", "    dense(2, 4, layer = k(b = 2))", (4, 25), "has no parameter `b`"),
    (
        "bottleneck",
        "layer k(growth) { conv(3, growth) }",
        "    dense(2, 4, 2, layer = k)",
        (4, 17),
        "`bottleneck` shapes",
    ),
    ("if statement", "", "    if true { dense(2, 4) }", (4, 13), "`if` is not a statement"),
    ("pool in the body", "", "    maxpool(2)", (4, 5), "in a layer of your own that the body calls"),
    (
        "dual entry",
        "",
        "    stem conv(3, 8)\n    dense(2, 4, connect = dual(4))",
        (5, 5),
        "starts from an `entry` layer",
    ),
    (
        "dual width",
        "layer e(c) { conv(1, c) }",
        "    stem conv(3, 8)\n    dense(2, 4, connect = dual(9), entry = e(6))",
        (5, 5),
        "takes the first 9 channels of each layer's output for the residual path, but this one has 6",
    ),
    ("dual value", "", "    dense(2, 4, connect = dual(2.5))", (4, 32), "dual needs an integer"),
]


@pytest.mark.parametrize(("layers", "body", "at", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_new_constructs_give_located_diagnostics(layers, body, at, message):
    text = (
        f"{layers}\nnetwork n {{\n    input 3 x 16 x 16\n{body}\n}}"
        if layers
        else f"\nnetwork n {{\n    input 3 x 16 x 16\n{body}\n}}"
    )
    with pytest.raises(dsl.DnetError) as caught:
        compiler.build_graph(dsl.parse(text))
    e = caught.value
    assert message in str(e), str(e)
    assert (e.line, e.col) == at, str(e)
    assert "^" in str(e)  # the line shown with a caret
