"""Multi-exit networks and MSDNet: early classifiers (`exit`) on any network, the grid of scales
(`scales`, `msdense`), the trainer's summed losses and per-exit errors, and the anytime and budgeted
tables of `--eval`, counted against the authors' code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dnetc import compiler, dsl
from dnetc.compiler import report
from dnetc.compiler.emit import emit
from dnetc.runtime import anytime
from dnetc.runtime.tasks import TASKS, MultiExit

from .test_families import _every_lowering_equals
from .test_source import check_equal

REFERENCE = json.loads((Path(__file__).parent / "reference.json").read_text())
MSDNET = {k: v for k, v in REFERENCE["msdnet"].items() if not k.startswith("_")}

# DenseNet-BC with a classifier after each block: the MSDNet paper's baseline of intermediate classifiers
DENSE_EXITS = """
network dense_exits(classes = 5) {
    input 3 x 16 x 16
    stem conv(3, 8)
    exit classifier(classes)
    dense(2, 4)
    exit { conv(3, 8, stride = 2) norm relu linear_classifier(classes) }
    transition(compression = 0.5)
    dense(2, 4, dropout = 0.1)
    head classifier(classes)
}
"""
SMALL_MSDNET = dict(blocks=2, step=1, base=2, channels=4, growth=4, width=8, classes=10)


@pytest.mark.parametrize("name", sorted(MSDNET))
def test_msdnet_counts_equal_the_authors_code(name):
    g = compiler.build_graph(dsl.load(name))
    want = MSDNET[name]
    assert (g.graph["params"], g.graph["macs"]) == (want["params"], want["mult_adds"])
    assert [r["params"] for r in report.exits(g)] == want["exit_params"]


def test_exits_return_stacked_scores_and_leave_the_features_alone():
    g = compiler.build_graph(dsl.parse(DENSE_EXITS))
    torch.manual_seed(0)
    model = emit(g).eval()
    plain = emit(compiler.build_graph(dsl.parse(DENSE_EXITS.replace("    exit", "    # exit")))).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("exits.") for k in unexpected)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 2, 5)  # two exits and the head
        assert torch.equal(out[-1], plain(x))
        assert torch.equal(out[0], model.exits[0](model.features.conv0(x)))


@pytest.mark.parametrize("which", ["dense_exits", "msdnet"])
def test_counts_equal_torchinfo_every_lowering_equals_naive_and_the_source_equals(which, tmp_path):
    torchinfo = pytest.importorskip("torchinfo")
    network = dsl.parse(DENSE_EXITS) if which == "dense_exits" else dsl.load("msdnet", **SMALL_MSDNET)
    g = compiler.build_graph(network)
    shape = (1, *g.nodes["input"]["shape"])
    stats = torchinfo.summary(emit(g), input_size=shape, verbose=0)
    assert (stats.total_params, stats.total_mult_adds) == (g.graph["params"], g.graph["macs"])
    torch.manual_seed(0)
    _every_lowering_equals(g, emit(g, "naive").double(), torch.randn(3, *shape[1:], dtype=torch.float64))
    check_equal(network, tmp_path, memory_efficient=False)


def test_msdnet_equals_the_authors_layer_by_layer_rule():
    """The scales each layer keeps (`prune max`) and where transitions go, as the authors' code has it."""
    g = compiler.build_graph(dsl.load("msdnet"))
    kept = []
    for unit, info in g.graph["units"].items():
        if info["kind"] == "msdense":
            for i in range(1, info["layers"] + 1):
                scales = {p for p in g.graph["containers"] if p.startswith(f"features.{unit}.msdlayer{i}.scale")}
                kept.append(len({p.split(".")[3] for p in scales}))
    total, interval = 16, math.ceil(16 / 3)
    assert kept == [3 - (n - 1) // interval for n in range(1, total + 1)]
    transitions = [p for p, c in g.graph["containers"].items() if c["kind"] == "msd_transition"]
    # after layers 7 and 13, each the first of its block
    assert transitions == ["features.msdblock3.transition1", "features.msdblock6.transition1"]


def test_summary_and_json_report_each_exit(capsys):
    from dnetc.runtime.cli import main

    assert main(["msdnet", "--summary"]) == 0
    out = capsys.readouterr().out
    assert "7 classifiers, each scoring the input" in out
    assert "exit1  433,876" in out
    assert main(["msdnet", "--json"]) == 0
    exits = json.loads(capsys.readouterr().out)["exits"]
    assert [e["name"] for e in exits] == [*(f"exit{i}" for i in range(1, 7)), "head"]
    assert exits[-1]["mult_adds_anytime"] == 75_496_996  # the whole network, every exit evaluated
    assert all(a["mult_adds"] <= a["mult_adds_anytime"] for a in exits)


def test_multi_exit_task_sums_the_losses_and_scores_each_exit():
    task = MultiExit(TASKS["classification"], 2)
    y = torch.tensor([0, 1, 1, 0])
    out = torch.randn(3, 4, 2)
    out[2] = torch.tensor([[5.0, 0], [0, 5], [0, 5], [5, 0]])  # the head is right on all
    out[0] = torch.tensor([[0.0, 5], [0, 5], [0, 5], [0, 5]])  # exit 1 on half
    expected = sum(torch.nn.functional.cross_entropy(o, y) for o in out)
    assert torch.allclose(task.loss(out, y), expected)
    assert task.hits(out, y) == 4
    evaluation = task.evaluation(2, torch.device("cpu"))
    evaluation.add(out, y)
    loss, correct, *cells = evaluation.values().tolist()
    metrics = task.metrics("test", loss, correct, 4, cells)
    assert metrics["test_error"] == 0.0 and metrics["test_exit1_error"] == 50.0
    assert "exits 50.0/" in task.epoch_line(metrics)


def _authors_thresholds(conf: torch.Tensor, share: float) -> list[float]:
    """adaptive_inference.py's dynamic_eval_find_threshold, loop for loop."""
    n, exits = conf.shape
    p = torch.exp(torch.log(torch.tensor(share, dtype=torch.float64)) * torch.arange(1, exits + 1))
    p /= p.sum()
    order = conf.T.sort(dim=1, descending=True).indices
    filtered = torch.zeros(n)
    t = [1e8] * exits
    for k in range(exits - 1):
        count, out_n = 0, math.floor(n * float(p[k]))
        for i in range(n):
            j = order[k][i]
            if filtered[j] == 0:
                count += 1
                if count == out_n:
                    t[k] = float(conf[j, k])
                    break
        filtered += (conf[:, k] >= t[k]).float()
    t[-1] = -1e8
    return t


@pytest.mark.parametrize("share", [0.05, 0.65, 1.0, 1.85])
def test_budgeted_thresholds_are_the_authors(share):
    torch.manual_seed(1)
    conf = torch.rand(200, 4, dtype=torch.float64)
    ours = anytime.thresholds(conf, share)
    theirs = _authors_thresholds(conf, share)
    assert [min(max(x, -1e8), 1e8) for x in ours.tolist()] == theirs
    right = torch.rand(200, 4) > 0.5
    result = anytime.budgeted(conf, right, ours, [1, 2, 3, 4])
    assert math.isclose(sum(result["taken"]), 1.0)
    assert 1 <= result["mult_adds"] <= 4


def test_eval_prints_the_anytime_and_budgeted_tables(tmp_path, capsys):
    from dnetc.runtime.cli import main

    sets = [x for k, v in SMALL_MSDNET.items() for x in ("--set", f"{k}={v}")]
    run = tmp_path / "run"
    args = ["msdnet", *sets, "--set", "size=32", "--train", "fake", "--epochs", "1", "--out", str(run)]
    assert main(args) == 0
    assert "exits " in capsys.readouterr().out
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record) >= {"test_error", "test_exit1_error"}
    assert main(["msdnet", "--eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "anytime prediction" in out and "budgeted prediction" in out
    result = json.loads((run / "anytime.json").read_text())
    assert [r["name"] for r in result["anytime"]] == ["exit1", "head"]
    assert result["anytime"][-1]["error"] == pytest.approx(record["test_error"])
    assert len(result["budgeted"]) == len(anytime.SHARES)


ERRORS = [
    ("no grid", "    stem conv(3, 8)\n    msdense(2, 4)\n    head classifier(5)", "msdense", "there is none yet"),
    (
        "dense on a grid",
        "    stem conv(3, 8)\n    scales(8, [1, 2])\n    dense(2, 4)\n    head classifier(5)",
        "dense",
        "works on one scale",
    ),
    (
        "odd split",
        "    stem conv(3, 8)\n    scales(8, [1, 1])\n    msdense(2, 3)\n    head classifier(5)",
        "msdense",
        "needs an even number",
    ),
    (
        "bottlenecks",
        "    stem conv(3, 8)\n    scales(8, [1, 2])\n    msdense(2, 4, bottlenecks = [1])\n    head classifier(5)",
        "msdense",
        "gives 1 widths for a grid of 2",
    ),
    (
        "finest width",
        "    stem conv(3, 6)\n    scales(8, [1, 2])\n    msdense(2, 4)\n    head classifier(5)",
        "scales",
        "makes the finest scale 8 channels wide, but the maps before it have 6",
    ),
    ("no classifier", "    stem conv(3, 8)\n    exit { conv(3, 8) }\n    head classifier(5)", "exit", "has none"),
    (
        "classifier first",
        "    stem conv(3, 8)\n    exit { classifier(5) conv(3, 8) }\n    head classifier(5)",
        "classifier",
        "one classifier, at its end",
    ),
    ("classes", "    stem conv(3, 8)\n    exit classifier(4)\n    head classifier(5)", "exit", "shape 4"),
]


@pytest.mark.parametrize(("body", "at", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_grid_and_exit_mistakes_are_located(body, at, message):
    source = f"network n {{\n    input 3 x 16 x 16\n{body}\n}}"
    with pytest.raises(dsl.DnetError) as info:
        compiler.build_graph(dsl.parse(source))
    error = info.value
    assert message in str(error)
    line = source.splitlines()[error.span.line - 1]
    assert line[error.span.col - 1 :].startswith(at), (line, error.span)
