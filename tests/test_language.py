"""The language: parameters, arithmetic, repetition, reuse, and the Python API."""

from __future__ import annotations

import pytest

from dnetc import compiler, dsl
from dnetc.dsl import spec

FAMILY = """
# a family written once
network fam(depth = 40, growth = 12, classes = 10, widths = [2, 3]) {
    input 3 x 32 x 32
    let layers = (depth - 4) / 6
    stem conv(3x3, 2 * growth)
    repeat 3 separated by transition(compression = 0.5) {
        dense(layers, growth)
    }
    head classifier(classes)
}
"""


def test_parameters_defaults_and_arithmetic():
    net = dsl.parse(FAMILY)
    assert net.name == "fam"
    assert net.parameters == {"depth": 40, "growth": 12, "classes": 10, "widths": [2, 3]}
    assert [p.kind for p in net.parts] == ["stem", "dense", "transition", "dense", "transition", "dense", "head"]
    assert net.blocks[0].layers == 6 and net.blocks[0].bottleneck == 4
    assert net.parts[0].ops[0].channels == 24


def test_keyword_overrides_rebind_dependent_defaults():
    net = dsl.parse(FAMILY, growth=24, depth=100)
    assert net.blocks[0].layers == 16 and net.blocks[0].growth == 24
    assert net.parts[0].ops[0].channels == 48


def test_set_overrides_are_parsed_as_values():
    o = dsl.parse_overrides(["depth=4 + 6 * 41", "widths=[6, 12]", "classes = 100"])
    assert {k: v.value for k, v in o.items()} == {"depth": 250, "widths": [6, 12], "classes": 100}
    del o["widths"]
    net = dsl.load("densenet_bc", o)
    assert net.blocks[0].layers == 41 and net.parts[-1].ops[0].classes == 100


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("7 / 2", 3.5),
        ("8 / 2", 4),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("-(2 - 5)", 3),
        ("0.5 * 24", 12.0),
        ("1e2", 100.0),
        ("floor(7 / 2)", 3),
        ("ceil(7 / 2)", 4),
        ("round(2.6)", 3),
        ("min(3, 1, 2)", 1),
        ("max([3, 9, 2])", 9),
        ("len([6, 12, 24])", 3),
        ("range(3)", [0, 1, 2]),
        ("[6, 12, 24][1]", 12),
        ("[6, 12, 24][-1]", 24),
        ("3x3", (3, 3)),
        ("none", None),
        ("true", True),
    ],
)
def test_expressions(expr, value):
    o = dsl.parse_overrides([f"v={expr}"])
    assert o["v"].value == value
    assert type(o["v"].value) is type(value)


def test_for_loops_and_per_block_overrides():
    net = dsl.parse(
        """
        network n(blocks = [2, 3, 4], widths = [8, 16, 32]) {
            input 3 x 64 x 64
            stem conv(3, 16)
            for i in range(len(blocks)) separated by transition(0.5) {
                dense(blocks[i], widths[i], bottleneck = none)
            }
            dense(1, growth = 7, bottleneck = 2, dropout = 0.1)   # a block with its own settings
        }
        """
    )
    blocks = net.blocks
    assert [(b.layers, b.growth, b.bottleneck) for b in blocks] == [
        (2, 8, None),
        (3, 16, None),
        (4, 32, None),
        (1, 7, 2),
    ]
    assert blocks[-1].dropout == 0.1
    assert sum(isinstance(p, spec.Transition) for p in net.parts) == 2


def test_bare_name_after_keywords_binds_the_field_of_that_name():
    net = dsl.parse(
        "network n(dropout = 0.2) { input 3 x 8 x 8 dense(2, 4, bottleneck = 4, dropout) transition(0.5, dropout) }"
    )
    assert net.blocks[0].dropout == 0.2 and net.parts[1].dropout == 0.2


def test_family_members_bind_parameters_and_stay_overridable(tmp_path):
    (tmp_path / "fam.dnet").write_text(FAMILY)
    (tmp_path / "member.dnet").write_text('use fam from "fam.dnet"\nnetwork member = fam(depth = 100, growth = 24)\n')
    (tmp_path / "grandchild.dnet").write_text(
        'use member from "member.dnet"\nnetwork grandchild = member(classes = 100)\n'
    )
    m = dsl.load(tmp_path / "member.dnet")
    assert m.name == "member" and m.parameters["depth"] == 100 and m.blocks[0].layers == 16
    assert dsl.load(tmp_path / "member.dnet", depth=40).blocks[0].layers == 6
    g = dsl.load(tmp_path / "grandchild.dnet")
    assert (g.parameters["depth"], g.parameters["growth"], g.parameters["classes"]) == (100, 24, 100)


def test_zoo_members_derive_from_one_family_each():
    for name in ("densenet_bc_100_12", "densenet_bc_190_40", "wide_densenet_bc_40_36"):
        assert "use densenet_bc from" in (dsl.zoo_dir() / f"{name}.dnet").read_text()
    for name in ("densenet121", "densenet169", "densenet201", "densenet161", "densenet264", "densenet232"):
        assert "use densenet_imagenet from" in (dsl.zoo_dir() / f"{name}.dnet").read_text()


def test_parse_resolves_imports_next_to_filename_then_in_the_zoo(tmp_path):
    net = dsl.parse(
        'use densenet_bc from "densenet_bc.dnet"\nnetwork mine = densenet_bc(depth = 40)', str(tmp_path / "x.dnet")
    )
    assert net.blocks[0].layers == 6


@pytest.mark.parametrize(("size", "rank"), [("1 x 1024", 1), ("3 x 32 x 32", 2), ("1 x 16 x 16 x 16", 3)])
def test_one_two_and_three_dimensional_inputs(size, rank):
    net = dsl.parse(
        f"network n {{ input {size} stem conv(3, 8) dense(2, 4) transition(0.5) dense(2, 4) head classifier(2) }}"
    )
    assert len(net.input.size) == rank
    g = compiler.build_graph(net)
    assert len(g.nodes["features.transition1.pool"]["shape"]) == rank + 1
    model = compiler.compile(net)
    import torch

    out = model(torch.randn(2, *g.nodes["input"]["shape"]))
    assert out.shape == (2, 2)


def test_comments_and_free_layout():
    net = dsl.parse(
        "# c\nnetwork n ( # params\n g = 4 , ) { # body\n input 3 x 8 x 8 # the input\n dense ( 2 , g , ) }\n# end"
    )
    assert net.blocks[0].growth == 4


def test_the_language_never_evaluates_python():
    for attempt in ('__import__("os")', "open", "exec", "().__class__"):
        with pytest.raises(dsl.DnetError):
            dsl.parse(f"network n {{ input 3 x 8 x 8 dense({attempt}, 4) }}")


def test_the_file_stands_for_the_network_named_after_it(tmp_path):
    p = tmp_path / "second.dnet"
    p.write_text("network first { input 3 x 8 } network second { input 3 x 16 }")
    assert dsl.load(p).input.size == (16,)


def test_compile_api():
    model = compiler.compile("figure1", growth=8)
    assert (
        sum(p.numel() for p in model.parameters())
        == compiler.build_graph(dsl.load("figure1", growth=8)).graph["params"]
    )
    with pytest.raises(TypeError):
        compiler.compile(dsl.load("figure1"), growth=8)
