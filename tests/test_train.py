"""The trainer: reaches the accuracy it should, resumes exactly, and never loses work."""

from __future__ import annotations

import json
import os

import pytest
import torch

import compiler
import dsl
from runtime import checkpoint
from runtime.data import load
from runtime.launch import bind
from runtime.train import Trainer, TrainingError, lr_at, resolve

from .conftest import run_cli, stop_after_first_epoch

SMALL = ["--set", "depth=16", "--set", "growth=8"]


def trainer(tmp_path, epochs=2, dropout=0.2, **flags) -> Trainer:
    network, _ = bind(
        "densenet_bc", dsl.parse_overrides(["depth=16", "growth=8", f"dropout={dropout}"]), "digits", False
    )
    config = resolve("digits", epochs=epochs, deterministic=True, device="cpu", precision="fp32", **flags)
    torch.manual_seed(0)
    model = compiler.compile(network)
    data = load("digits", shape=tuple(compiler.build_graph(network).nodes["input"]["shape"]))
    return Trainer(model, data, config, tmp_path, {"spec": "", "version": "test"})


def test_learning_rate_schedules():
    c = resolve("cifar10", device="cpu")
    # 1-based epoch 150 of 300 is the first at 0.01, as in the authors' code
    assert [lr_at(c, e, 0, 10) for e in (0, 148, 149, 223, 224, 299)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    cos = resolve("cifar10", schedule="cosine", epochs=2, device="cpu")
    assert lr_at(cos, 0, 0, 10) == pytest.approx(0.1) and lr_at(cos, 1, 0, 10) == pytest.approx(0.05)
    assert c.batch_size == 64 and c.epochs == 300 and c.nesterov and c.weight_decay == 1e-4


def test_digits_reaches_97_percent(tmp_path):
    r = run_cli(
        "densenet_bc",
        "--set",
        "depth=22",
        "--set",
        "growth=12",
        "--train",
        "digits",
        "--epochs",
        "20",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    final = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["test_error"] <= 3.0, final
    assert "digits test error" in r.stdout and final["data_fraction"] < 0.05
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "checkpoints" / "best.pt").exists()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
    r = run_cli("densenet_bc", "--set", "depth=22", "--set", "growth=12", "--eval", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"digits test error {final['test_error']:.2f}%" in r.stdout


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    whole = trainer(tmp_path / "whole")
    whole.run()
    first = trainer(tmp_path / "split")
    stopped = first.run(interrupt_at=(1, 5))
    assert stopped["interrupted"] and (tmp_path / "split" / "checkpoints" / "latest.pt").exists()
    second = trainer(tmp_path / "split")
    second.restore(checkpoint.load(tmp_path / "split" / "checkpoints" / "latest.pt"))
    assert (second.epoch, second.step) == (1, 5)
    second.run()
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoints_are_checked_and_safe(tmp_path):
    t = trainer(tmp_path, epochs=1)
    t.run()
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "epoch-0001.pt", "latest.pt"]
    state = checkpoint.load(folder / "latest.pt")
    assert {"model", "optimizer", "epoch", "step", "rng", "config", "history", "version"} <= set(state)
    raw = bytearray((folder / "latest.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (folder / "latest.pt").write_bytes(raw)
    with pytest.raises(checkpoint.CheckpointError, match=r"latest\.pt"):
        checkpoint.load(folder / "latest.pt")
    (folder / "latest.pt").write_bytes(raw[:100])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load(folder / "latest.pt")
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_crafted_pickle_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "bad.pt"
    torch.save({"format": "dnetc-checkpoint/1", "x": Exploit()}, bad)
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(bad)


def test_non_finite_loss_stops_with_a_message(tmp_path):
    t = trainer(tmp_path, epochs=1, lr=1e30)
    with pytest.raises(TrainingError, match=r"the loss became .* lower --lr"):
        t.run()


def test_sigterm_saves_and_resume_finishes(tmp_path):
    args = ["densenet_bc", *SMALL, "--train", "digits", "--epochs", "40", "--out", str(tmp_path)]
    code, out, err = stop_after_first_epoch([*args, "--device", "cpu", "--deterministic"], tmp_path)
    assert code == 1, err
    assert "resume with: dnetc densenet_bc --train digits --resume" in out
    state = checkpoint.load(tmp_path / "checkpoints" / "latest.pt")
    assert state["epoch"] >= 1
    r = run_cli(
        "densenet_bc", *SMALL, "--train", "digits", "--resume", str(tmp_path), "--epochs", str(state["epoch"] + 1)
    )
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout


def test_training_mistakes_exit_2(tmp_path):
    r = run_cli("densenet_bc", "--train", "cifar100", "--data", str(tmp_path))
    assert r.returncode == 2 and "cifar-100-python.tar.gz" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("densenet_bc", "--train", "digitz")
    assert r.returncode == 2 and "did you mean `digits`" in r.stderr
    r = run_cli("figure1", "--train", "digits")
    assert r.returncode == 2 and "not class scores" in r.stderr and "head classifier" in r.stderr
    bad = tmp_path / "latest.pt"
    bad.write_bytes(b"garbage")
    r = run_cli("densenet_bc", "--train", "digits", "--resume", str(bad))
    assert r.returncode == 2 and "latest.pt" in r.stderr


def test_the_spec_binds_to_the_dataset():
    network, bound = bind("densenet_bc", {}, "cifar100", True)
    assert network.parameters["classes"] == 100 and bound == {"classes": 100, "size": 32}
    network, bound = bind("densenet_bc", {}, "digits", False)
    assert (network.parameters["size"], network.parameters["dropout"]) == (8, 0.0)
    network, bound = bind("densenet_bc", {}, "cifar10", False)  # the paper's C10 without augmentation
    assert network.parameters["dropout"] == 0.2
    with pytest.raises(dsl.DnetError, match="10 outputs but cifar100 has 100"):
        bind("densenet_bc", dsl.parse_overrides(["classes=10"]), "cifar100", True)
    with pytest.raises(dsl.DnetError, match="takes 3x224x224 inputs but cifar10 images are 3x32x32"):
        bind("densenet121", dsl.parse_overrides(["classes=10", "size=224"]), "cifar10", True)


def test_checkpoint_every_n_minutes_saves_within_epochs(tmp_path, monkeypatch):
    t = trainer(tmp_path, epochs=1, checkpoint_every=1e-9)  # minutes: every step is past due
    saved = []
    real = Trainer.save

    def save(self, name="latest.pt"):
        saved.append((name, self.epoch, self.step))
        return real(self, name)

    monkeypatch.setattr(Trainer, "save", save)
    t.run()
    within = [step for name, epoch, step in saved if name == "latest.pt" and epoch == 0]
    assert within == list(range(1, t.steps_per_epoch() + 1))
    state = checkpoint.load(tmp_path / "checkpoints" / "latest.pt")
    assert state["order"] is None and state["epoch"] == 1  # the end of the epoch: a new order comes next


def test_a_validation_split_chooses_the_best(tmp_path):
    r = run_cli(
        *["densenet_bc", *SMALL], "--train", "digits", "--epochs", "2", "--validation", "200", "--out", str(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("val_error" in r and "test_error" in r for r in records)
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["best"] == min(r["val_error"] for r in records)
    assert "1238 images" in r.stdout  # 1,438 training images less the 200 held out


def test_channels_last_is_a_2d_layout_that_1d_and_3d_networks_train_without(tmp_path):
    """The default layout (channels_last) has no meaning for 3D or 1D weights: those keep theirs."""
    for rank in (1, 3):
        spec = tmp_path / f"tiny{rank}d.dnet"
        sizes = " x ".join(["8"] * rank)
        body = "    stem conv(3, 8)\n    dense(2, 4)\n    head classifier(10)\n"
        spec.write_text(f"network tiny {{\n    input 3 x {sizes}\n{body}}}\n")
        r = run_cli(str(spec), "--train", "fake", "--channels-last", "--out", str(tmp_path / f"run{rank}"))
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / f"run{rank}" / "config.json").read_text())["config"]["channels_last"] is True
