"""The datasets as records: one `Dataset` per entry of datasets.toml, read once, free of torch.

A record says everything the trainer asks of a dataset: which loader reads it (runtime.data's
registry), its task (runtime.tasks), its class count and image shape, whether it takes the
network's input size, the paper's name for it, and its training recipe. The loader's own constants
(file names, md5 sums, normalisation) stay in `info`, the entry as written. Adding a dataset is an
entry in datasets.toml and, for a new kind of files, one function registered with
`runtime.data.loader`.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

# DataLoader processes that decode image folders, unless --workers says otherwise
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


class DataError(Exception):
    """A dataset that is missing, corrupt or not what it should be: the message says what to do."""


def _read_table() -> dict[str, dict[str, Any]]:
    table = tomllib.loads(resources.files(__package__).joinpath("datasets.toml").read_text(encoding="utf-8"))
    for entry in table.values():  # `like = "imagenet"`: that entry's constants, then this one's
        if "like" in entry:
            entry |= {**table[entry["like"]], **entry}
    return table


# The entries as written: the loaders' constants (file names, md5 sums, normalisation, sizes).
TABLE: dict[str, dict[str, Any]] = _read_table()


@dataclass(frozen=True)
class Dataset:
    """One dataset: what the trainer, the binding of a spec and the report need to know of it."""

    key: str  # the name on the command line: cifar10, digits, imagenet, ...
    loader: str  # the function that reads it (runtime.data.LOADERS)
    task: str  # classification or segmentation (runtime.tasks.TASKS)
    classes: int  # 0: counted from the files (image folders)
    shape: tuple[int, ...]  # channels, *sizes of its images
    adapts: bool  # its images are fitted to the network's input size (else they must match it)
    name: str  # the paper's name: C10, SVHN, ImageNet
    augmented_name: str  # the paper's name with augmentation: C10+ (the same for most)
    recipe: Mapping[str, Any]  # the training defaults that flags override
    info: dict[str, Any]  # the entry as written, for its loader

    def title(self, augment: bool) -> str:
        """C10 or C10+, as the paper's tables name a dataset and its augmentation."""
        return self.augmented_name if augment else self.name


def record(key: str, entry: dict[str, Any]) -> Dataset:
    """The record of an entry as datasets.toml writes it."""
    return Dataset(
        key=key,
        loader=entry["loader"],
        task=entry.get("task", "classification"),
        classes=entry["classes"],
        shape=tuple(entry["shape"]),
        adapts=entry.get("adapts", False),
        name=entry["name"],
        augmented_name=entry.get("augmented_name", entry["name"]),
        recipe=entry["recipe"],
        info=entry,
    )


DATASETS: dict[str, Dataset] = {key: record(key, entry) for key, entry in TABLE.items()}


def dataset(name: str) -> Dataset:
    """The record of a dataset, or a DataError that suggests the likely name."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise DataError(f"unknown dataset `{name}`: choose one of {', '.join(DATASETS)}{hint}")
    return DATASETS[name]
