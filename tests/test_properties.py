"""Properties over generated specs: the graph's counts and shapes are the module's, and any token soup
gives a network or a located DnetError."""

from __future__ import annotations

import torch
import torchinfo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnetc import compiler, dsl

from .fuzzing import PIECES, specs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_generated_specs_counts_and_shapes_equal_the_modules(text):
    g = compiler.build_graph(dsl.parse(text))
    model = compiler.compile(dsl.parse(text)).eval()
    shape = (2, *g.nodes["input"]["shape"])
    with torch.no_grad():
        out = model(torch.randn(shape))
    if g.graph["exits"]:  # every exit's scores and the head's, stacked
        assert out.shape[0] == len(g.graph["exits"]) + 1
        out = out[-1]
    assert tuple(out.shape[1:]) == g.nodes[g.graph["output"]]["shape"]
    stats = torchinfo.summary(model, input_size=(1, *shape[1:]), verbose=0)
    assert (stats.total_params, stats.total_mult_adds) == (g.graph["params"], g.graph["macs"])


# the fuzz test's vocabulary, and the names and literals a spec body uses
TOKENS = [
    *PIECES,
    "n",
    "growth",
    "layers",
    "conv",
    "classifier",
    "norm",
    "relu",
    "act",
    "maxpool",
    "32",
    '"densenet_bc.dnet"',
    "normalization",
    "activation",
    "silu",
    "group(4)",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_token_soup_gives_a_network_or_a_located_error(tokens):
    text = " ".join(tokens)
    try:
        compiler.build_graph(dsl.parse(text, filename=str(dsl.zoo_dir() / "soup.dnet")))
    except dsl.DnetError as e:
        assert e.line is not None and e.col is not None, str(e)
        assert str(e).startswith(f"{e.file}:{e.line}:{e.col}: error: ")
