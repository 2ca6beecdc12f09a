"""One training step, run eagerly or replayed as a CUDA graph, its results kept on the device.

A step takes a batch's input tensors (the indices and augmentation draws of a dataset held on the
device, or images decoded by workers), makes the images, runs forward and backward over its
micro-batches, the optimizer and the training features (EMA), and adds its loss, hits and the first
non-finite loss to sums on the device (`Meter`). Nothing in it reads a value back to the host, so
on CUDA the whole step is captured once per input shape (the epoch's last, smaller batch gets its
own graph, in the same memory pool) and replayed: the host's work per step is a few small copies
into the graph's inputs and one launch. The host reads the meter a window of steps late.

Capture: a few warm-up steps on a side stream (cuDNN's autotuning, torch.compile, the optimizer's
state), every tensor they changed put back as it was (state that did not exist before is zeroed,
which is where a fresh optimizer starts), then one step recorded. The graph replays the same
arithmetic as the eager step. Which cases cannot be captured is said once: runtime.config's
graph_refusal for configurations, a lowering's `cuda_graph_refusal` for what its modules do.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .config import PRECISIONS

WARMUP = 3  # eager steps before a capture: cuDNN picks its kernels, DDP-free autograd settles
WINDOW = 20  # the host reads the meter this many steps after it was written (and decides then under DDP)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast runs in for a --precision (None: fp32, no autocast)."""
    name = PRECISIONS[precision]
    return None if name is None else getattr(torch, name)


def module_refusal(model: torch.nn.Module) -> str | None:
    """A lowering's own reason why a CUDA graph cannot capture a step through it, or None."""
    for module in model.modules():
        why = getattr(module, "cuda_graph_refusal", None)
        if why is not None and (reason := why()):
            return reason
    return None


@dataclass
class Totals:
    """What the meter held when it was read: sums over this rank's steps of the epoch."""

    loss: float = 0.0  # the losses times their samples
    hits: float = 0.0
    seen: float = 0.0
    bad_step: int | None = None  # the first step of the epoch whose loss was not finite
    bad_loss: float = 0.0


class Reading:
    """The meter's values on their way to the host: ready once the GPU has got there."""

    def __init__(self, values: Tensor, event: torch.cuda.Event | None) -> None:
        self.values, self.event = values, event

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def get(self) -> Totals:
        if self.event is not None:
            self.event.synchronize()
        loss, hits, seen, bad, bad_loss = self.values.tolist()
        return Totals(loss, hits, seen, None if bad < 0 else int(bad), bad_loss)


class Meter:
    """Per-epoch sums on the device, written by each step: loss x samples, hits, samples, and the
    step (and loss) of the first non-finite loss. `counter` is the step within the epoch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.bad = torch.full((2,), -1.0, dtype=torch.float64, device=device)
        self.counter = torch.zeros((), dtype=torch.float64, device=device)

    def tensors(self) -> list[Tensor]:
        return [self.sums, self.bad, self.counter]

    def reset(self, step: int) -> None:
        """A new epoch (or a resumed one) from `step`."""
        self.sums.zero_()
        self.bad.fill_(-1.0)
        self.counter.fill_(float(step))

    def add(self, loss: Tensor, hits: Tensor, n: int) -> None:
        """A step's summed loss over its n samples and its hits: device ops only (capturable)."""
        loss = loss.double()
        self.sums[:2] += torch.stack([loss, hits.double()])
        self.sums[2] += n
        first = ~torch.isfinite(loss) & (self.bad[0] < 0)
        self.bad.copy_(torch.where(first, torch.stack([self.counter, loss / n]), self.bad))
        self.counter += 1

    def snapshot(self) -> Reading:
        """The values as of the last step enqueued, copied to the host without waiting for them."""
        values = torch.cat([self.sums, self.bad])
        if self.device.type != "cuda":
            return Reading(values.clone(), None)
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return Reading(host, event)

    def read(self) -> Totals:
        """The values now (waits for the GPU)."""
        return self.snapshot().get()


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Tensor]  # the static tensors the graph reads; each step copies its batch in


class Step:
    """A training step over `net` (the model, or DDP around it), eager or as CUDA graphs."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        materialise: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]],
        task: Any,
        meter: Meter,
        features: Sequence[Any],
        precision: str,
        accumulate: int,
        world_size: int,
        channels_last: bool,
        compile_mode: str | None,
        graphs: bool,
        device: torch.device,
        say: Callable[[str], None],
    ) -> None:
        self.model, self.net, self.optimizer, self.scaler = model, net, optimizer, scaler
        self.materialise, self.task, self.meter, self.features = materialise, task, meter, list(features)
        self.dtype = autocast_dtype(precision)
        self.accumulate, self.world_size, self.channels_last = accumulate, world_size, channels_last
        self.device, self.say = device, say
        self.compile_mode = compile_mode
        self.forward = torch.compile(net, mode=compile_mode) if compile_mode else net
        self.graphs_on = graphs and device.type == "cuda"
        self.graphs: dict[tuple, Captured] = {}
        self.pool: Any = None
        self.compiled = not compile_mode  # the first call compiles: its time is told once
        # terms a module adds to the loss (CondenseNet's group lasso): device ops, so a graph holds them
        self.penalties = [
            m for m in model.modules() if callable(getattr(m, "penalty", None)) and getattr(m, "lasso", 1) != 0
        ]

    # ---- the step itself
    def body(self, inputs: dict[str, Tensor], size: int) -> None:
        """One SGD step on this rank's share of a global batch of `size`, in `accumulate` micro-batches
        whose gradients add up. Device ops only: this is what a CUDA graph records."""
        x, y = self.materialise(inputs)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        split = zip(x.tensor_split(self.accumulate), y.tensor_split(self.accumulate), strict=True)
        pieces = [(xi, yi) for xi, yi in split if len(yi)]
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device)
        ddp = isinstance(self.net, torch.nn.parallel.DistributedDataParallel)
        for i, (xi, yi) in enumerate(pieces):
            # DDP averages the ranks' gradients: weigh each piece by its share of the global batch
            weight = len(yi) * self.world_size / size
            sync = i == len(pieces) - 1 or not ddp
            with contextlib.nullcontext() if sync else self.net.no_sync():  # type: ignore[operator]
                # a CUDA graph cannot hold autocast's cache of cast weights: off (each weight is used once)
                on = self.dtype is not None
                with torch.autocast(
                    self.device.type, dtype=self.dtype or torch.float32, enabled=on, cache_enabled=False
                ):
                    out = self.forward(xi)
                    loss = self.task.loss(out, yi)
                objective = loss + sum(m.penalty() for m in self.penalties) if self.penalties else loss
                self.scaler.scale(objective if weight == 1 else objective * weight).backward()
            loss_sum += loss.detach().float() * len(yi)
            hits += self.task.hits(out.detach(), yi)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for feature in self.features:
            feature.update()
        self.meter.add(loss_sum, hits, len(y))

    def __call__(self, inputs: dict[str, Tensor], size: int) -> None:
        """Enqueue one step: replay its graph (capturing it at the first batch of its shape), or run it."""
        if self.graphs_on:
            key = (size, *sorted((k, tuple(v.shape), v.dtype) for k, v in inputs.items()))
            captured = self.graphs.get(key) or self._capture(key, inputs, size)
            if captured is not None:
                for k, v in inputs.items():
                    captured.inputs[k].copy_(self._pinned(v), non_blocking=True)
                captured.graph.replay()
                return
        inputs = {k: self._pinned(v).to(self.device, non_blocking=True) for k, v in inputs.items()}
        started = time.perf_counter()
        self.body(inputs, size)
        if not self.compiled:
            self.compiled = True
            self.say(f"torch.compile ({self.compile_mode}): the first step took {time.perf_counter() - started:.1f} s")

    def _pinned(self, t: Tensor) -> Tensor:
        """A host tensor in page-locked memory, so that its copy to the GPU does not wait for the GPU."""
        if self.device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
            return t.pin_memory()
        return t

    # ---- capture
    def state_tensors(self) -> list[Tensor]:
        """Every tensor a step writes that outlives it: parameters, buffers, the optimizer's state,
        the features' and the meter's."""
        found = [*self.model.parameters(), *self.model.buffers()]  # the same objects at every call
        for state in self.optimizer.state.values():
            found += [v for v in state.values() if isinstance(v, Tensor)]
        for feature in self.features:
            found += feature.tensors()
        return found + self.meter.tensors()

    def _capture(self, key: tuple, inputs: dict[str, Tensor], size: int) -> Captured | None:
        static = {k: torch.empty(v.shape, dtype=v.dtype, device=self.device) for k, v in inputs.items()}
        for k, v in inputs.items():
            static[k].copy_(self._pinned(v), non_blocking=True)
        before = {id(t): t.detach().clone() for t in self.state_tensors()}
        rng = torch.get_rng_state(), torch.cuda.get_rng_state(self.device)
        started = time.perf_counter()
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP):
                    self.body(static, size)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._put_back(before, rng)
            self.optimizer.zero_grad(set_to_none=True)  # the gradients live in the graph's pool
            graph = torch.cuda.CUDAGraph()
            # thread_local: a DataLoader's pin-memory thread may call CUDA meanwhile, which is no part of it
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                self.body(static, size)
        except Exception as e:  # a lowering or a feature that breaks capture: say so, train eagerly
            torch.cuda.synchronize(self.device)
            self._put_back(before, rng)
            self.graphs_on = False
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            self.say(
                f"note: the training step cannot be captured as a CUDA graph ({reason}); training eagerly, "
                "which is slower. --no-cuda-graphs skips the attempt"
            )
            return None
        self.pool = self.pool if self.pool is not None else graph.pool()
        self.compiled = True
        what = f", torch.compile ({self.compile_mode}) included" if self.compile_mode else ""
        self.say(
            f"captured the training step at batch {size} as a CUDA graph in {time.perf_counter() - started:.1f} s{what}"
        )
        self.graphs[key] = Captured(graph, static)
        return self.graphs[key]

    @torch.no_grad()
    def _put_back(self, before: dict[int, Tensor], rng: tuple[Tensor, Tensor | None]) -> None:
        """Undo the warm-up steps in place (the graph records these tensors' addresses): what existed
        is restored, what they created (the optimizer's first state) is zeroed, as a fresh run's is."""
        for t in self.state_tensors():
            if id(t) in before:
                t.copy_(before[id(t)])
            else:
                t.zero_()
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state(rng[1], self.device)
