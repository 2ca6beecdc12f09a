"""The trainer: reaches the accuracy it should, resumes exactly, and never loses work."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dnetc import dsl
from dnetc.runtime import checkpoint
from dnetc.runtime.launch import bind, plan
from dnetc.runtime.optim import lr_at
from dnetc.runtime.train import Trainer, TrainingError, resolve

from .conftest import run_cli, stop_after_first_epoch

SMALL = ["--set", "depth=16", "--set", "growth=8"]


def trainer(tmp_path, epochs=2, dropout=0.2, **flags) -> Trainer:
    flags = {"epochs": epochs, "deterministic": True, "device": "cpu", "precision": "fp32", **flags}
    overrides = {"depth": 16, "growth": 8, "dropout": dropout}
    return Trainer(plan("densenet_bc", "digits", overrides=overrides, flags=flags, out=tmp_path))


def test_learning_rate_schedules():
    c = resolve("cifar10", device="cpu")
    # 1-based epoch 150 of 300 is the first at 0.01, as in the authors' code
    assert [lr_at(c, e, 0, 10) for e in (0, 148, 149, 223, 224, 299)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    cos = resolve("cifar10", schedule="cosine", epochs=2, device="cpu")
    assert lr_at(cos, 0, 0, 10) == pytest.approx(0.1) and lr_at(cos, 1, 0, 10) == pytest.approx(0.05)
    assert c.batch_size == 64 and c.epochs == 300 and c.nesterov and c.weight_decay == 1e-4


def test_digits_reaches_97_percent(tmp_path, dnetc):
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
    r = dnetc("densenet_bc", "--set", "depth=22", "--set", "growth=12", "--eval", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"digits test error {final['test_error']:.2f}%" in r.stdout


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    whole = trainer(tmp_path / "whole")
    whole.train()
    first = trainer(tmp_path / "split")
    stopped = first.train(interrupt_at=(1, 5))
    assert stopped["interrupted"] and (tmp_path / "split" / "checkpoints" / "latest.pt").exists()
    second = trainer(tmp_path / "split")
    second.restore(checkpoint.load(tmp_path / "split" / "checkpoints" / "latest.pt"))
    assert (second.epoch, second.step) == (1, 5)
    second.train()
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoints_are_checked_and_safe(tmp_path):
    t = trainer(tmp_path, epochs=1)
    t.train()
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
        t.train()


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


def test_training_mistakes_exit_2(tmp_path, dnetc):
    r = dnetc("densenet_bc", "--train", "cifar100", "--data", str(tmp_path))
    assert r.returncode == 2 and "cifar-100-python.tar.gz" in r.stderr and "Traceback" not in r.stderr
    r = dnetc("densenet_bc", "--train", "digitz")
    assert r.returncode == 2 and "did you mean `digits`" in r.stderr
    r = dnetc("figure1", "--train", "digits")
    assert r.returncode == 2 and "not class scores" in r.stderr and "head classifier" in r.stderr
    bad = tmp_path / "latest.pt"
    bad.write_bytes(b"garbage")
    r = dnetc("densenet_bc", "--train", "digits", "--resume", str(bad))
    assert r.returncode == 2 and "latest.pt" in r.stderr


def test_the_spec_binds_to_the_dataset():
    network, _, bound = bind("densenet_bc", {}, "cifar100", True)
    assert network.parameters["classes"] == 100 and bound == {"classes": 100, "size": 32}
    network, _, bound = bind("densenet_bc", {}, "digits", False)
    assert (network.parameters["size"], network.parameters["dropout"]) == (8, 0.0)
    network, _, bound = bind("densenet_bc", {}, "cifar10", False)  # the paper's C10 without augmentation
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
    t.train()
    within = [step for name, epoch, step in saved if name == "latest.pt" and epoch == 0]
    assert within == list(range(1, t.steps_per_epoch() + 1))
    state = checkpoint.load(tmp_path / "checkpoints" / "latest.pt")
    assert state["order"] is None and state["epoch"] == 1  # the end of the epoch: a new order comes next


def test_a_validation_split_chooses_the_best(tmp_path, dnetc):
    r = dnetc(
        *["densenet_bc", *SMALL], "--train", "digits", "--epochs", "2", "--validation", "200", "--out", str(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("val_error" in r and "test_error" in r for r in records)
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["best"] == min(r["val_error"] for r in records)
    assert "1238 images" in r.stdout  # 1,438 training images less the 200 held out


def test_channels_last_is_a_2d_layout_that_1d_and_3d_networks_train_without(tmp_path, dnetc):
    """The default layout (channels_last) has no meaning for 3D or 1D weights: those keep theirs."""
    for rank in (1, 3):
        spec = tmp_path / f"tiny{rank}d.dnet"
        sizes = " x ".join(["8"] * rank)
        body = "    stem conv(3, 8)\n    dense(2, 4)\n    head classifier(10)\n"
        spec.write_text(f"network tiny {{\n    input 3 x {sizes}\n{body}}}\n")
        r = dnetc(str(spec), "--train", "fake", "--channels-last", "--out", str(tmp_path / f"run{rank}"))
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / f"run{rank}" / "config.json").read_text())["config"]["channels_last"] is True


def _poison_at(t: Trainer, step: int) -> None:
    """The loss of training step `step` (1-based, this run's count) becomes NaN: its input is multiplied by NaN."""
    calls = {"n": 0}

    def hook(module, args):
        if not module.training:
            return None
        calls["n"] += 1
        return (args[0] * float("nan"),) if calls["n"] == step else None

    t.model.register_forward_pre_hook(hook)


def _finite(state: dict) -> bool:
    tensors = [*state["model"].values()]
    tensors += [v for s in state["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    return all(bool(v.isfinite().all()) for v in tensors if v.is_floating_point())


@pytest.mark.parametrize("at", [5, 17])
def test_a_nan_mid_run_keeps_the_last_good_checkpoint(tmp_path, at):
    """A NaN injected at a chosen step, with a checkpoint due after every step: the run stops naming
    the exact step and the checkpoint written just before it, which is finite and resumes."""
    t = trainer(tmp_path, epochs=2, checkpoint_every=1e-9)
    _poison_at(t, at)
    with pytest.raises(TrainingError) as e:
        t.train()
    latest = tmp_path / "checkpoints" / "latest.pt"
    assert f"the loss became nan at epoch 1, step {at}:" in str(e.value)
    assert f"The last good checkpoint is {latest} (epoch 1, step {at - 1})" in str(e.value)
    state = checkpoint.load(latest)
    assert (state["epoch"], state["step"]) == (0, at - 1) and _finite(state)
    again = trainer(tmp_path)
    again.restore(state)
    assert again.train()["epoch"] == 2


def test_a_nan_between_checkpoints_is_found_a_window_late_and_named_exactly(tmp_path):
    t = trainer(tmp_path, epochs=2)
    _poison_at(t, 3)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 3: .*No checkpoint was written"):
        t.train()
    assert not (tmp_path / "checkpoints" / "latest.pt").exists()


def test_no_checkpoint_holds_a_state_that_is_not_finite(tmp_path):
    """The case a user found: at LR 1e4 the loss stays finite for a few steps while the batch norms'
    running variances overflow. No checkpoint may hold them; the message names the good one."""
    t = trainer(tmp_path, epochs=4, dropout=0.0, lr=1e4, checkpoint_every=1e-9)
    with pytest.raises(TrainingError) as e:
        t.train()
    latest = tmp_path / "checkpoints" / "latest.pt"
    state = checkpoint.load(latest)
    assert _finite(state) and state["step"] >= 1
    message = str(e.value)
    assert f"after epoch 1, step {state['step'] + 1}: " in message and "running_var" in message
    assert f"The last good checkpoint is {latest} (epoch 1, step {state['step']}); try a lower --lr" in message


def test_config_json_holds_the_resolved_configuration(tmp_path, dnetc):
    r = dnetc("densenet_bc", *SMALL, "--train", "digits", "--max-steps", "2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "stopped after 2 steps as asked" in r.stdout
    record = json.loads((tmp_path / "config.json").read_text())
    config = record["config"]
    assert config == {**config, "lr": 0.1, "precision": "fp32", "batch_size": 64, "optimizer": "sgd", "epochs": 30}
    assert None not in (config["lr"], config["precision"], config["channels_last"], config["momentum"])
    assert record["overrides"] == ["depth=16", "growth=8"] and record["bound"] == {"classes": 10, "size": 8}
    state = checkpoint.load(tmp_path / "checkpoints" / "latest.pt")
    assert (state["epoch"], state["step"]) == (0, 2) and state["config"] == config


def test_adamw_and_an_ema_resume_exactly_and_the_ema_is_what_is_evaluated(tmp_path, dnetc):
    flags = {"optimizer": "adamw", "ema": 0.9}
    whole = trainer(tmp_path / "whole", **flags)
    assert (whole.config.lr, whole.config.weight_decay) == (1e-3, 0.05)  # AdamW's defaults over the SGD recipe
    assert isinstance(whole.optimizer, torch.optim.AdamW)
    whole.train()
    split = trainer(tmp_path / "split", **flags)
    split.train(interrupt_at=(1, 4))
    resumed = trainer(tmp_path / "split", **flags)
    resumed.restore(checkpoint.load(tmp_path / "split" / "checkpoints" / "latest.pt"))
    resumed.train()
    a, b = checkpoint.load(tmp_path / "whole" / "checkpoints" / "latest.pt"), resumed.state()
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert a["inference"] == "ema" and not torch.equal(a["ema"]["classifier.weight"], a["model"]["classifier.weight"])
    # what the run reported is the average's error, and --eval and --weights read the average
    from dnetc.runtime.weights import read

    assert torch.equal(
        read(tmp_path / "whole" / "checkpoints" / "latest.pt")["classifier.weight"], a["ema"]["classifier.weight"]
    )
    final = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[-1])
    r = dnetc("densenet_bc", "--eval", str(tmp_path / "whole"))
    assert r.returncode == 0, r.stderr
    assert f"digits test error {final['test_error']:.2f}%" in r.stdout


def test_max_steps_stops_where_asked_and_resumes(tmp_path):
    t = trainer(tmp_path, epochs=2, max_steps=30)
    result = t.train()
    steps = t.steps_per_epoch()
    assert not result["interrupted"] and (result["epoch"], result["step"]) == (1, 30 - steps)
    again = trainer(tmp_path, epochs=2)
    again.restore(checkpoint.load(tmp_path / "checkpoints" / "latest.pt"))
    assert again.train()["epoch"] == 2


def test_gpu_flags_are_checked_before_any_work(tmp_path, dnetc):
    r = dnetc("densenet_bc", *SMALL, "--train", "digits", "--device", "cpu", "--cuda-graphs")
    assert r.returncode == 2 and "--cuda-graphs cannot apply: they are a CUDA feature" in r.stderr
    r = dnetc("densenet_bc", *SMALL, "--train", "digits", "--compile", "fastest")
    assert r.returncode == 2 and "reduce-overhead" in r.stderr
    r = dnetc("densenet_bc", *SMALL, "--train", "digits", "--ema", "1.5")
    assert r.returncode == 2 and "--ema takes a decay between 0 and 1" in r.stderr and "Traceback" not in r.stderr
