"""Datasets load as checked uint8 tensors; bad files give clear errors; augmentation is batched and exact."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dnetc.runtime import data


def test_digits_is_real_data_split_by_class():
    d = data.load("digits")
    assert (len(d.train), len(d.test)) == (1438, 359)
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape[1:] == (1, 8, 8)
    assert int(d.train.images.max()) == 255
    counts = torch.bincount(d.test.labels, minlength=10)
    assert counts.min() >= 35  # every class has its share of the test set
    again = data.load("digits")
    assert torch.equal(again.test.labels, d.test.labels)
    fitted = data.load("digits", shape=(3, 32, 32))
    assert fitted.train.images.shape[1:] == (3, 32, 32) and fitted.mean.shape == (3,)


def test_fake_data_takes_the_networks_shape():
    d = data.load("fake", shape=(2, 12), seed=3)
    assert d.train.images.shape == (512, 2, 12) and d.mean.shape == (2,)
    assert torch.equal(d.train.images, data.load("fake", shape=(2, 12), seed=3).train.images)


def test_unknown_dataset_suggests_one():
    with pytest.raises(data.DataError, match="did you mean `cifar10`"):
        data.load("cifar01")


def cifar_batch(n: int, labels: list[int] | None = None, width: int = 3072) -> bytes:
    rng = np.random.default_rng(n)
    batch = {
        b"data": rng.integers(0, 256, (n, width), dtype=np.uint8),
        b"labels": labels if labels is not None else list(rng.integers(0, 10, n)),
    }
    return pickle.dumps(batch)


def write_cifar(folder, **overrides: bytes) -> None:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(overrides.get(name, cifar_batch(4)))


def test_cifar_from_the_extracted_folder(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    d = data.load("cifar10", tmp_path)
    assert d.train.images.shape == (20, 3, 32, 32) and d.test.images.shape == (4, 3, 32, 32)
    raw = pickle.loads(cifar_batch(4))[b"data"]
    assert torch.equal(d.test.images.reshape(4, -1), torch.from_numpy(raw))  # R, G, B planes, row-major


def cifar_archive(tmp_path) -> Path:
    """A small CIFAR-10 archive laid out as the official one, in tmp_path/data."""
    src = tmp_path / "src"
    write_cifar(src / "cifar-10-batches-py")
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_cifar_archive_is_checked_and_read(tmp_path, monkeypatch):
    archive = cifar_archive(tmp_path)
    with pytest.raises(data.DataError, match=r"md5 is .* not c58f30108f718f92721af3b95e74349a"):
        data.load("cifar10", archive.parent)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data.dataset("cifar10").info, "md5", md5)
    assert len(data.load("cifar10", archive.parent).train) == 20
    archive.write_bytes(archive.read_bytes()[:200])  # truncated: the md5 no longer matches
    with pytest.raises(data.DataError, match="corrupt or incomplete"):
        data.load("cifar10", archive.parent)


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps(Exploit()), "refusing to load builtins.print"),
        (cifar_batch(4, labels=[0, 1, 2, 10]), "labels run from 0 to 10"),
        (cifar_batch(4, width=100), "not N x 3072"),
        (b"not a pickle", "cannot read"),
        (pickle.dumps({b"nothing": 1}), "not a CIFAR batch"),
    ],
)
def test_bad_cifar_files(tmp_path, content, message):
    write_cifar(tmp_path / "cifar-10-batches-py", test_batch=content)
    with pytest.raises(data.DataError, match=message):
        data.load("cifar10", tmp_path)


def test_missing_dataset_says_what_and_where(tmp_path):
    with pytest.raises(data.DataError) as caught:
        data.load("cifar100", tmp_path)
    text = str(caught.value)
    assert "cifar-100-python.tar.gz" in text and str(tmp_path) in text and "$DNETC_DATA" in text


def test_svhn_mat_files(tmp_path):
    import scipy.io

    for name, n in (("train_32x32.mat", 5), ("test_32x32.mat", 3)):
        x = np.random.default_rng(n).integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        scipy.io.savemat(tmp_path / name, {"X": x, "y": np.array([[10], [1], [2], [3], [9]][:n])})
    d = data.load("svhn", tmp_path)
    assert d.train.images.shape == (5, 3, 32, 32)
    assert d.train.labels.tolist() == [0, 1, 2, 3, 9]  # label 10 is the digit 0
    x = scipy.io.loadmat(tmp_path / "train_32x32.mat")["X"]
    assert torch.equal(d.train.images[1], torch.from_numpy(x[:, :, :, 1]).permute(2, 0, 1))


def test_normalise():
    images = torch.tensor([[[[0, 255]]], [[[128, 64]]]], dtype=torch.uint8)
    out = data.normalise(images, torch.tensor([128.0]), torch.tensor([2.0]))
    assert torch.equal(out, (images.float() - 128) / 2)


@pytest.mark.parametrize("shape", [(6, 2, 10), (6, 3, 8, 8), (6, 1, 4, 5, 6)])
def test_crop_and_flip_is_the_per_sample_augmentation(shape):
    x = torch.randn(shape)
    out = data.crop_and_flip(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2) * (x.dim() - 2))
    for i in range(shape[0]):  # each sample is some window of its padded self, maybe mirrored
        windows = padded[i]
        for d, size in enumerate(shape[2:]):
            windows = windows.unfold(1 + d, size, 1)
        candidates = windows.movedim(0, len(shape[2:])).reshape(-1, *shape[1:])
        found = any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in candidates)
        assert found, i


def test_crop_and_flip_varies_per_sample_and_keeps_the_original_without_padding():
    x = torch.arange(64 * 16, dtype=torch.float32).view(64, 1, 4, 4)
    out = data.crop_and_flip(x, 0, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(a or b for a, b in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54
    shifted = data.crop_and_flip(x, 2, torch.Generator().manual_seed(0))
    assert len({tuple(s.flatten().tolist()) for s in shifted}) == 64


def test_svhn_extra_and_the_validation_split(tmp_path):
    import scipy.io

    for name, n in (("train_32x32.mat", 5), ("test_32x32.mat", 3), ("extra_32x32.mat", 4)):
        x = np.full((32, 32, 3, n), n, dtype=np.uint8)
        scipy.io.savemat(tmp_path / name, {"X": x, "y": np.full((n, 1), n)})
    d = data.load("svhn", tmp_path, extra=True)
    assert len(d.train) == 9 and d.train.labels.tolist() == [5] * 5 + [4] * 4 and d.val is None
    held = data.load("svhn", tmp_path, extra=True, validation=3)
    assert (len(held.train), len(held.val)) == (6, 3)
    again = data.load("svhn", tmp_path, extra=True, validation=3)  # the same images, run after run
    assert torch.equal(held.val.labels, again.val.labels) and torch.equal(held.val.images, again.val.images)
    together = torch.cat([held.train.labels, held.val.labels]).sort().values
    assert torch.equal(together, d.train.labels.sort().values)
    with pytest.raises(data.DataError, match="cannot hold 9"):
        data.load("svhn", tmp_path, extra=True, validation=9)
    from dnetc.runtime.train import resolve

    assert resolve("svhn", device="cpu").validation == 6000


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not gzip"])
def test_a_damaged_archive_whose_md5_was_vouched_for_is_a_clear_error(tmp_path, monkeypatch, damage):
    """Even past the md5 check (a user's edited table, a collision): damage that breaks the archive's
    structure ends in a DataError. (Flipped image bytes inside it are the md5's to catch.)"""
    archive = cifar_archive(tmp_path)
    raw = bytearray(archive.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "flipped":
        for i in range(10, 74):  # the first deflate block's header and the first tar header
            raw[i] ^= 0x5A
    else:
        raw = bytearray(b"<html>404 Not Found</html>")
    archive.write_bytes(bytes(raw))
    monkeypatch.setitem(data.dataset("cifar10").info, "md5", hashlib.md5(bytes(raw)).hexdigest())
    with pytest.raises(data.DataError, match=r"cannot read|has no cifar-10-batches-py"):
        data.load("cifar10", archive.parent)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((32, 32, 3, 3), np.uint8), np.array([[1], [11], [2]]), "labels from 1 to 11"),
        (np.zeros((32, 32, 3, 3), np.uint8), np.array([[0], [1], [2]]), "labels from 0 to 2"),
        (np.zeros((32, 32, 3, 3), np.uint8), np.array([[1], [2]]), "2 labels from 1 to 2 for 3 images"),
        (np.zeros((28, 28, 3, 3), np.uint8), np.array([[1], [2], [3]]), r"shape \(28, 28, 3, 3\)"),
        (np.zeros((32, 32, 3, 3), np.float64), np.array([[1], [2], [3]]), "type float64"),
    ],
)
def test_bad_svhn_files(tmp_path, x, y, message):
    import scipy.io

    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    with pytest.raises(data.DataError, match=message):
        data.load("svhn", tmp_path)
