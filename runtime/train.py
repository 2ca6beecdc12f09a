"""The trainer: the paper's recipes, a device-resident data path, and runs that never lose work.

Speed: a training step (runtime.step) is device work only, one CUDA graph per batch shape on CUDA;
its loss and hits are summed on the device and read a window of steps late, so the host never waits
for the GPU within an epoch except to save. Decisions that need the GPU's results (a non-finite
loss, a checkpoint) drain it first.

Exactness: the data order of epoch e and the augmentation of step s are drawn from generators
seeded by (seed, e) and (seed, e, s); dropout draws from torch's global RNG, whose state goes into
every checkpoint with the model, optimizer and position. A run interrupted and resumed therefore
ends with the same parameters as one that was not (CPU, --deterministic).

No checkpoint is written whose parameters, buffers or optimizer state are not all finite, nor after
a step whose loss was not: a run that diverges stops, naming the last good checkpoint.

Under data parallelism (runtime.distributed) every rank forms the same global batch and trains on
its share; rank 0 writes checkpoints and logs, and every rank's RNG state goes into the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dnetc.compiler.lowerings import LOWERINGS

from . import checkpoint, ema, optim
from .config import Config, TrainingError, UsageError, check, graph_refusal, resolve
from .data import generator, load
from .distributed import World
from .logs import Logs
from .step import WINDOW, Meter, Step, Totals, module_refusal
from .tasks import TASKS, MultiExit

__all__ = ["Config", "Trainer", "TrainingError", "UsageError", "check", "resolve"]

if TYPE_CHECKING:
    from .launch import Run


# The features a run can switch on, each built from the model and the configuration (None when off):
# a feature updates in the step, keeps its state in checkpoints under its key, and may hold the
# weights that evaluation and inference use (`weights()`).
FEATURES = (ema.build,)


class Trainer:
    """One run's training: the model, data, optimizer and step, built from a launch.Run."""

    def __init__(self, run: Run, world: World | None = None) -> None:
        self.run = run
        self.config = c = run.config
        self.out = run.folder
        self.world = world = world or World()
        self.say = print if world.main else _quiet
        self.device = world.device(c.device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # streams, events and graph capture follow the current device
        self.task = TASKS[run.dataset.task]
        if run.graph.graph["exits"]:  # early classifiers: all trained, each scored
            self.task = MultiExit(self.task, len(run.graph.graph["exits"]))
        check(c, world.size)
        if c.deterministic:
            if self.device.type == "cuda":  # cuBLAS is deterministic only with a fixed workspace
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(c.seed)  # the initial weights are part of a repeatable run
        model = run.compile(c.batch_size // world.size, str(self.device))
        if run.weights is not None and run.previous is None:
            self.say(run.start_from(model))
        self.data = load(
            c.dataset,
            run.data_root,
            shape=run.shape,
            seed=c.seed,
            augment=c.augment,
            workers=c.workers,
            extra=c.extra_data,
            validation=c.validation,
            ten_crop=run.ten_crop,
            decode=c.decode,
        ).to(self.device)
        torch.manual_seed(c.seed)
        # channels_last is a layout of 2D maps: 1D and 3D networks keep theirs
        self.channels_last = c.channels_last and any(p.dim() == 4 for p in model.parameters())
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if c.sync_bn and world.size > 1:
            lowering = LOWERINGS[model.memory]
            if not lowering.sync_bn:
                others = ", ".join(x.name for x in LOWERINGS.values() if x.sync_bn)
                raise UsageError(
                    f"--sync-bn cannot reach the batch norms inside the {lowering.name} lowering, which computes "
                    f"their statistics itself: use --memory with one of {others}"
                )
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device, memory_format=fmt)
        c.memory = self.model.memory  # resolved: the spec's, or what `auto` chose for this device
        net: torch.nn.Module = self.model
        if world.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer, self.lr = optim.build(self.model.parameters(), c, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.precision == "fp16")
        self.features = [f for build in FEATURES if (f := build(self.model, c)) is not None]
        # modules that learn their structure while training (CondenseNet's learned group convolutions)
        self.scheduled = [m for m in self.model.modules() if callable(getattr(m, "schedule", None))]
        # the feature that holds the weights evaluation and inference use (the EMA's), if any
        self.inference = next((f for f in self.features if hasattr(f, "weights")), None)
        self.meter = Meter(self.device)
        graphs = self.device.type == "cuda" and c.cuda_graphs is not False
        why = (graph_refusal(c, world.size) or module_refusal(self.model)) if graphs else None
        if why and c.cuda_graphs:
            raise UsageError(f"--cuda-graphs cannot apply: {why}")
        if why:
            self.say(f"note: no CUDA graphs for this run: {why}")
        self.train_step = Step(
            model=self.model,
            net=net,
            optimizer=self.optimizer,
            scaler=self.scaler,
            materialise=self.data.materialise,
            task=self.task,
            meter=self.meter,
            features=self.features,
            precision=c.precision,
            accumulate=c.accumulate,
            world_size=world.size,
            channels_last=self.channels_last,
            compile_mode=c.compile,
            graphs=graphs and why is None,
            device=self.device,
            say=self.say,
        )
        self.epoch, self.step, self.best = 0, 0, math.inf
        self.history: list[dict[str, Any]] = []
        self.logs = Logs(self.out)
        self.order: torch.Tensor | None = None  # the data order of the current epoch
        self.stop_requested = False  # by a signal, in this process
        self.good: tuple[Path, int, int] | None = None  # the last checkpoint written: path, epoch, step
        if run.previous is not None:
            self.restore(run.previous)

    # ---- state
    def _rng(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def state(self) -> dict[str, Any]:
        """The whole run's state; under data parallelism a collective (every rank's RNG)."""
        ranks = self.world.gather(self._rng()) if self.world.size > 1 else []
        return {
            "model": self.model.state_dict(),
            "optimizer": optim.state_dict(self.optimizer),
            "scaler": self.scaler.state_dict(),
            **{f.key: f.state_dict() for f in self.features},
            "inference": self.inference.key if self.inference else "model",  # what --eval and --export use
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "history": self.history,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rank_rng": ranks,
            "order": None if self.order is None else self.order.to(torch.int32),
            "config": asdict(self.config),
            **self.run.meta(self.world.size),
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise TrainingError(f"the checkpoint does not fit this network: {e}") from None
        optim.load_state_dict(self.optimizer, state["optimizer"], self.lr)
        self.scaler.load_state_dict(state["scaler"])
        for f in self.features:
            if f.key not in state:
                raise TrainingError(f"the checkpoint holds no `{f.key}` state: resume it without --{f.key}")
            f.load_state_dict(state[f.key])
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

    def non_finite(self) -> tuple[list[str], int]:
        """The floating tensors of the state that hold an infinity or a NaN, and how many it has (one
        read of the device)."""
        named = [(f"model.{k}", v) for k, v in self.model.state_dict().items()]
        for i, s in enumerate(self.optimizer.state.values()):
            named += [(f"optimizer.{i}.{k}", v) for k, v in s.items() if isinstance(v, torch.Tensor)]
        for f in self.features:
            named += [(f"{f.key}.{k}", v) for k, v in f.state_dict().items()]
        named = [(k, v) for k, v in named if v.is_floating_point()]
        if not named:
            return [], 0
        finite = torch.stack([v.isfinite().all() for _, v in named]).tolist()
        return [k for (k, _), ok in zip(named, finite, strict=True) if not ok], len(named)

    def guard(self) -> None:
        """Refuse to go on (and so to save) from a state that is not finite: say what, and what is kept."""
        bad, total = self.non_finite()
        if self.world.size > 1 and self.world.sum([len(bad)], self.device)[0] and not bad:
            bad = ["(on another rank)"]
        if bad:
            raise TrainingError(
                f"the training state is no longer finite after epoch {self.epoch + 1}, step {self.step}: "
                f"{len(bad)} of its {total} tensors hold an infinity or NaN ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}). Training stopped without saving it. {self._kept()}"
            )

    def _kept(self) -> str:
        if self.good is not None:
            path, epoch, step = self.good
            return f"The last good checkpoint is {path} (epoch {epoch + 1}, step {step}); try a lower --lr"
        if self.run.resumed_from is not None:
            return f"The checkpoint this run resumed from, {self.run.resumed_from}, is intact; try a lower --lr"
        return "No checkpoint was written before; try a lower --lr"

    def save(self, name: str = "latest.pt") -> Path:
        """Every rank takes part (the state is gathered); rank 0 writes. The state was guarded."""
        state = self.state()
        folder = self.out / "checkpoints"
        if self.world.main:
            folder.mkdir(parents=True, exist_ok=True)
            checkpoint.save(state, folder / name)
        if name == "latest.pt":
            self.good = (folder / name, self.epoch, self.step)
        return folder / name

    def steps_per_epoch(self) -> int:
        """Every batch, the last one too unless it is too small to give each micro-batch two samples."""
        n, b = len(self.data.train), self.config.batch_size
        tail = n % b
        return n // b + (tail >= 2 * self.world.size * self.config.accumulate)

    # ---- the loop
    def train(self, interrupt_at: tuple[int, int] | None = None) -> dict[str, Any]:
        """Train to the last epoch; on SIGINT/SIGTERM (or at `interrupt_at`, or after --max-steps
        steps) save and return."""
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

    def _together(self, *flags: bool) -> list[bool]:
        """Host decisions as every rank takes them: under data parallelism at the first step of each
        window only, any rank's wish for all (one small all-reduce)."""
        if self.world.size == 1:
            return list(flags)
        if self.step % WINDOW:
            return [False] * len(flags)
        return [total > 0 for total in self.world.sum(list(flags), self.device)]

    def _drain(self) -> Totals:
        """Wait for the GPU, read the epoch's sums, and stop if a loss was not finite."""
        totals = self.meter.read()
        self._check_loss(totals)
        return totals

    def _check_loss(self, totals: Totals) -> None:
        bad = totals.bad_step is not None
        if self.world.size > 1:
            bad = self.world.sum([bad], self.device)[0] > 0
        if bad:
            where = (
                f"the loss became {totals.bad_loss} at epoch {self.epoch + 1}, step {totals.bad_step + 1}"
                if totals.bad_step is not None
                else f"the loss became non-finite on another rank in epoch {self.epoch + 1}"
            )
            raise TrainingError(f"{where}: training stopped. {self._kept()}")

    def _loop(self, interrupt_at: tuple[int, int] | None) -> dict[str, Any]:
        c = self.config
        steps = self.steps_per_epoch()
        last_save = time.monotonic()
        progress = Progress(c.epochs, live=self.world.main)
        taken = 0  # steps of this invocation
        while self.epoch < c.epochs:
            if self.order is None:  # a resumed run keeps the order it was saved with
                self.order = torch.randperm(len(self.data.train), generator=generator(c.seed, self.epoch))
            batches = self.data.batches(
                self.order, self.step, steps, c.batch_size, self.world, c.augment, c.seed, self.epoch
            )
            self.model.train()
            self.meter.reset(self.step)
            clock = Clock(self.step)
            lr, shown, pending = optim.lr_at(c, self.epoch, self.step, steps), Totals(), None
            while self.step < steps:
                limit = c.max_steps is not None and taken >= c.max_steps  # the same step on every rank
                (asked,) = self._together(self.stop_requested or interrupt_at == (self.epoch, self.step))
                if limit or asked:  # a signal, the test hook `interrupt_at`, or --max-steps
                    self._drain()
                    timing = clock.result(self.step)  # the steps' pace, without the checkpoint below
                    self.guard()
                    path = self.save()
                    return {
                        "interrupted": asked,
                        "checkpoint": str(path),
                        "epoch": self.epoch,
                        "step": self.step,
                        **timing,
                    }
                t0 = time.perf_counter()
                inputs, size = next(batches)
                clock.data_s += time.perf_counter() - t0
                lr = optim.lr_at(c, self.epoch, self.step, steps)
                self.lr.set(lr)
                for module in self.scheduled:  # before the step, on the host: a CUDA graph sees the result
                    module.schedule((self.epoch * steps + self.step) / (c.epochs * steps))
                self.train_step(inputs, size)
                self.step += 1
                taken += 1
                if self.world.size > 1:  # every rank reads and checks at the same steps
                    if self.step % WINDOW == 0:
                        shown = self._drain()
                elif pending is not None and pending.ready():  # a window late: no wait
                    shown, pending = pending.get(), None
                    self._check_loss(shown)
                if self.step - clock.start == WINDOW:  # warm-up and capture are behind: the pace from here
                    shown = self._drain()
                    clock.mark(self.step)
                elif pending is None and self.step % WINDOW == 0 and self.world.size == 1:
                    pending = self.meter.snapshot()
                progress.update(self.epoch, self.step, steps, shown, lr, clock.seconds())
                every = 60 * c.checkpoint_every
                (due,) = self._together(bool(every) and time.monotonic() - last_save > every and self.world.main)
                if due:
                    self._drain()
                    self.guard()
                    self.save()
                    last_save = time.monotonic()
            totals = self._drain()
            progress.clear()
            record = self._end_epoch(totals, clock, lr)
            self.say(self._line(record))
        return {"interrupted": False, **(self.history[-1] if self.history else {})}

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        """The split's loss and error (%) (and mIoU for segmentation), no augmentation, eval mode,
        with the features' inference weights (the EMA's); counted on the device, read once."""
        n = len(self.data.val if split == "val" else self.data.test)
        evaluation = self.task.evaluation(self.data.classes, self.device)
        for out, y in self.outputs(split):
            evaluation.add(out, y)
        loss, correct, *cells = self.world.sum_tensor(evaluation.values())
        return self.task.metrics(split, loss, correct, n, cells)

    @torch.no_grad()
    def outputs(self, split: str = "test") -> Iterator[tuple[Tensor, Tensor]]:
        """The model's scores and the labels of this rank's share of a split, batch by batch: eval mode,
        no augmentation, the features' inference weights (the EMA's)."""
        n = len(self.data.val if split == "val" else self.data.test)
        self.model.eval()
        try:
            with self.inference.weights() if self.inference else contextlib.nullcontext():
                for x, y in self.data.test_batches(self.world.share(n), split=split):  # each rank its share
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    crops = self.data.crops
                    if crops > 1:  # ten-crop: average the probabilities of an image's views
                        x = x.flatten(0, 1)
                    if self.channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    out = self.model(x).float()
                    if crops > 1:
                        out = out.unflatten(-2, (len(y), crops)).softmax(-1).mean(-2).log()
                    yield out, y
        finally:
            self.model.train()

    def _end_epoch(self, totals: Totals, clock: Clock, lr: float) -> dict[str, Any]:
        seconds = clock.seconds()
        if self.world.size > 1:
            totals.loss, totals.hits, totals.seen = self.world.sum([totals.loss, totals.hits, totals.seen], self.device)
        self.guard()  # before evaluating: a state that is not finite is neither scored nor saved
        scores = self.evaluate()
        validated = getattr(self.data, "val", None) is not None
        val = self.evaluate("val") if validated else {}
        record = {
            "epoch": self.epoch + 1,
            "lr": lr,
            # over the steps this process ran (a resumed epoch counts from where it resumed)
            "train_loss": totals.loss / max(totals.seen, 1),
            "train_error": 100.0 * (1 - totals.hits / max(totals.seen, 1)),
            **scores,
            **val,
            "images_per_s": totals.seen / max(seconds, 1e-9),
            **{"s_per_step": None, **clock.result(self.step)},
            "seconds": seconds,
        }
        self.history.append(record)
        self.epoch, self.step, self.order = self.epoch + 1, 0, None
        chosen = val["val_error"] if validated else scores["test_error"]  # best: by validation where there is one
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
            + self.task.epoch_line(r)
            + f"lr {r['lr']:.4g}  {r['images_per_s']:,.0f} img/s  data {100 * r['data_fraction']:.1f}%"
        )


@dataclass
class Clock:
    """An epoch's wall time, the host's time waiting for batches, and the steady pace: from the
    window's end (warm-up, compilation and graph capture are behind by then) to the last step."""

    start: int
    began: float = field(default_factory=time.perf_counter)
    data_s: float = 0.0
    marked_step: int | None = None
    marked_at: float = 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.began

    def mark(self, step: int) -> None:
        self.marked_step, self.marked_at = step, time.perf_counter()

    def result(self, step: int) -> dict[str, float]:
        """s/step since the mark (the GPU drained at both ends), when steps were taken since, and the
        share of the wall time spent making batches."""
        share = {"data_fraction": self.data_s / max(self.seconds(), 1e-9)}
        if self.marked_step is None or step <= self.marked_step:
            return share
        return {"s_per_step": (time.perf_counter() - self.marked_at) / (step - self.marked_step), **share}


class Progress:
    """A progress bar per epoch on a terminal (tqdm, on stderr), updated at most twice a second from the
    sums the host last read (a window of steps behind the GPU)."""

    def __init__(self, epochs: int, live: bool = True) -> None:
        self.epochs = epochs
        self.live = live and sys.stderr.isatty()
        self.last = 0.0
        self.bar: Any = None
        self.epoch = -1

    def update(self, epoch: int, step: int, steps: int, totals: Totals, lr: float, seconds: float) -> None:
        now = time.monotonic()
        if not self.live or (now - self.last < 0.5 and step < steps):
            return
        self.last = now
        if self.bar is None or epoch != self.epoch:
            from tqdm import tqdm

            self.clear()
            self.bar = tqdm(
                total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step", leave=False, file=sys.stderr
            )
            self.epoch = epoch
        seen = max(totals.seen, 1)
        self.bar.set_postfix_str(
            f"loss {totals.loss / seen:.4f}  acc {100 * totals.hits / seen:.2f}%  lr {lr:.4g}  "
            f"{totals.seen / max(seconds, 1e-9):,.0f} img/s",
            refresh=False,
        )
        self.bar.update(step - self.bar.n)

    def clear(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Ranks other than 0 say nothing: one voice per run."""


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
