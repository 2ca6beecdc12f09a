"""The seams docs/architecture.md names: a dataset, an optimizer and a memory lowering added there, and used."""

from __future__ import annotations

import json
import tomllib

import torch

from dnetc import runtime
from dnetc.runtime import data, datasets, optim

RINGS = """
loader = "rings"
classes = 3
shape = [1, 16, 16]
adapts = true
name = "Rings"
mean = [64.0]
std = [80.0]
train_size = 300
test_size = 90
recipe = { optimizer = "sgd", epochs = 4, batch = 32, lr = 0.1, momentum = 0.9, nesterov = true, \
weight_decay = 1e-4, schedule = "step", milestones = [0.5, 0.75], gamma = 0.1, augment = false }
"""


def rings(ds: datasets.Dataset, request: data.Request) -> data.Data:
    """Rings of radius 2, 4 or 6 (the class) around a random centre, with noise."""
    g = torch.Generator().manual_seed(request.seed)
    side = ds.shape[1]
    y, x = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")

    def split(n: int) -> data.Split:
        labels = torch.randint(0, ds.classes, (n,), generator=g)
        cx, cy = torch.rand(2, n, 1, 1, generator=g) * 4 + side / 2 - 2
        r = ((x - cx) ** 2 + (y - cy) ** 2).sqrt()
        images = ((r - 2 * (labels.view(n, 1, 1) + 1)).abs() < 1).float() * 200 + torch.rand(
            n, side, side, generator=g
        ) * 50
        return data.Split(images.round().to(torch.uint8).unsqueeze(1), labels)

    return data.tensors(ds, split(ds.info["train_size"]), split(ds.info["test_size"]), request)


def test_a_dataset_is_an_entry_and_a_loader(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(datasets.DATASETS, "rings", datasets.record("rings", tomllib.loads(RINGS)))
    monkeypatch.setitem(data.LOADERS, "rings", rings)
    result = runtime.fit("densenet_bc", "rings", overrides={"depth": 10, "growth": 8}, device="cpu", out=tmp_path)
    assert result["epoch"] == 4 and result["test_error"] < 40  # chance: 67%
    assert "Rings test error" in capsys.readouterr().out  # the paper's name for it, from the entry


def test_an_optimizer_is_one_record(tmp_path, monkeypatch):
    def plain_sgd(params, lr, config, device):
        return torch.optim.SGD(params, lr=lr, weight_decay=config.weight_decay)

    monkeypatch.setitem(optim.OPTIMIZERS, "plain", optim.Optimizer(plain_sgd, defaults={"lr": 0.05}))
    result = runtime.fit(
        "densenet_bc", "digits", overrides={"depth": 10, "growth": 8}, optimizer="plain", epochs=2, out=tmp_path
    )
    config = json.loads((tmp_path / "config.json").read_text())["config"]
    assert config["optimizer"] == "plain" and config["lr"] == 0.05 and result["epoch"] == 2


def test_a_memory_lowering_is_one_record(monkeypatch, dnetc):
    """A lowering added as one record: the language, compile, the estimator, --summary and --memory know it."""
    from dnetc import compiler, dsl
    from dnetc.compiler.estimate import estimate_all
    from dnetc.compiler.lowerings import LOWERINGS, Lowering

    concat = Lowering(
        "concat",
        "naive's block under another name",
        "dnetc.compiler.modules:DenseBlock",
        keeps="all",
        scratch=(2, 2),
        dropout_masks=True,
        memory_efficient=False,
        sync_bn=True,
        speed={"cpu": 9, "cuda": 9},
    )
    monkeypatch.setitem(LOWERINGS, "concat", concat)
    net = dsl.parse("network n { memory concat input 3 x 8 x 8 stem conv(3, 8) dense(2, 4) head classifier(2) }")
    model = compiler.compile(net)
    assert model.memory == "concat" and model(torch.randn(2, 3, 8, 8)).shape == (2, 2)
    g = compiler.build_graph(net)
    assert estimate_all(g)["concat"] == estimate_all(g)["naive"]
    result = dnetc("densenet_bc", "--set", "depth=10", "--memory", "concat", "--summary", "--depth", "1")
    assert result.returncode == 0, result.stderr
    assert "concat" in result.stdout and "<- this module" in result.stdout
