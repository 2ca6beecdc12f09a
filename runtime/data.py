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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .datasets import DataError, Dataset, dataset

if TYPE_CHECKING:
    from .distributed import World

__all__ = ["LOADERS", "Data", "DataError", "Request", "Split", "dataset", "load", "loader"]

PAD = 4  # CIFAR augmentation: zero-pad 4, random crop back


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
    """A dataset held whole in tensors on the training device. A training batch is a few small
    tensors (the samples' indices and their augmentation's draws); `materialise` turns them into
    images on the device, inside the training step (and so inside its CUDA graph). runtime.images'
    folder datasets answer the same two calls with images decoded in worker processes."""

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
    ) -> Iterator[tuple[dict[str, Tensor], int]]:
        """Steps `start` to `steps` of an epoch in `order`: this rank's share of each global batch
        (indices, and crop offsets and flips when augmenting) and the global batch's size.
        Augmentation is drawn for the global batch from a generator seeded by (seed, epoch, step),
        so that a resumed run or any number of ranks sees the same images."""
        order = order.to(self.train.images.device)
        for step in range(start, steps):
            index = order[step * batch : (step + 1) * batch]
            share = world.share(len(index))
            inputs = {"index": index[share]}
            if augment:
                offsets, flip = draw_crop_and_flip(
                    len(index), self.train.images.dim() - 2, PAD, generator(seed, epoch, step)
                )
                inputs |= {"offsets": offsets[:, share], "flip": flip[share]}
            yield inputs, len(index)

    def materialise(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """A batch's images (normalised, augmented) and labels, from `batches`' tensors, on the device."""
        index = inputs["index"]
        x = normalise(self.train.images[index], self.mean, self.std)
        if "offsets" in inputs:
            x = apply_crop_and_flip(x, PAD, inputs["offsets"], inputs["flip"])
        return x, self.train.labels[index]

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


def folder_root(name: str, root: str | Path | None) -> Path:
    """An image-folder dataset's folder (holding train/ and val/): --data, else under the default root."""
    return Path(root) if root is not None else default_root() / name


def class_count(name: str, root: str | Path | None = None) -> int:
    """A dataset's classes: from its record, or counted from an image-folder dataset's folders."""
    ds = dataset(name)
    if ds.classes:
        return ds.classes
    from .images import count_classes

    return count_classes(folder_root(name, root))


@dataclass(frozen=True)
class Request:
    """What the trainer asks of a loader: the network's input shape, the run's seed and data flags."""

    root: Path | None = None  # --data
    shape: tuple[int, ...] | None = None  # channels, *sizes of the network's input
    seed: int = 0
    augment: bool = True
    ten_crop: bool = False
    workers: int | None = None
    extra: bool = False  # SVHN's extra images
    validation: int = 0  # training images held out
    decode: str = "workers"  # image files: decoded in worker processes, or on the training device


Loader = Callable[["Dataset", Request], Any]
LOADERS: dict[str, Loader] = {}


def loader(name: str) -> Callable[[Loader], Loader]:
    """Register a function that reads the datasets whose record says `loader = name`."""

    def register(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn

    return register


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
    decode: str = "workers",
) -> Data | Any:
    """A dataset by name, its images fitted to `shape` (channels, *sizes) when given. Image-folder
    datasets (imagenet) come as runtime.images.Folders, decoded in `workers` processes (or, with
    `decode="device"`, their training images on the training device)."""
    ds = dataset(name)
    root_path = None if root is None else Path(root)
    request = Request(root_path, shape, seed, augment, ten_crop, workers, extra, validation, decode)
    return LOADERS[ds.loader](ds, request)


def tensors(ds: Dataset, train: Split, test: Split, request: Request) -> Data:
    """A dataset read into tensors, checked, its validation split held out and fitted to the network."""
    if request.ten_crop:
        raise DataError(f"--ten-crop is for image-folder datasets such as imagenet, not {ds.key}")
    for split, what in ((train, "training"), (test, "test")):
        _check(split, ds, what)
    channels = train.images.shape[1]
    mean = torch.tensor(ds.info["mean"], dtype=torch.float32)[:channels].expand(channels).clone()
    std = torch.tensor(ds.info["std"], dtype=torch.float32)[:channels].expand(channels).clone()
    val = None
    validation = request.validation
    if validation:  # a fixed choice, the same for every run of the dataset
        if not 0 < validation < len(train):
            raise DataError(
                f"cannot hold {validation} of the {len(train)} training images of {ds.key} out for validation"
            )
        order = torch.randperm(len(train), generator=generator(0))
        val = Split(train.images[order[:validation]], train.labels[order[:validation]])
        train = Split(train.images[order[validation:]], train.labels[order[validation:]])
    data = Data(ds.key, ds.classes, train, test, mean, std, val)
    return fit(data, request.shape) if request.shape is not None else data


def _check(split: Split, ds: Dataset, what: str) -> None:
    name = ds.key
    if split.images.dtype != torch.uint8 or split.images.dim() < 3 or len(split.images) != len(split.labels):
        raise DataError(f"{name}: the {what} images are not a batch of uint8 images with one label each")
    if len(split.labels) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= ds.classes):
        raise DataError(
            f"{name}: {what} labels run from {int(split.labels.min())} to {int(split.labels.max())}, "
            f"outside 0..{ds.classes - 1}: the files are corrupt or not {name}'s"
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


@loader("fake")
def _fake(ds: Dataset, request: Request) -> Data:
    """Random images and labels, at the network's input shape (or the record's)."""
    g = torch.Generator().manual_seed(request.seed)
    shape = request.shape or ds.shape

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        return Split(images, torch.randint(0, ds.classes, (n,), generator=g))

    return tensors(ds, split(ds.info["train_size"]), split(ds.info["test_size"]), request)


@loader("shapes")
def _shapes(ds: Dataset, request: Request) -> Data:
    """Circles, squares and triangles (classes 1-3) on a noisy background (0), with their masks."""
    info, seed, shape = ds.info, request.seed, request.shape or ds.shape
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

    return tensors(ds, draw(info["train_size"]), draw(info["test_size"]), request)


@loader("digits")
def _digits(ds: Dataset, request: Request) -> Data:
    from sklearn.datasets import load_digits

    info, seed = ds.info, request.seed

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
    return tensors(ds, Split(images[~test], labels[~test]), Split(images[test], labels[test]), request)


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


@loader("cifar")
def _cifar(ds: Dataset, request: Request) -> Data:
    info, name, root = ds.info, ds.name, request.root or default_root()
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

    return tensors(ds, split(info["train"]), split(info["test"]), request)


@loader("svhn")
def _svhn(ds: Dataset, request: Request) -> Data:
    import scipy.io

    info, root = ds.info, request.root or default_root()

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
    if request.extra:  # the paper's SVHN: train + extra
        more = split("extra")
        train = Split(torch.cat([train.images, more.images]), torch.cat([train.labels, more.labels]))
    return tensors(ds, train, split("test"), request)


# ---- batched augmentation on the device ----------------------------------------------------


def normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 images -> float, per channel (x - mean) / std on the 0-255 scale."""
    view = (1, -1) + (1,) * (images.dim() - 2)
    return (images.float() - mean.view(view)) / std.view(view)


def draw_crop_and_flip(n: int, dims: int, pad: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The CIFAR augmentation's random draws for n samples: a crop offset per spatial dimension
    (dims x n, in 0..2 pad) and whether to flip (n), drawn on the CPU in that order."""
    if pad > 0:
        offsets = torch.stack([torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(dims)])
    else:
        offsets = torch.zeros(dims, n, dtype=torch.long)
    return offsets, torch.rand(n, generator=generator).lt(0.5)


def apply_crop_and_flip(x: Tensor, pad: int, offsets: Tensor, flip: Tensor) -> Tensor:
    """Zero-pad every spatial side by `pad`, crop back at each sample's offsets, flip the last spatial
    dimension where `flip` says: tensor ops only, for any number of dimensions."""
    n, spatial = x.shape[0], x.shape[2:]
    if pad > 0:
        x = F.pad(x, (pad, pad) * len(spatial))
        for d, size in enumerate(spatial):
            dim = 2 + d
            index = offsets[d].view(n, *([1] * (x.dim() - 1))) + torch.arange(size, device=x.device).view(
                *([1] * dim), size, *([1] * (x.dim() - dim - 1))
            )
            x = torch.gather(x, dim, index.expand(*x.shape[:dim], size, *x.shape[dim + 1 :]))
    return torch.where(flip.view(n, *([1] * (x.dim() - 1))), x.flip(-1), x)


def crop_and_flip(x: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Pad, crop at a random offset per sample and flip half the samples: the CIFAR augmentation."""
    offsets, flip = draw_crop_and_flip(x.shape[0], x.dim() - 2, pad, generator)
    return apply_crop_and_flip(x, pad, offsets.to(x.device), flip.to(x.device))


from . import images as _images  # noqa: E402, F401  (registers the image-folder loader)
