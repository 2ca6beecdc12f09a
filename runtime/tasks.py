"""What a network is trained to do, each task one record: the output it needs, its loss, what
counts as right, its test metrics and how the run reports them.

A dataset names its task (datasets.toml); the trainer, the evaluation and the binding of a spec
ask the task and never the task's name. Counts stay on the device until the end of an evaluation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from dnetc import dsl

if TYPE_CHECKING:
    from .datasets import Dataset


def _shape(s: tuple[int, ...] | list[int]) -> str:
    return "x".join(map(str, s))


class Classification:
    """A class score per sample: cross-entropy, the share of samples right, the paper's test error."""

    name: ClassVar[str] = "classification"
    augments: ClassVar[bool] = True  # the dataset's augmentation applies to inputs only

    def check(
        self, network: dsl.Network, shape: tuple[int, ...], output: tuple[int, ...], ds: Dataset, classes: int
    ) -> None:
        """A DnetError unless a network taking `shape` ends in what this task needs (a spec mistake: exit 2)."""
        if len(output) != 1:
            raise dsl.DnetError(
                f"{network.name} ends in feature maps of shape {_shape(output)}, not class scores",
                help="end the network with `head classifier(classes)`",
            )
        if output[0] != classes:
            raise dsl.DnetError(
                f"{network.name} ends in {output[0]} outputs but {ds.key} has {classes} classes",
                help=f"--set classes={classes}"
                if "classes" in network.parameters
                else "give the spec a `classes` parameter",
            )

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """The mean loss over the samples (and positions) of a batch."""
        return F.cross_entropy(out, y)

    def hits(self, out: Tensor, y: Tensor) -> Tensor:
        """Correct predictions, each sample counting 1: a label right, or the share of its positions right."""
        right = (out.argmax(1) == y).float()
        return right.reshape(len(y), -1).mean(1).sum()

    def evaluation(self, classes: int, device: torch.device) -> Evaluation:
        return Evaluation(self, 0, device)

    def metrics(self, split: str, loss: float, correct: float, n: int, cells: list[float]) -> dict[str, float]:
        """The record's figures for a split of n samples."""
        return {f"{split}_loss": loss / n, f"{split}_error": 100.0 * (1 - correct / n)}

    def epoch_line(self, r: dict[str, Any]) -> str:
        """The test figures of an epoch's summary line."""
        return f"test err {r['test_error']:.2f}%  "

    def score(self, r: dict[str, Any]) -> str:
        """The run's result, in the paper's terms."""
        return f"test error {r['test_error']:.2f}% (accuracy {100 - r['test_error']:.2f}%)"


class Segmentation(Classification):
    """A class score at every input position: per-pixel cross-entropy, pixel error and mean IoU."""

    name: ClassVar[str] = "segmentation"
    augments: ClassVar[bool] = False  # crops and flips would have to move the masks too

    def check(
        self, network: dsl.Network, shape: tuple[int, ...], output: tuple[int, ...], ds: Dataset, classes: int
    ) -> None:
        expected = (classes, *shape[1:])
        if tuple(output) != expected:
            raise dsl.DnetError(
                f"{network.name} ends in {_shape(output)}, but segmenting {ds.key} needs "
                f"{_shape(expected)}: {classes} class scores at every input position",
                help="end the network with `head pixel_classifier(classes)`"
                + (f" and --set classes={classes}" if "classes" in network.parameters else ""),
            )

    def evaluation(self, classes: int, device: torch.device) -> Evaluation:
        return Evaluation(self, classes, device)

    def metrics(self, split: str, loss: float, correct: float, n: int, cells: list[float]) -> dict[str, float]:
        iou = _iou(cells, math.isqrt(len(cells)))
        return {**super().metrics(split, loss, correct, n, cells), f"{split}_miou": sum(iou) / max(len(iou), 1)}

    def epoch_line(self, r: dict[str, Any]) -> str:
        return f"test err {r['test_error']:.2f}%  mIoU {r['test_miou']:.3f}  "

    def score(self, r: dict[str, Any]) -> str:
        return f"test mIoU {r['test_miou']:.3f} (pixel error {r['test_error']:.2f}%)"


class Evaluation:
    """A split's summed loss and hits (and, for segmentation, a confusion matrix of positions),
    accumulated on the device batch by batch and read once."""

    def __init__(self, task: Classification, classes: int, device: torch.device) -> None:
        self.task, self.classes = task, classes
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)
        self.confusion = torch.zeros(classes * classes, dtype=torch.float64, device=device)

    def add(self, out: Tensor, y: Tensor) -> None:
        positions = y[0].numel() if y.dim() > 1 else 1  # a sample's loss is its mean over positions
        loss = F.cross_entropy(out, y, reduction="sum").double() / positions
        self.sums += torch.stack([loss, self.task.hits(out, y).double()])
        if self.classes:
            self.confusion += torch.bincount((y * self.classes + out.argmax(1)).flatten(), minlength=self.classes**2)

    def values(self) -> Tensor:
        """Loss, hits and the confusion cells as one tensor, to be summed over ranks and read."""
        return torch.cat([self.sums, self.confusion])


class ExitEvaluation:
    """The head's evaluation, as its task makes it, and each early exit's hits, from stacked scores."""

    def __init__(self, head: Evaluation, exits: int) -> None:
        self.head = head
        self.exit_hits = torch.zeros(exits, dtype=torch.float64, device=head.sums.device)

    def add(self, out: Tensor, y: Tensor) -> None:
        self.head.add(out[-1], y)
        self.exit_hits += torch.stack([self.head.task.hits(o, y).double() for o in out[:-1].unbind(0)])

    def values(self) -> Tensor:
        """The head's loss and hits, the exits' hits, then the head's confusion cells."""
        sums, cells = self.head.values().split([2, self.head.confusion.numel()])
        return torch.cat([sums, self.exit_hits, cells])


class MultiExit:
    """A task on a network with early exits, whose output stacks the exits' scores and the head's
    (last): every exit learns the labels, their losses summed as MSDNet trains them; the head's
    error is the run's, and each exit's is reported beside it (`test_exit1_error`, ...)."""

    def __init__(self, task: Classification, exits: int) -> None:
        self.task, self.exits = task, exits

    def __getattr__(self, name: str) -> Any:  # what exits do not change is the task's own
        return getattr(self.task, name)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return sum((self.task.loss(o, y) for o in out.unbind(0)), out.new_zeros(()))

    def hits(self, out: Tensor, y: Tensor) -> Tensor:
        return self.task.hits(out[-1], y)

    def evaluation(self, classes: int, device: torch.device) -> ExitEvaluation:
        return ExitEvaluation(self.task.evaluation(classes, device), self.exits)

    def metrics(self, split: str, loss: float, correct: float, n: int, cells: list[float]) -> dict[str, float]:
        own = {f"{split}_exit{e + 1}_error": 100.0 * (1 - hits / n) for e, hits in enumerate(cells[: self.exits])}
        return {**self.task.metrics(split, loss, correct, n, cells[self.exits :]), **own}

    def epoch_line(self, r: dict[str, Any]) -> str:
        errors = "/".join(f"{r[f'test_exit{e + 1}_error']:.1f}" for e in range(self.exits))
        return self.task.epoch_line(r) + f"exits {errors}%  "


def _iou(cells: list[float], classes: int) -> list[float]:
    """Intersection over union of each class present in the labels or predictions, from a confusion matrix."""
    m = torch.tensor(cells, dtype=torch.float64).view(classes, classes)
    inter, union = m.diag(), m.sum(0) + m.sum(1) - m.diag()
    return [float(i / u) for i, u in zip(inter, union, strict=True) if u > 0]


TASKS: dict[str, Classification] = {t.name: t for t in (Classification(), Segmentation())}
