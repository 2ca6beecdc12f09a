"""Datasets as uint8 tensors that live on the training device, and batched augmentation there.

CIFAR, SVHN, digits and fake data are small enough to keep whole on the device: each batch is then
normalised, padded-and-cropped and flipped by a few tensor ops, with no per-sample Python and no
PIL. Every constant (classes, shapes, normalisation, file names, md5 sums, recipes) is in
`datasets.toml`.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from . import DATASETS

if TYPE_CHECKING:
    from .distributed import World

PAD = 4  # CIFAR augmentation: zero-pad 4, random crop back


class DataError(Exception):
    """A dataset that is missing, corrupt or not what it should be: the message says what to do."""


@dataclass
class Split:
    images: Tensor  # uint8 (N, C, *S)
    labels: Tensor  # int64 (N,), or (N, *S) masks for segmentation

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Data:
    """A dataset held whole in tensors; the trainer asks it for batches (as it asks runtime.images'
    folder datasets, which decode files in worker processes)."""

    name: str
    classes: int
    train: Split
    test: Split
    mean: Tensor  # per channel, 0-255 scale
    std: Tensor
    val: Split | None = None  # held out of the training images (SVHN's 6,000), for model selection
    crops: ClassVar[int] = 1  # test views per image

    def to(self, device: torch.device | str) -> Data:
        return Data(
            self.name,
            self.classes,
            self.train.to(device),
            self.test.to(device),
            self.mean.to(device),
            self.std.to(device),
            None if self.val is None else self.val.to(device),
        )

    def batches(
        self, order: Tensor, start: int, steps: int, batch: int, world: World, augment: bool, seed: int, epoch: int
    ) -> Iterator[tuple[Tensor, Tensor, int]]:
        """Steps `start` to `steps` of an epoch in `order`: (this rank's images, labels, global batch
        size). Augmentation is drawn for the global batch from a generator seeded by (seed, epoch,
        step), so that a resumed run or any number of ranks sees the same images."""
        order = order.to(self.train.images.device)
        for step in range(start, steps):
            index = order[step * batch : (step + 1) * batch]
            x = normalise(self.train.images[index], self.mean, self.std)
            if augment:
                x = crop_and_flip(x, PAD, generator(seed, epoch, step))
            y = self.train.labels[index]
            if world.size > 1:
                share = world.share(len(index))
                x, y = x[share], y[share]
            yield x, y, len(index)

    def test_batches(self, part: slice, size: int = 256, split: str = "test") -> Iterator[tuple[Tensor, Tensor]]:
        """The images of `part` of the test (or validation) split, normalised, `size` at a time."""
        source = self.val if split == "val" and self.val is not None else self.test
        for i in range(part.start, part.stop, size):
            j = min(i + size, part.stop)
            yield normalise(source.images[i:j], self.mean, self.std), source.labels[i:j]


def generator(*seeds: int) -> torch.Generator:
    """A generator seeded by a tuple of integers (a run's seed, an epoch, a step)."""
    g = torch.Generator()
    g.manual_seed(hash(seeds) & (2**63 - 1))
    return g


def default_root() -> Path:
    """Where datasets live: $DNETC_DATA, else the user's cache directory."""
    if os.environ.get("DNETC_DATA"):
        return Path(os.environ["DNETC_DATA"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dnetc" / "data"


def dataset(name: str) -> dict[str, Any]:
    """The table entry of a dataset, or a DataError that suggests the likely name."""
    if name not in DATASETS:
        import difflib

        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise DataError(f"unknown dataset `{name}`: choose one of {', '.join(DATASETS)}{hint}")
    return DATASETS[name]


def folder_root(name: str, root: str | Path | None) -> Path:
    """An image-folder dataset's folder (holding train/ and val/): --data, else under the default root."""
    return Path(root) if root is not None else default_root() / name


def class_count(name: str, root: str | Path | None = None) -> int:
    """A dataset's classes: from the table, or counted from an image-folder dataset's folders."""
    info = dataset(name)
    if info["classes"]:
        return info["classes"]
    from .images import count_classes

    return count_classes(folder_root(name, root))


def load(
    name: str,
    root: str | Path | None = None,
    shape: tuple[int, ...] | None = None,
    seed: int = 0,
    augment: bool = True,
    ten_crop: bool = False,
    workers: int | None = None,
    extra: bool = False,
    validation: int = 0,
) -> Data | Any:
    """A dataset by name, its images fitted to `shape` (channels, *sizes) when given. Image-folder
    datasets (imagenet) come as runtime.images.Folders, decoded in `workers` processes."""
    info = dataset(name)
    if info.get("kind") == "folder":
        from . import images

        workers = min(8, os.cpu_count() or 1) if workers is None else workers
        shape = shape or tuple(info["shape"])
        return images.load(name, info, folder_root(name, root), shape, seed, augment, ten_crop, workers)
    if ten_crop:
        raise DataError(f"--ten-crop is for image-folder datasets such as imagenet, not {name}")
    root = Path(root) if root is not None else default_root()
    if name == "fake":
        train, test = _fake(info, shape or tuple(info["shape"]), info["classes"], seed)
    elif name == "shapes":
        train, test = _shapes(info, shape or tuple(info["shape"]), seed)
    elif name == "digits":
        train, test = _digits(info, seed)
    elif name.startswith("cifar"):
        train, test = _cifar(info, root)
    else:
        train, test = _svhn(info, root, extra)
    for split, what in ((train, "training"), (test, "test")):
        _check(split, info, name, what)
    channels = train.images.shape[1]
    mean = torch.tensor(info["mean"], dtype=torch.float32)[:channels].expand(channels).clone()
    std = torch.tensor(info["std"], dtype=torch.float32)[:channels].expand(channels).clone()
    val = None
    if validation:  # a fixed choice, the same for every run of the dataset
        if not 0 < validation < len(train):
            raise DataError(
                f"cannot hold {validation} of the {len(train)} training images of {name} out for validation"
            )
        order = torch.randperm(len(train), generator=generator(0))
        val = Split(train.images[order[:validation]], train.labels[order[:validation]])
        train = Split(train.images[order[validation:]], train.labels[order[validation:]])
    data = Data(name, info["classes"], train, test, mean, std, val)
    return fit(data, shape) if shape is not None else data


def _check(split: Split, info: dict, name: str, what: str) -> None:
    if split.images.dtype != torch.uint8 or split.images.dim() < 3 or len(split.images) != len(split.labels):
        raise DataError(f"{name}: the {what} images are not a batch of uint8 images with one label each")
    if len(split.labels) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= info["classes"]):
        raise DataError(
            f"{name}: {what} labels run from {int(split.labels.min())} to {int(split.labels.max())}, "
            f"outside 0..{info['classes'] - 1}: the files are corrupt or not {name}'s"
        )


def fit(data: Data, shape: tuple[int, ...]) -> Data:
    """Fit images to a spec's input: repeat a single channel, resize the spatial sizes (bilinear)."""
    channels, size = shape[0], tuple(shape[1:])

    def convert(x: Tensor) -> Tensor:
        if x.shape[1] != channels:
            if x.shape[1] != 1:
                raise DataError(f"{data.name} has {x.shape[1]} channels; the network takes {channels}")
            x = x.expand(-1, channels, *x.shape[2:])
        if tuple(x.shape[2:]) != size:
            if len(size) != x.dim() - 2:
                raise DataError(f"{data.name} images are {x.dim() - 2}D; the network takes {len(size)}D input")
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
            x = F.interpolate(x.float(), size=size, mode=mode, align_corners=False).round().clamp(0, 255)
            x = x.to(torch.uint8)
        return x.contiguous()

    mean, std = data.mean, data.std
    if len(mean) != channels:
        mean, std = mean.expand(channels).clone(), std.expand(channels).clone()
    return Data(
        data.name,
        data.classes,
        Split(convert(data.train.images), data.train.labels),
        Split(convert(data.test.images), data.test.labels),
        mean,
        std,
        None if data.val is None else Split(convert(data.val.images), data.val.labels),
    )


# ---- the datasets --------------------------------------------------------------------------


def _fake(info: dict, shape: tuple[int, ...], classes: int, seed: int) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        return Split(images, torch.randint(0, classes, (n,), generator=g))

    return split(info["train_size"]), split(info["test_size"])


def _shapes(info: dict, shape: tuple[int, ...], seed: int) -> tuple[Split, Split]:
    """Circles, squares and triangles (classes 1-3) on a noisy background (0), with their masks."""
    if len(shape) != 3:
        raise DataError(f"shapes are drawn in 2D; the network takes {len(shape) - 1}D input")
    channels, height, width = shape
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    side = min(height, width)

    def draw(n: int) -> Split:
        images = torch.randint(0, 64, (n, channels, height, width), generator=g, dtype=torch.uint8)
        masks = torch.zeros(n, height, width, dtype=torch.long)
        for i in range(n):
            for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
                kind = int(torch.randint(1, 4, (1,), generator=g))
                r = float(torch.empty(1).uniform_(0.1, 0.25, generator=g)) * side
                cx = float(torch.empty(1).uniform_(r, width - r, generator=g))
                cy = float(torch.empty(1).uniform_(r, height - r, generator=g))
                if kind == 1:
                    inside = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
                elif kind == 2:
                    inside = ((x - cx).abs() <= r * 0.8) & ((y - cy).abs() <= r * 0.8)
                else:  # pointing up: as wide as it is tall
                    inside = (y >= cy - r) & (y <= cy + r) & ((x - cx).abs() <= (y - (cy - r)) / 2)
                colour = torch.randint(96, 256, (channels, 1), generator=g, dtype=torch.uint8)
                images[i][:, inside] = colour
                masks[i][inside] = kind
        return Split(images, masks)

    return draw(info["train_size"]), draw(info["test_size"])


def _digits(info: dict, seed: int) -> tuple[Split, Split]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    # a fixed stratified split: every class keeps the same share in the test set
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(info["classes"]):
        members = (labels == c).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=g)[: round(len(members) * info["test_fraction"])]]
        test[chosen] = True
    return Split(images[~test], labels[~test]), Split(images[test], labels[test])


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes and numpy arrays only: a dataset file never runs code."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # a truncated or foreign file: say which and why
        raise DataError(f"cannot read {where}: {e}") from None


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _missing(info: dict, name: str, root: Path, files: list[str]) -> DataError:
    return DataError(
        f"{name} is not in {root}: it needs {' or '.join(files)}.\n"
        f"  add --download to fetch it (md5 checked), or get it from {info['url']} and put it in {root},\n"
        f"  or point --data or $DNETC_DATA at the folder that holds it"
    )


def _cifar(info: dict, root: Path) -> tuple[Split, Split]:
    name = info["name"]
    folder, archive = root / info["folder"], root / info["archive"]
    if folder.is_dir():

        def read(member: str) -> bytes:
            path = folder / member
            if not path.is_file():
                raise DataError(f"{name}: {path} is missing; the folder is incomplete (extract {archive.name} again)")
            return path.read_bytes()
    elif archive.is_file():
        actual = md5sum(archive)
        if actual != info["md5"]:
            raise DataError(
                f"{archive} is corrupt or incomplete: its md5 is {actual}, not {info['md5']}; "
                "download it again (nothing was changed)"
            )
        wanted = {f"{info['folder']}/{m}": m for m in info["train"] + info["test"]}
        contents: dict[str, bytes] = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for m in tar:
                    if m.isfile() and m.name in wanted:
                        f = tar.extractfile(m)
                        assert f is not None
                        contents[wanted[m.name]] = f.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"cannot read {archive} (corrupt or truncated; download it again): {e}") from None

        def read(member: str) -> bytes:
            if member not in contents:
                raise DataError(f"{archive} has no {info['folder']}/{member}")
            return contents[member]
    else:
        raise _missing(info, name, root, [info["archive"], info["folder"] + "/"])

    def split(members: list[str]) -> Split:
        images, labels = [], []
        for member in members:
            batch = _unpickle(read(member), f"{name} {member}")
            try:
                data, target = batch[b"data"], batch[info["labels"].encode()]
            except (KeyError, TypeError):
                raise DataError(f"{name} {member} is not a CIFAR batch (no data or labels)") from None
            if getattr(data, "ndim", 0) != 2 or data.shape[1] != 3072 or len(data) != len(target):
                raise DataError(f"{name} {member}: images of shape {getattr(data, 'shape', '?')}, not N x 3072")
            images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)).to(torch.uint8))
            labels.append(torch.as_tensor(list(target), dtype=torch.long))
        return Split(torch.cat(images), torch.cat(labels))

    return split(info["train"]), split(info["test"])


def _svhn(info: dict, root: Path, extra: bool = False) -> tuple[Split, Split]:
    import scipy.io

    def split(which: str) -> Split:
        path = root / info["files"][which]
        if not path.is_file():
            raise _missing(info, "SVHN", root, [info["files"][which]])
        try:
            mat = scipy.io.loadmat(path)
            x, y = mat["X"], mat["y"]
        except Exception as e:
            raise DataError(f"cannot read {path}: {e}") from None
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != "uint8":
            raise DataError(f"{path}: images of shape {x.shape} and type {x.dtype}, not 32 x 32 x 3 x N uint8")
        y = y.reshape(-1)
        if len(y) != x.shape[3] or (len(y) and (y.min() < 1 or y.max() > 10)):
            raise DataError(
                f"{path}: {len(y)} labels from {y.min() if len(y) else '-'} to {y.max() if len(y) else '-'} for "
                f"{x.shape[3]} images; SVHN has one label from 1 to 10 per image: the file is corrupt or not SVHN's"
            )
        labels = torch.from_numpy(y.astype("int64")) % 10  # label 10 is the digit 0
        return Split(torch.from_numpy(x).permute(3, 2, 0, 1).contiguous().to(torch.uint8), labels)

    train = split("train")
    if extra:  # the paper's SVHN: train + extra
        more = split("extra")
        train = Split(torch.cat([train.images, more.images]), torch.cat([train.labels, more.labels]))
    return train, split("test")


# ---- batched augmentation on the device ----------------------------------------------------


def normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 images -> float, per channel (x - mean) / std on the 0-255 scale."""
    view = (1, -1) + (1,) * (images.dim() - 2)
    return (images.float() - mean.view(view)) / std.view(view)


def crop_and_flip(x: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad every spatial side by `pad`, crop back at a random offset per sample, flip the last
    spatial dimension of half the samples: the CIFAR augmentation, for any number of dimensions."""
    n, spatial = x.shape[0], x.shape[2:]
    if pad > 0:
        x = F.pad(x, (pad, pad) * len(spatial))
        for d, size in enumerate(spatial):
            dim = 2 + d
            offset = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(x.device)
            index = offset.view(n, *([1] * (x.dim() - 1))) + torch.arange(size, device=x.device).view(
                *([1] * dim), size, *([1] * (x.dim() - dim - 1))
            )
            x = torch.gather(x, dim, index.expand(*x.shape[:dim], size, *x.shape[dim + 1 :]))
    flip = torch.rand(n, generator=generator, device="cpu").lt(0.5).to(x.device)
    return torch.where(flip.view(n, *([1] * (x.dim() - 1))), x.flip(-1), x)
