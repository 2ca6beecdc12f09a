"""The trainer: the paper's recipes, a device-resident data path, and runs that never lose work.

Exactness: the data order of epoch e and the augmentation of step s are drawn from generators
seeded by (seed, e) and (seed, e, s); dropout draws from torch's global RNG, whose state goes into
every checkpoint with the model, optimizer and position. A run interrupted and resumed therefore
ends with the same parameters as one that was not (CPU, --deterministic).

Under data parallelism (runtime.distributed) every rank forms the same global batch and trains on
its share; rank 0 writes checkpoints and logs, and every rank's RNG state goes into the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import checkpoint
from .data import Data, dataset, generator
from .distributed import World
from .logs import Logs


class TrainingError(Exception):
    """Training cannot go on (a non-finite loss, a checkpoint that does not fit): says what to do."""


class UsageError(TrainingError):
    """Flags that cannot work together: a usage mistake (exit 2), found before any work is done."""


@dataclass
class Config:
    """Everything a run depends on, resolved from the dataset's recipe and the user's flags."""

    dataset: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    milestones: list[float]
    gamma: float
    augment: bool
    seed: int = 0
    deterministic: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    memory: str | None = None  # None: the spec's `memory` setting, else naive
    sync_bn: bool = False  # batch statistics over all ranks (CUDA, data parallel)
    checkpoint_every: float = 0.0  # minutes; 0: only at the end of each epoch
    keep: int = 3
    extra_data: bool = False  # SVHN: train + extra, as the paper
    validation: int = 0  # training images held out for model selection (SVHN: 6,000)
    workers: int | None = None  # data-loading processes for image folders (None: up to 8)
    accumulate: int = 1  # micro-batches per step, gradients summed: the batch's memory / accumulate


def resolve(name: str, **flags: Any) -> Config:
    """The recipe of `dataset`, with every flag that is not None put over it."""
    recipe = dict(dataset(name)["recipe"])
    recipe["batch_size"] = recipe.pop("batch")
    recipe.pop("dropout", None)  # a property of the network: bound to the spec by launch.bind
    cuda = torch.cuda.is_available()
    # channels_last measured faster on both (bench/speed.py; the main job on 2 CPU cores: 1.19x)
    defaults = {"device": "cuda" if cuda else "cpu", "precision": "bf16" if cuda else "fp32", "channels_last": True}
    known = {f.name for f in fields(Config)}  # a checkpoint's config may hold fields of another version
    values = {**defaults, **recipe, **{k: v for k, v in flags.items() if v is not None and k in known}}
    return Config(dataset=name, **values)


def check(config: Config, processes: int) -> None:
    """What the flags alone tell: called by each process, and by `--nproc` before it starts any."""
    pieces = processes * config.accumulate
    if config.accumulate < 1 or config.batch_size < pieces:
        raise UsageError(
            f"a batch of {config.batch_size} cannot be shared by {pieces} micro-batches "
            f"({processes} process(es) x --accumulate {config.accumulate}): use a larger --batch-size"
        )
    if config.sync_bn and processes > 1 and torch.device(config.device).type != "cuda":
        raise UsageError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
    if config.augment and dataset(config.dataset).get("task") == "segmentation":
        raise UsageError(f"{config.dataset} is a segmentation dataset: its masks are not augmented yet; drop --augment")


def lr_at(config: Config, epoch: int, step: int, steps: int) -> float:
    """Step: divide by 1/gamma at each milestone (fractions of the epochs); cosine: per iteration."""
    if config.schedule == "cosine":
        t, total = epoch * steps + step, config.epochs * steps
        return 0.5 * config.lr * (1 + math.cos(math.pi * t / total))
    # the authors' Lua code: decay once the 1-based epoch reaches each milestone (epoch 150 of 300)
    passed = sum(epoch + 1 >= round(m * config.epochs, 6) for m in config.milestones)
    return config.lr * config.gamma**passed


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        data: Data,
        config: Config,
        out: Path,
        meta: dict[str, Any],
        world: World | None = None,
    ) -> None:
        self.config = config
        self.out = out
        self.meta = meta  # spec text, overrides, version: stored in every checkpoint
        self.world = world = world or World()
        self.device = world.device(config.device)
        check(config, world.size)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(config.seed)
        # channels_last is a layout of 2D maps: 1D and 3D networks keep theirs
        self.channels_last = config.channels_last and any(p.dim() == 4 for p in model.parameters())
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if config.sync_bn and world.size > 1:
            if getattr(model, "memory", None) == "shared":
                raise UsageError(
                    "--sync-bn cannot reach the batch norms inside the shared lowering: use --memory checkpoint"
                )
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device, memory_format=fmt)
        self.net: torch.nn.Module = self.model
        if world.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.data = data.to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            dampening=0,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step_fn = torch.compile(self.net) if config.compile else self.net
        self.epoch, self.step, self.best = 0, 0, math.inf
        self.history: list[dict[str, Any]] = []
        self.logs = Logs(out)
        self.order: torch.Tensor | None = None  # the data order of the current epoch
        self.stop_requested = False  # by a signal, in this process
        self.stop_agreed = False  # by any rank, as of the last step

    # ---- state
    def _rng(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def state(self) -> dict[str, Any]:
        """The whole run's state; under data parallelism a collective (every rank's RNG)."""
        ranks = self.world.gather(self._rng()) if self.world.size > 1 else []
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "history": self.history,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rank_rng": ranks,
            "order": None if self.order is None else self.order.to(torch.int32),
            "config": asdict(self.config),
            **self.meta,
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise TrainingError(f"the checkpoint does not fit this network: {e}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.history = list(state["history"])
        order = state.get("order")
        self.order = None if order is None or self.step == 0 else order.long()
        ranks = state.get("rank_rng", [])
        if self.world.size > 1 and len(ranks) == self.world.size:
            cpu, cuda = ranks[self.world.rank]
            torch.set_rng_state(cpu)
            if cuda is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(cuda, self.device)
            return
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save(self, name: str = "latest.pt") -> Path:
        """Every rank takes part (the state is gathered); rank 0 writes."""
        state = self.state()
        folder = self.out / "checkpoints"
        if self.world.main:
            folder.mkdir(parents=True, exist_ok=True)
            checkpoint.save(state, folder / name)
        return folder / name

    def steps_per_epoch(self) -> int:
        """Every batch, the last one too unless it is too small to give each micro-batch two samples."""
        n, b = len(self.data.train), self.config.batch_size
        tail = n % b
        return n // b + (tail >= 2 * self.world.size * self.config.accumulate)

    # ---- the loop
    def run(self, interrupt_at: tuple[int, int] | None = None) -> dict[str, Any]:
        """Train to the last epoch; on SIGINT/SIGTERM (or at `interrupt_at`) save and return."""
        handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        if self.world.main:
            checkpoint.remove_stale(self.out / "checkpoints")
        try:
            return self._loop(interrupt_at)
        finally:
            self.logs.close()
            for s, h in handlers.items():
                signal.signal(s, h)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _loop(self, interrupt_at: tuple[int, int] | None) -> dict[str, Any]:
        c = self.config
        steps = self.steps_per_epoch()
        last_save = time.monotonic()
        progress = Progress(c.epochs, live=self.world.main)
        while self.epoch < c.epochs:
            if self.order is None:  # a resumed run keeps the order it was saved with
                self.order = torch.randperm(len(self.data.train), generator=generator(c.seed, self.epoch))
            batches = self.data.batches(
                self.order, self.step, steps, c.batch_size, self.world, c.augment, c.seed, self.epoch
            )
            self.model.train()
            sums = {"loss": 0.0, "correct": 0, "seen": 0, "data_s": 0.0, "step_s": 0.0}
            started = time.perf_counter()
            lr = lr_at(c, self.epoch, self.step, steps)
            while self.step < steps:
                stop = self.stop_requested if self.world.size == 1 else self.stop_agreed
                if interrupt_at == (self.epoch, self.step) or stop:
                    path = self.save()
                    return {"interrupted": True, "checkpoint": str(path), "epoch": self.epoch, "step": self.step}
                t0 = time.perf_counter()
                x, y, batch = next(batches)
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if self.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                t1 = time.perf_counter()
                lr = lr_at(c, self.epoch, self.step, steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                total, correct = self._train_step(x, y, batch)
                save_now = bool(c.checkpoint_every) and time.monotonic() - last_save > 60 * c.checkpoint_every
                if self.world.size > 1:  # global sums, and decisions every rank takes together
                    total, correct, stops, saves = self.world.sum(
                        [total, correct, self.stop_requested, save_now and self.world.main], self.device
                    )
                    self.stop_agreed, save_now = stops > 0, saves > 0
                loss = total / batch
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                t2 = time.perf_counter()
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss} at epoch {self.epoch + 1}, step {self.step + 1}: training stopped. "
                        f"The last good checkpoint is in {self.out / 'checkpoints'}; try a lower --lr"
                    )
                sums["loss"] += total
                sums["correct"] += correct
                sums["seen"] += batch
                sums["data_s"] += t1 - t0
                sums["step_s"] += t2 - t0
                self.step += 1
                progress.update(self.epoch, self.step, steps, sums, lr, time.perf_counter() - started)
                if save_now:
                    self.save()
                    last_save = time.monotonic()
            progress.clear()
            record = self._end_epoch(sums, time.perf_counter() - started, lr)
            if self.world.main:
                print(self._line(record), flush=True)
        return {"interrupted": False, **(self.history[-1] if self.history else {})}

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, int]:
        """One SGD step on this rank's share of a global batch of `batch`, in `accumulate` micro-batches
        whose gradients add up; returns the share's summed loss and its hits."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        self.optimizer.zero_grad(set_to_none=True)
        pieces = list(zip(x.tensor_split(self.config.accumulate), y.tensor_split(self.config.accumulate), strict=True))
        pieces = [(xi, yi) for xi, yi in pieces if len(yi)]
        total, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for i, (xi, yi) in enumerate(pieces):
            # DDP averages the ranks' gradients: weigh each piece by its share of the global batch
            weight = len(yi) * self.world.size / batch
            sync = i == len(pieces) - 1 or not isinstance(self.net, torch.nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.net.no_sync():  # type: ignore[operator]
                with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    out = self.step_fn(xi)
                    loss = F.cross_entropy(out, yi)
                self.scaler.scale(loss if weight == 1 else loss * weight).backward()
            total += loss.detach().float() * len(yi)
            correct += _hits(out, yi)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total.item(), correct.item()

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> tuple[float, float]:
        """Test (or validation) loss and error (%), no augmentation, eval mode."""
        self.model.eval()
        n = len(self.data.val if split == "val" else self.data.test)
        loss, correct = 0.0, 0.0
        classes = self.data.classes
        segmentation = dataset(self.config.dataset).get("task") == "segmentation"
        confusion = torch.zeros(classes * classes if segmentation else 0, dtype=torch.float64, device=self.device)
        for x, y in self.data.test_batches(self.world.share(n), split=split):  # each rank its share, summed
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            crops = self.data.crops
            if crops > 1:  # ten-crop: average the probabilities of an image's views
                x = x.flatten(0, 1)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.model(x).float()
            if crops > 1:
                out = out.view(len(y), crops, -1).softmax(-1).mean(1).log()
            loss += F.cross_entropy(out, y, reduction="sum").item() / (y[0].numel() if y.dim() > 1 else 1)
            correct += float(_hits(out, y))
            if segmentation:  # a confusion matrix of pixels, for the IoU of each class
                confusion += torch.bincount((y * classes + out.argmax(1)).flatten(), minlength=classes**2)
        self.model.train()
        loss, correct, *cells = self.world.sum([loss, correct, *confusion.tolist()], self.device)
        self.iou = _iou(cells, classes) if segmentation else None
        return loss / n, 100.0 * (1 - correct / n)

    def _end_epoch(self, sums: dict[str, float], seconds: float, lr: float) -> dict[str, Any]:
        test_loss, test_error = self.evaluate()
        scores = {} if self.iou is None else {"test_miou": sum(self.iou) / len(self.iou)}
        validated = getattr(self.data, "val", None) is not None
        val = dict(zip(("val_loss", "val_error"), self.evaluate("val"), strict=True)) if validated else {}
        record = {
            "epoch": self.epoch + 1,
            "lr": lr,
            # over the steps this process ran (a resumed epoch counts from where it resumed)
            "train_loss": sums["loss"] / max(sums["seen"], 1),
            "train_error": 100.0 * (1 - sums["correct"] / max(sums["seen"], 1)),
            "test_loss": test_loss,
            "test_error": test_error,
            **scores,
            **val,
            "images_per_s": sums["seen"] / max(seconds, 1e-9),
            "data_fraction": sums["data_s"] / max(sums["step_s"], 1e-9),
            "seconds": seconds,
        }
        self.history.append(record)
        self.epoch, self.step, self.order = self.epoch + 1, 0, None
        chosen = val["val_error"] if validated else test_error  # best: by validation where there is one
        improved = chosen < self.best
        self.best = min(self.best, chosen)
        if improved:
            self.save("best.pt")
        self.save(f"epoch-{self.epoch:04d}.pt")
        self.save()  # last: a run killed before this resumes from before the epoch's end, and writes all three
        if self.world.main:
            for old in sorted((self.out / "checkpoints").glob("epoch-*.pt"))[: -self.config.keep or None]:
                old.unlink()
            self.logs.write(record, self.history)
        return record

    def _line(self, r: dict[str, Any]) -> str:
        return (
            f"epoch {r['epoch']}/{self.config.epochs}  loss {r['train_loss']:.4f}  train err {r['train_error']:.2f}%  "
            f"test err {r['test_error']:.2f}%  "
            + (f"mIoU {r['test_miou']:.3f}  " if "test_miou" in r else "")
            + f"lr {r['lr']:.4g}  {r['images_per_s']:,.0f} img/s  "
            f"data {100 * r['data_fraction']:.1f}%"
        )


def _hits(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions, each sample counting 1: a label right, or the share of its pixels right."""
    right = (out.argmax(1) == y).float()
    return right.reshape(len(y), -1).mean(1).sum()


def _iou(cells: list[float], classes: int) -> list[float]:
    """Intersection over union of each class present in the labels or predictions, from a confusion matrix."""
    m = torch.tensor(cells, dtype=torch.float64).view(classes, classes)
    inter, union = m.diag(), m.sum(0) + m.sum(1) - m.diag()
    return [float(i / u) for i, u in zip(inter, union, strict=True) if u > 0]


class Progress:
    """A progress line per epoch on a terminal (stderr), rewritten in place at most twice a second."""

    def __init__(self, epochs: int, live: bool = True) -> None:
        self.epochs = epochs
        self.live = live and sys.stderr.isatty()
        self.last = 0.0

    def update(self, epoch: int, step: int, steps: int, sums: dict, lr: float, seconds: float) -> None:
        now = time.monotonic()
        if not self.live or (now - self.last < 0.5 and step < steps):
            return
        self.last = now
        seen = max(sums["seen"], 1)
        bar = "#" * (20 * step // steps)
        sys.stderr.write(
            f"\repoch {epoch + 1}/{self.epochs} [{bar:<20}] {step}/{steps}  loss {sums['loss'] / seen:.4f}  "
            f"acc {100 * sums['correct'] / seen:.2f}%  lr {lr:.4g}  {seen / max(seconds, 1e-9):,.0f} img/s "
        )
        sys.stderr.flush()

    def clear(self) -> None:
        if self.live:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def run_dir(spec_name: str, dataset: str, out: str | Path | None) -> Path:
    default = Path("runs") / f"{spec_name}-{dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    path = Path(out) if out is not None else default
    path.mkdir(parents=True, exist_ok=True)
    return path


def latest_checkpoint(target: str | Path) -> Path:
    """A checkpoint file, or the latest one of a run directory."""
    path = Path(target)
    if path.is_dir():
        path = path / "checkpoints" / "latest.pt"
    return path
