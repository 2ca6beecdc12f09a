"""Folders of image files (ImageNet's train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, or any class
folders): decoded and augmented in DataLoader worker processes with the standard ImageNet
transforms, as the paper's Lua code did (random-sized crop, colour jitter, PCA lighting, flip;
resize and centre crop, or ten crops, for testing).

Each sample's random transform is seeded by (seed, epoch, step, index), so that a resumed run, or a
run with another number of workers or ranks, draws the same crops. Needs torchvision
(`pip install 'dnetc[imagenet]'`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .data import DataError

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

    def to(self, device: torch.device | str) -> Folders:
        self.device = torch.device(device)
        return self

    def _loader(self, dataset: Files, keys: Iterable[list[tuple[int, int, int]]]) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(
            torch.utils.data.DataLoader(
                dataset,
                batch_sampler=keys,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=4 if self.workers else None,
            )
        )

    def batches(
        self, order: Tensor, start: int, steps: int, batch: int, world: World, augment: bool, seed: int, epoch: int
    ) -> Iterator[tuple[Tensor, Tensor, int]]:
        """As runtime.data.Data.batches; the files' transforms are seeded by (seed, epoch, step, index)
        in the workers (`augment` and `seed` were fixed when the dataset was loaded)."""
        keys = Steps(order, start, steps, batch, world, epoch)
        for step, (x, y) in enumerate(self._loader(self.train, keys), start):
            yield x, y, min(batch, len(order) - step * batch)

    def test_batches(self, part: slice, size: int = 64, split: str = "test") -> Iterator[tuple[Tensor, Tensor]]:
        """The val/ folder's images of `part` (image folders hold no separate validation split)."""
        keys = [[(i, 0, 0) for i in range(j, min(j + size, part.stop))] for j in range(part.start, part.stop, size)]
        yield from self._loader(self.test, keys)


def load(
    name: str, info: dict, root: Path, shape: tuple[int, ...], seed: int, augment: bool, ten_crop: bool, workers: int
) -> Folders:
    """`root`/train and `root`/val as a dataset for crops of the spec's input size; without
    augmentation the training images are resized and centre-cropped as the test images are."""
    if len(shape) != 3 or shape[0] != 3:
        raise DataError(f"{name} images are RGB 2D: the spec's input {'x'.join(map(str, shape))} is not 3 x H x W")
    names, train = scan(root / "train")
    _, test = scan(root / "val", names)
    if info["classes"] and len(names) != info["classes"]:
        raise DataError(f"{root / 'train'} has {len(names)} class folders, not {name}'s {info['classes']}")
    size = (shape[1], shape[2])
    return Folders(
        name,
        len(names),
        Files(train, transforms(info, size, augment, False), seed),
        Files(test, transforms(info, size, False, ten_crop), seed),
        torch.device("cpu"),
        workers,
        crops=10 if ten_crop else 1,
    )


def count_classes(root: Path) -> int:
    """The number of class folders under `root`/train (0 when there is no such folder)."""
    folder = root / "train"
    return sum(e.is_dir() for e in os.scandir(folder)) if folder.is_dir() else 0
