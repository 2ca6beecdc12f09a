"""The graph IR: a node per op, an edge per dense connection, shapes that match the module's."""

from __future__ import annotations

import pytest
import torch

from dnetc import compiler, dsl


@pytest.mark.parametrize("name", ["figure1", "densenet_40_12", "densenet_bc_100_12", "densenet121"])
def test_shapes_at_every_node_match_the_emitted_module(name):
    g = compiler.build_graph(dsl.load(name))
    model = compiler.compile(name).eval()
    seen: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    for _, data in g.nodes(data=True):
        if data["module"] is not None:
            modules[data["module"]].register_forward_hook(
                lambda m, i, o, key=data["module"]: seen.__setitem__(key, tuple(o.shape[1:]))
            )
    for unit in g.graph["units"]:
        if unit.startswith("denseblock"):
            modules[f"features.{unit}"].register_forward_hook(
                lambda m, i, o, key=f"features.{unit}.cat": seen.__setitem__(key, tuple(o.shape[1:]))
            )
    with torch.no_grad():
        model(torch.randn(1, *g.nodes["input"]["shape"]))
    checked = 0
    for n, data in g.nodes(data=True):
        if n in seen:
            assert seen[n] == data["shape"], n
            checked += 1
        elif data["op"] == "concat" and data["layer"] is not None:
            (succ,) = g.successors(n)  # a layer's concatenation feeds its first norm
            assert modules[g.nodes[succ]["module"]].num_features == data["shape"][0]
            checked += 1
    assert checked == g.number_of_nodes() - 1  # every node but the input


@pytest.mark.parametrize("layers", [1, 2, 5, 12])
def test_every_dense_connection_is_an_edge(layers):
    g = compiler.build_graph(dsl.parse(f"network n {{ input 3 x 8 x 8 stem conv(3, 4) dense({layers}, 2) }}"))
    into_layers = [g.in_degree(n) for n, d in g.nodes(data=True) if d["op"] == "concat" and d["layer"]]
    assert sorted(into_layers) == list(range(1, layers + 1))
    assert sum(into_layers) == layers * (layers + 1) // 2
    assert g.in_degree("features.denseblock1.cat") == layers + 1
    # layer j is fed by the block input and by the new features of every earlier layer, in order
    last = f"features.denseblock1.denselayer{layers}.cat"
    sources = [u for u, _, _ in sorted(g.in_edges(last, data="index"), key=lambda e: e[2])]
    assert sources == ["features.conv0"] + [f"features.denseblock1.denselayer{i}.conv2" for i in range(1, layers)]


def test_node_names_are_the_module_names():
    g = compiler.build_graph(dsl.load("densenet121"))
    model = compiler.compile("densenet121")
    with_params = {n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert with_params == {d["module"] for _, d in g.nodes(data=True) if d["params"]}
    assert g.nodes["features.denseblock1.denselayer1.conv2"]["shape"] == (32, 56, 56)
    assert g.nodes["features.transition3.pool"]["shape"] == (512, 7, 7)


def test_counts_per_node_sum_to_totals_and_units():
    g = compiler.build_graph(dsl.load("densenet_bc_100_12"))
    from dnetc.compiler import report

    rows = report.units(g)
    assert sum(r["params"] for r in rows) == g.graph["params"] == 769_162
    assert sum(r["mult_adds"] for r in rows) == g.graph["macs"]
    block = next(r for r in rows if r["name"] == "denseblock1")
    assert (block["layers"], block["growth"], block["channels_in"], block["channels_out"]) == (16, 12, 24, 216)
    trans = next(r for r in rows if r["name"] == "transition1")
    assert (trans["channels_out"], trans["size_out"]) == (108, [16, 16])


def test_dropout_follows_each_convolution_in_layers_and_transitions():
    g = compiler.build_graph(dsl.load("densenet_bc", dropout=0.2))
    assert g.nodes["features.denseblock1.denselayer1.drop1"]["args"]["p"] == 0.2
    assert g.nodes["features.denseblock1.denselayer1.drop2"]["args"]["p"] == 0.2
    assert g.nodes["features.transition1.drop"]["args"]["p"] == 0.2
    assert "features.conv0" in g and not any(n.startswith("features.drop0") for n in g)


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    model = compiler.compile("densenet_bc_100_12")
    conv = model.features.denseblock1.denselayer1.conv1  # 1x1, 48 out channels
    expected = (2 / (1 * 1 * 48)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.05
    norm = model.features.denseblock1.denselayer1.norm1
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    assert torch.all(model.classifier.bias == 0)
