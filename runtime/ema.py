"""`--ema DECAY`: an exponential moving average of the weights, a training feature in one place.

After every optimizer step, avg <- decay * avg + (1 - decay) * weights, for the parameters and the
floating buffers (batch norm's running statistics; counters are copied), inside the training step
and so inside its CUDA graph. The average is what the run evaluates, what `best.pt` is chosen by,
and what checkpoints name as their inference weights, which `--eval`, `--weights` and `--export`
then use. The live weights go on training; both are in every checkpoint, so a resumed run is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .config import UsageError

if TYPE_CHECKING:
    from .config import Config


class EMA:
    """The average of a model's state, tensor for tensor, updated in place."""

    key = "ema"  # its entry in checkpoints, which also names it the inference weights

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.names = list(model.state_dict())
        # parameters and buffers are the same objects at every call (state_dict's are new views)
        by_name = dict(model.named_parameters()) | dict(model.named_buffers())
        self.live = [by_name[n] for n in self.names]
        self.average = [t.detach().clone() for t in self.live]
        self.floating = [i for i, t in enumerate(self.live) if t.is_floating_point()]
        self.counts = [i for i, t in enumerate(self.live) if not t.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average: device ops only (capturable)."""
        torch._foreach_lerp_(
            [self.average[i] for i in self.floating], [self.live[i].detach() for i in self.floating], 1 - self.decay
        )
        for i in self.counts:
            self.average[i].copy_(self.live[i])

    def tensors(self) -> list[Tensor]:
        return self.average

    def state_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.average, strict=True))

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, t in zip(self.names, self.average, strict=True):
                t.copy_(state[name])

    @contextlib.contextmanager
    def weights(self) -> Iterator[None]:
        """The model holds the average inside (for evaluation), its own weights again after."""
        with torch.no_grad():
            saved = [t.detach().clone() for t in self.live]
            for t, a in zip(self.live, self.average, strict=True):
                t.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for t, s in zip(self.live, saved, strict=True):
                    t.copy_(s)


def build(model: torch.nn.Module, config: Config) -> EMA | None:
    if not config.ema:
        return None
    if not 0 < config.ema < 1:
        raise UsageError(f"--ema takes a decay between 0 and 1 (such as 0.999), not {config.ema}")
    return EMA(model, config.ema)
