"""`--weights`: dnetc checkpoints, plain state_dicts and torchvision's files in both key styles."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dnetc import compiler
from dnetc.runtime import checkpoint
from dnetc.runtime.weights import WeightsError, load_into, read

torchvision = pytest.importorskip("torchvision")


def old_style(state: dict) -> dict:
    """torchvision's first DenseNet files: `denselayer1.norm.1.weight` for `denselayer1.norm1.weight`."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)\.", r"\1.\2.", k): v for k, v in state.items()}


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return torchvision.models.densenet121(weights=None).eval()


@pytest.fixture(scope="module")
def files(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    state = reference.state_dict()
    old = old_style(state)
    assert sum(".norm.1." in k for k in old) == 58 * 5  # the old style really differs (58 layers, 5 tensors each)
    torch.save(state, folder / "densenet121.pth")
    torch.save(old, folder / "densenet121-old.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "ddp.pth")
    return folder


@pytest.mark.parametrize("name", ["densenet121.pth", "densenet121-old.pth", "ddp.pth"])
def test_torchvision_files_load_and_give_torchvisions_outputs(name, files, reference):
    model = compiler.compile("densenet121").eval()
    assert load_into(model, files / name) == len(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_summary_with_weights_in_both_key_styles(files, dnetc):
    for name in ("densenet121.pth", "densenet121-old.pth"):
        result = dnetc("densenet121", "--summary", "--depth", "1", "--weights", str(files / name))
        assert result.returncode == 0, result.stderr
        assert f"Weights: 727 tensors from {files / name}, every one matched." in result.stdout


def test_a_file_that_does_not_fit_gives_a_table_and_exit_2(files, dnetc):
    result = dnetc("densenet169", "--summary", "--weights", str(files / "densenet121.pth"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    first, header, *rows = result.stderr.splitlines()
    assert first.startswith(f"error: {files / 'densenet121.pth'} does not fit densenet169: ")
    assert "of another shape" in first and "missing from the file" in first
    assert header.split() == ["module", "tensors", "in", "the", "file", "in", "densenet169"]
    assert any(r.split() == ["features.denseblock3.denselayer25.norm1", "5", "-", "1024"] for r in rows)
    assert rows[-2].strip().startswith("... and ") and "--set" in rows[-1]
    torchinfo_table = "Total params"
    assert torchinfo_table not in result.stdout  # refused before anything is shown


def test_another_class_count_needs_reset_classifier(files, tmp_path, dnetc):
    args = ["densenet121", "--set", "classes=10", "--weights", str(files / "densenet121.pth")]
    refused = dnetc(*args, "--export", "onnx", str(tmp_path / "m.onnx"))
    assert refused.returncode == 2
    assert re.search(r"classifier +2 +1000x1024 +10x1024", refused.stderr)
    assert "--reset-classifier" in refused.stderr
    model = compiler.compile("densenet121", classes=10)
    before = model.classifier.weight.clone()
    load_into(model, files / "densenet121.pth", reset=["classifier"])
    assert torch.equal(model.classifier.weight, before)  # left at its initial values
    assert torch.equal(
        model.features.conv0.weight, torch.load(files / "densenet121.pth", weights_only=True)["features.conv0.weight"]
    )


def test_reset_classifier_needs_weights(dnetc):
    result = dnetc("densenet121", "--reset-classifier")
    assert result.returncode == 2 and "--weights" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a torch file", "is not a torch weights file"), (None, "no weights file"), ([1, 2], "holds no state_dict")],
)
def test_unreadable_weights_are_named(content, message, tmp_path, dnetc):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        read(path)
    result = dnetc("densenet121", "--summary", "--weights", str(path))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(WeightsError, match=r"cannot be loaded safely: its pickle would call print "):
        read(path)


SMALL = ["densenet_bc", "--set", "depth=16", "--set", "growth=8"]


def test_evaluate_and_fine_tune_from_a_dnetc_checkpoint(tmp_path, dnetc):
    run = tmp_path / "run"
    trained = dnetc(*SMALL, "--train", "digits", "--epochs", "1", "--device", "cpu", "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    best = run / "checkpoints" / "latest.pt"
    by_run = dnetc(*SMALL, "--eval", str(run), "--device", "cpu")
    by_weights = dnetc(*SMALL, "--weights", str(best), "--eval", "--train", "digits")
    assert by_run.returncode == 0 and by_weights.returncode == 0, by_run.stderr + by_weights.stderr
    error = re.search(r"test error (\S+)%", by_run.stdout).group(1)
    assert f"test error {error}%" in by_weights.stdout
    tuned = tmp_path / "tuned"
    args = [*SMALL, "--weights", str(best), "--reset-classifier", "--train", "digits", "--epochs", "1"]
    result = dnetc(*args, "--device", "cpu", "--out", str(tuned))
    assert result.returncode == 0, result.stderr
    assert re.search(r"started from \d+ tensors of .*latest.pt, the classifier afresh", result.stdout)
    recorded = json.loads((tuned / "config.json").read_text())["weights"]
    assert recorded["reset_classifier"] is True and len(recorded["sha256"]) == 64
    first = checkpoint.load(best)["model"]["features.conv0.weight"]
    assert not torch.equal(
        first, checkpoint.load(tuned / "checkpoints" / "latest.pt")["model"]["features.conv0.weight"]
    )


def test_eval_without_a_checkpoint_needs_weights_and_a_dataset(dnetc):
    result = dnetc(*SMALL, "--eval")
    assert result.returncode == 2 and "--weights" in result.stderr
