"""Folders of image files (ImageNet's train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, or any class
folders): decoded and augmented in DataLoader worker processes with the standard ImageNet
transforms, as the paper's Lua code did (random-sized crop, colour jitter, PCA lighting, flip;
resize and centre crop, or ten crops, for testing).

Each sample's random transform is seeded by (seed, epoch, step, index), so that a resumed run, or a
run with another number of workers or ranks, draws the same crops. Needs torchvision
(`pip install 'dnetc[imagenet]'`).

A CPU core decodes and transforms about 230 ImageNet-sized JPEGs a second (bench/decode.py), so a
16-core machine feeds about 3,500 images/s, fewer than a GPU trains. With `--decode device` (the
default on CUDA) the workers only read the files and draw each sample's transform, from the same
seeds and in the same order as the transforms above draw them; the batch is decoded on the device
(nvJPEG through torchvision.io.decode_jpeg) and cropped, jittered, lit, flipped and normalised
there with the same arithmetic (uint8 rounding included), so the two paths give the same images up
to the decoders' and the resize kernels' rounding. Test images are decoded in the workers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .data import DataError, Request, folder_root, loader
from .datasets import DEFAULT_WORKERS, Dataset

if TYPE_CHECKING:
    from .distributed import World

EXTENSIONS = (".jpg", ".jpeg", ".png")


def _torchvision() -> Any:
    try:
        import torchvision
        import torchvision.transforms.v2
    except ImportError:
        raise DataError(
            "folder datasets (imagenet) decode images with torchvision: pip install 'dnetc[imagenet]'"
        ) from None
    return torchvision


def scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """The class folders (sorted, or as given) and every (image file, label) under them."""
    if not folder.is_dir():
        raise DataError(f"no folder {folder}: expected one sub-folder of images per class")
    names = classes or sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not names:
        raise DataError(f"{folder} has no class folders: expected {folder}/<class>/<image>.JPEG")
    samples = []
    for label, name in enumerate(names):
        path = folder / name
        if not path.is_dir():
            continue  # a class with no test images
        for root, _, files in sorted(os.walk(path)):
            samples += [(os.path.join(root, f), label) for f in sorted(files) if f.lower().endswith(EXTENSIONS)]
    if not samples:
        raise DataError(f"{folder} holds no images ({', '.join(EXTENSIONS)})")
    return names, samples


class Lighting(torch.nn.Module):
    """AlexNet's PCA lighting noise: add eigvec @ (alpha * eigval), alpha ~ N(0, std), on 0-1 RGB."""

    def __init__(self, std: float, eigval: list[float], eigvec: list[list[float]]) -> None:
        super().__init__()
        self.std = std
        self.register_buffer("eigval", torch.tensor(eigval))
        self.register_buffer("eigvec", torch.tensor(eigvec))

    def forward(self, img: Tensor) -> Tensor:
        if self.std == 0:
            return img
        alpha = torch.randn(3) * self.std
        return img + (self.eigvec @ (alpha * self.eigval)).view(3, 1, 1)


class Stack(torch.nn.Module):
    """Ten crops as one (10, C, H, W) tensor (a module, not a lambda: workers may be spawned)."""

    def forward(self, crops: tuple[Tensor, ...]) -> Tensor:
        return torch.stack(crops)


def transforms(info: dict, size: tuple[int, int], train: bool, ten_crop: bool) -> Any:
    """The paper's ImageNet transforms for crops of `size`, as torchvision v2 transforms."""
    v2 = _torchvision().transforms.v2
    mean = [m / 255 for m in info["mean"]]
    std = [s / 255 for s in info["std"]]
    if train:
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=tuple(info["crop_scale"]), ratio=tuple(info["crop_ratio"])),
                v2.ColorJitter(info["jitter"], info["jitter"], info["jitter"]),
                v2.ToDtype(torch.float32, scale=True),
                Lighting(info["lighting"], info["eigval"], info["eigvec"]),
                v2.RandomHorizontalFlip(),
                v2.Normalize(mean, std),
            ]
        )
    resize = round(min(size) * info["resize"] / info["shape"][1])  # 256 for 224 crops
    crop = [v2.TenCrop(size), Stack()] if ten_crop else [v2.CenterCrop(size)]
    return v2.Compose([v2.Resize(resize), *crop, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class Files(torch.utils.data.Dataset):
    """Image files by (index, epoch, step) keys: each sample's transform seeded by its key."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any, seed: int) -> None:
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Tensor, int]:
        index, epoch, step = key
        torch.manual_seed(hash((self.seed, epoch, step, index)) & (2**63 - 1))
        path, label = self.samples[index]
        from PIL import Image  # torchvision's own dependency

        try:
            with Image.open(path) as f:
                img = torch.from_numpy(np.asarray(f.convert("RGB")).copy()).permute(2, 0, 1)
        except Exception as e:
            raise DataError(f"cannot decode {path}: {e}") from None
        return self.transform(img), label


# A sample's transform on the device, as drawn in a worker: the crop box, ColorJitter's order of its
# four operations and its three factors, PCA lighting's alpha, and the flip.
PARAMS = ("top", "left", "height", "width", "order0", "order1", "order2", "order3")
PARAMS += ("brightness", "contrast", "saturation", "alpha0", "alpha1", "alpha2", "flip")


class Raw(torch.utils.data.Dataset):
    """Image files by (index, epoch, step) keys as their bytes and their transform's parameters,
    drawn exactly as `transforms(info, size, True, False)` draws them for the same key."""

    def __init__(self, samples: list[tuple[str, int]], info: dict, size: tuple[int, int], seed: int) -> None:
        v2 = _torchvision().transforms.v2
        self.samples, self.seed, self.lighting = samples, seed, info["lighting"]
        self.crop = v2.RandomResizedCrop(size, scale=tuple(info["crop_scale"]), ratio=tuple(info["crop_ratio"]))
        self.jitter = v2.ColorJitter(info["jitter"], info["jitter"], info["jitter"])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Tensor, Tensor, int]:
        index, epoch, step = key
        torch.manual_seed(hash((self.seed, epoch, step, index)) & (2**63 - 1))
        path, label = self.samples[index]
        from PIL import Image

        try:
            with Image.open(path) as header:  # the size, from the header: nothing is decoded here
                box = self.crop.make_params([header])
            data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        except Exception as e:
            raise DataError(f"cannot read {path}: {e}") from None
        jitter = self.jitter.make_params([])
        alpha = torch.randn(3) * self.lighting if self.lighting else torch.zeros(3)  # as Lighting draws it
        flip = float(torch.rand(1) < 0.5)  # as RandomHorizontalFlip draws it
        factors = [jitter["brightness_factor"], jitter["contrast_factor"], jitter["saturation_factor"]]
        params = [box["top"], box["left"], box["height"], box["width"], *jitter["fn_idx"].tolist(), *factors]
        return data, torch.tensor([*params, *alpha.tolist(), flip], dtype=torch.float64), label


def _collate_raw(batch: list[tuple[Tensor, Tensor, int]]) -> tuple[list[Tensor], Tensor, Tensor]:
    data, params, labels = zip(*batch, strict=True)
    return list(data), torch.stack(params), torch.tensor(labels)


def decode(data: list[Tensor], device: torch.device) -> list[Tensor]:
    """Files' bytes as RGB uint8 images on `device`: JPEGs batched through decode_jpeg (nvJPEG on
    CUDA), other formats and what nvJPEG refuses (CMYK) on the CPU. On CUDA the decoder runs under
    a stream of its own: torchvision's decoder writes its outputs from an internal stream without
    waiting on the caller's (pytorch/vision#9606), so their memory must come from a stream that
    nothing else uses, and the training stream waits for them and keeps them alive."""
    io = _torchvision().io
    rgb = io.ImageReadMode.RGB
    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, which decodes video, not JPEG batches
        warnings.simplefilter("ignore", DeprecationWarning)
        if device.type != "cuda":
            return _decode(io, rgb, data, device)
        current = torch.cuda.current_stream(device)
        own = _STREAMS.setdefault(device.index or 0, torch.cuda.Stream(device))
        with torch.cuda.stream(own):
            images = _decode(io, rgb, data, device)
        current.wait_stream(own)
        for image in images:
            image.record_stream(current)
        return images


def _decode(io: Any, rgb: Any, data: list[Tensor], device: torch.device) -> list[Tensor]:
    images: list[Tensor | None] = [None] * len(data)
    jpegs = [i for i, d in enumerate(data) if len(d) > 2 and d[0] == 0xFF and d[1] == 0xD8]
    if jpegs:
        try:
            decoded = io.decode_jpeg([data[i] for i in jpegs], mode=rgb, device=device)
        except RuntimeError:  # one that this decoder cannot read: each on the CPU's
            decoded = [io.decode_image(data[i], mode=rgb).to(device) for i in jpegs]
        for i, image in zip(jpegs, decoded, strict=True):
            images[i] = image
    for i, image in enumerate(images):
        if image is None:
            images[i] = io.decode_image(data[i], mode=rgb).to(device)
    return images  # type: ignore[return-value]


def _blend(image: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """torchvision's blend of uint8 images, a ratio per sample: computed in float, truncated back."""
    return (image * ratio + other * (1 - ratio)).clamp_(0, 255).floor_()


def _grey(image: Tensor) -> Tensor:
    """torchvision's greyscale of uint8 images (floored), (N, 1, H, W)."""
    r, g, b = image.unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).floor_().unsqueeze(1)


def on_device(data: list[Tensor], params: Tensor, info: dict, size: tuple[int, int], device: torch.device) -> Tensor:
    """A training batch decoded and transformed on `device`: random-sized crop, colour jitter in each
    sample's order, PCA lighting, flip, normalisation, as `transforms` does it in a worker."""
    F = _torchvision().transforms.v2.functional
    constants = _constants(device, info)
    pinned = device.type == "cuda"
    p = (params.pin_memory() if pinned else params).to(device, non_blocking=pinned)
    column = {name: p[:, i] for i, name in enumerate(PARAMS)}
    crops = []
    for image, box in zip(decode(data, device), params[:, :4].long().tolist(), strict=True):
        crops.append(F.resized_crop(image, *box, size=list(size), antialias=True))
    x = torch.stack(crops).float()  # uint8 values, as the worker's jitter sees them
    view = (-1, 1, 1, 1)
    brightness, contrast, saturation = (column[n].float().view(view) for n in ("brightness", "contrast", "saturation"))
    for position in range(4):  # ColorJitter's four operations in each sample's own order (hue is not used)
        order = column[f"order{position}"].view(view)
        x = torch.where(order == 0, (x * brightness).clamp_(0, 255).floor_(), x)
        mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = torch.where(order == 1, _blend(x, mean, contrast), x)
        x = torch.where(order == 2, _blend(x, _grey(x), saturation), x)
    x = x / 255
    alpha = torch.stack([column["alpha0"], column["alpha1"], column["alpha2"]], 1).float()
    lit = (alpha * constants["eigval"]) @ constants["eigvec"].T  # eigvec @ (alpha * eigval), per sample
    x = x + lit.view(-1, 3, 1, 1)
    x = torch.where(column["flip"].view(view) > 0, x.flip(-1), x)
    return (x - constants["mean"]) / constants["std"]


_CONSTANTS: dict[tuple[str, int | None, int], dict[str, Tensor]] = {}
_STREAMS: dict[int, torch.cuda.Stream] = {}  # the decoder's, per GPU


def _constants(device: torch.device, info: dict) -> dict[str, Tensor]:
    """The lighting's eigen-decomposition and the normalisation on `device`, made once: a tensor
    made from a list at each batch would wait for the GPU."""
    key = (device.type, device.index, id(info))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = {
            "eigval": torch.tensor(info["eigval"], device=device),
            "eigvec": torch.tensor(info["eigvec"], device=device),
            "mean": torch.tensor([m / 255 for m in info["mean"]], device=device).view(1, 3, 1, 1),
            "std": torch.tensor([s / 255 for s in info["std"]], device=device).view(1, 3, 1, 1),
        }
    return _CONSTANTS[key]


class Steps:
    """An epoch's batch sampler from step `start` on: each step's (index, epoch, step) keys of this
    rank's share, made as the loader asks for them rather than all at once (5,000 steps of 256 on
    ImageNet)."""

    def __init__(self, order: Tensor, start: int, steps: int, batch: int, world: World, epoch: int) -> None:
        self.order, self.start, self.steps, self.batch, self.world, self.epoch = (
            order,
            start,
            steps,
            batch,
            world,
            epoch,
        )

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.steps):
            index = self.order[step * self.batch : (step + 1) * self.batch].tolist()
            yield [(i, self.epoch, step) for i in index[self.world.share(len(index))]]


@dataclass
class Folders:
    """A dataset of image folders, with the interface the trainer asks of runtime.data.Data."""

    name: str
    classes: int
    train: Files
    test: Files
    device: torch.device
    workers: int
    crops: int = 1
    raw: Raw | None = None  # with --decode device: the training files, decoded on the device
    info: dict | None = None
    size: tuple[int, int] = (224, 224)

    def to(self, device: torch.device | str) -> Folders:
        self.device = torch.device(device)
        return self

    def _loader(self, dataset: Any, keys: Iterable[list[tuple[int, int, int]]], collate: Any = None) -> Iterator[Any]:
        return iter(
            torch.utils.data.DataLoader(
                dataset,
                batch_sampler=keys,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda" and collate is None,
                prefetch_factor=4 if self.workers else None,
                collate_fn=collate,
            )
        )

    def batches(
        self, order: Tensor, start: int, steps: int, batch: int, world: World, augment: bool, seed: int, epoch: int
    ) -> Iterator[tuple[dict[str, Tensor], int]]:
        """As runtime.data.Data.batches, the images decoded: the files' transforms are seeded by
        (seed, epoch, step, index) in the workers (`augment` and `seed` were fixed at loading).
        With `raw`, the workers send the files' bytes and the transforms' draws, and the batch is
        decoded and transformed on the device here."""
        keys = Steps(order, start, steps, batch, world, epoch)
        if self.raw is None:
            for step, (x, y) in enumerate(self._loader(self.train, keys), start):
                yield {"x": x, "y": y}, min(batch, len(order) - step * batch)
            return
        assert self.info is not None
        for step, (data, params, y) in enumerate(self._loader(self.raw, keys, _collate_raw), start):
            x = on_device(data, params, self.info, self.size, self.device)
            yield {"x": x, "y": y}, min(batch, len(order) - step * batch)

    def materialise(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The batch as the workers made it."""
        return inputs["x"], inputs["y"]

    def test_batches(self, part: slice, size: int = 64, split: str = "test") -> Iterator[tuple[Tensor, Tensor]]:
        """The val/ folder's images of `part` (image folders hold no separate validation split)."""
        keys = [[(i, 0, 0) for i in range(j, min(j + size, part.stop))] for j in range(part.start, part.stop, size)]
        yield from self._loader(self.test, keys)


@loader("folder")
def load(ds: Dataset, request: Request) -> Folders:
    """`root`/train and `root`/val as a dataset for crops of the spec's input size; without
    augmentation the training images are resized and centre-cropped as the test images are."""
    name, info, root, shape = ds.key, ds.info, folder_root(ds.key, request.root), request.shape or ds.shape
    seed, augment, ten_crop = request.seed, request.augment, request.ten_crop
    workers = DEFAULT_WORKERS if request.workers is None else request.workers
    if len(shape) != 3 or shape[0] != 3:
        raise DataError(f"{name} images are RGB 2D: the spec's input {'x'.join(map(str, shape))} is not 3 x H x W")
    names, train = scan(root / "train")
    _, test = scan(root / "val", names)
    if ds.classes and len(names) != ds.classes:
        raise DataError(f"{root / 'train'} has {len(names)} class folders, not {name}'s {ds.classes}")
    size = (shape[1], shape[2])
    return Folders(
        name,
        len(names),
        Files(train, transforms(info, size, augment, False), seed),
        Files(test, transforms(info, size, False, ten_crop), seed),
        torch.device("cpu"),
        workers,
        crops=10 if ten_crop else 1,
        raw=Raw(train, info, size, seed) if request.decode == "device" and augment else None,
        info=info,
        size=size,
    )


def count_classes(root: Path) -> int:
    """The number of class folders under `root`/train (0 when there is no such folder)."""
    folder = root / "train"
    return sum(e.is_dir() for e in os.scandir(folder)) if folder.is_dir() else 0
