"""Image-folder datasets (ImageNet's layout): the paper's transforms in workers, exact resume, ten crops."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dnetc.runtime import checkpoint
from dnetc.runtime.data import DataError, dataset, load
from dnetc.runtime.images import Files, Lighting, Raw, _collate_raw, on_device, scan, transforms
from dnetc.runtime.launch import plan
from dnetc.runtime.train import Trainer, resolve

SMALL = ["--set", "blocks=[2,2]", "--set", "growth=8", "--set", "size=32"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three classes of JPEG and PNG files of another size than the network's input."""
    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("val", 3)):
        for c in range(3):
            d = root / split / f"n0{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = (torch.rand(40, 48, 3, generator=g) * 80 + c * 80).to(torch.uint8)
                Image.fromarray(img.numpy()).save(d / (f"{i}.png" if i % 2 else f"{i}.JPEG"))
    return root


def test_transforms_are_the_papers():
    info = dataset("imagenet").info
    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    torch.manual_seed(0)
    assert transforms(info, (224, 224), True, False)(img).shape == (3, 224, 224)
    test = transforms(info, (224, 224), False, False)
    assert test(img).shape == (3, 224, 224)
    assert transforms(info, (224, 224), False, True)(img).shape == (10, 3, 224, 224)
    # 256/224 of the crop size: a 112 crop comes from a 128 resize
    resize = transforms(info, (112, 112), False, False).transforms[0]
    assert resize.size == [128]
    lighting = Lighting(0.1, info["eigval"], info["eigvec"])
    flat = torch.zeros(3, 4, 4)
    shifted = lighting(flat)
    assert torch.allclose(shifted, shifted[:, :1, :1].expand(3, 4, 4)) and shifted.abs().sum() > 0
    assert dataset("folder").info["mean"] == info["mean"] and dataset("folder").classes == 0


def test_imagenet_recipe_decays_at_epochs_31_and_61():
    from dnetc.runtime.optim import lr_at

    c = resolve("imagenet", device="cpu")
    assert (c.batch_size, c.epochs) == (256, 90)
    assert [lr_at(c, e, 0, 10) for e in (29, 30, 59, 60)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_folder_training_and_ten_crop_evaluation(folders, tmp_path, dnetc):
    args = ["densenet_imagenet", *SMALL, "--train", "folder", "--data", str(folders)]
    r = dnetc(*args, "--epochs", "2", "--batch-size", "6", "--workers", "2", "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "24 images" in r.stdout and "folder test error" in r.stdout
    r = dnetc(*args, "--eval", str(tmp_path), "--ten-crop")
    assert r.returncode == 0, r.stderr
    assert "ten crops test error" in r.stdout


def _trainer(folders, out, workers, decode="workers"):
    flags = {"epochs": 2, "batch_size": 6, "deterministic": True, "device": "cpu", "precision": "fp32"}
    flags |= {"workers": workers, "decode": decode}
    run = plan("densenet_imagenet", "folder", recorded=SMALL[1::2], flags=flags, out=out, data_root=str(folders))
    return Trainer(run)


def test_resume_is_exact_whatever_the_workers(folders, tmp_path):
    whole = _trainer(folders, tmp_path / "whole", workers=0)
    whole.train()
    first = _trainer(folders, tmp_path / "split", workers=2)
    assert first.train(interrupt_at=(1, 2))["interrupted"]
    second = _trainer(folders, tmp_path / "split", workers=2)
    second.restore(checkpoint.load(tmp_path / "split" / "checkpoints" / "latest.pt"))
    second.train()
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_decoding_on_the_device_draws_the_workers_transforms(folders):
    """--decode device (the CUDA default): the workers send bytes and the transforms' draws, the
    batch is decoded and transformed where it trains; the same images as the workers make, up to
    the decoders' and resize kernels' rounding (here on the CPU, torchvision's decoder and PIL's)."""
    info = dataset("imagenet").info
    _, samples = scan(folders / "train")
    files = Files(samples, transforms(info, (32, 32), True, False), seed=3)
    raw = Raw(samples, info, (32, 32), seed=3)
    keys = [(i, 1, 2) for i in range(len(samples))]
    x = on_device(*_collate_raw([raw[k] for k in keys])[:2], info, (32, 32), torch.device("cpu"))
    workers = torch.stack([files[k][0] for k in keys])
    level = 1 / 255 / (min(info["std"]) / 255)  # one uint8 level, normalised
    diff = (x - workers).abs()
    assert x.shape == workers.shape == (24, 3, 32, 32)
    assert float(diff.mean()) < 0.05 * level and float((diff <= 1.01 * level).float().mean()) > 0.99
    again = on_device(*_collate_raw([raw[k] for k in keys])[:2], info, (32, 32), torch.device("cpu"))
    assert torch.equal(x, again)


def test_resume_is_exact_with_decoding_on_the_device(folders, tmp_path):
    whole = _trainer(folders, tmp_path / "whole", workers=0, decode="device")
    assert whole.data.raw is not None
    whole.train()
    first = _trainer(folders, tmp_path / "split", workers=0, decode="device")
    assert first.train(interrupt_at=(1, 2))["interrupted"]
    second = _trainer(folders, tmp_path / "split", workers=0, decode="device")
    second.restore(checkpoint.load(tmp_path / "split" / "checkpoints" / "latest.pt"))
    second.train()
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_folder_mistakes(folders, tmp_path, dnetc):
    r = dnetc("densenet121", "--train", "imagenet", "--data", str(tmp_path))
    assert r.returncode == 2 and "train" in r.stderr and "Traceback" not in r.stderr
    r = dnetc("densenet121", "--train", "imagenet", "--data", str(folders))
    assert r.returncode == 2 and "3 class folders, not imagenet's 1000" in r.stderr
    with pytest.raises(DataError, match="not 3 x H x W"):
        load("folder", folders, shape=(1, 32, 32))
    with pytest.raises(DataError, match="--ten-crop is for image-folder datasets"):
        load("digits", ten_crop=True)
