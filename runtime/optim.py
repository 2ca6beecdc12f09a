"""Optimizers and the learning-rate schedule: each optimizer one record, the only place that names it.

On CUDA the learning rate is a one-element tensor on the device, filled in place before each step:
a CUDA graph that replays the step reads it where it lies, so a schedule needs no new graph, and
torch's fused kernels read it without a host round trip. On the CPU it is the number torch's
default (foreach) kernels take, as before graphs existed: the CPU's results stay what they were.
Adding an optimizer is one record here; `--optimizer` takes its choices from OPTIMIZERS. torch is
imported when an optimizer is built: the command line reads the choices without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .config import Config


@dataclass(frozen=True)
class Optimizer:
    """How to build one optimizer over parameters, with the learning rate as a device tensor."""

    # params, the learning rate (a device tensor on CUDA, else a number), the configuration, the device
    build: Callable[[Iterable[torch.nn.Parameter], Any, Config, torch.device], torch.optim.Optimizer]
    # settings over a recipe written for another optimizer (the datasets' recipes are SGD's)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # the state a first step creates is as if it had been zeros before (SGD's momentum with no
    # dampening, Adam's moments and step count): a CUDA graph captured after warm-up steps whose
    # state is zeroed again then starts exactly where a fresh run would
    zero_state_is_fresh: bool = True


def _sgd(params: Iterable, lr: Any, c: Config, device: torch.device) -> torch.optim.Optimizer:
    import torch

    fused = True if device.type == "cuda" else None  # fused reads a device learning rate; else torch's default
    return torch.optim.SGD(
        params, lr=lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay, dampening=0, fused=fused
    )


def _adamw(params: Iterable, lr: Any, c: Config, device: torch.device) -> torch.optim.Optimizer:
    import torch

    # capturable keeps Adam's step count on the device: no host read inside a CUDA graph
    return torch.optim.AdamW(params, lr=lr, weight_decay=c.weight_decay, fused=True, capturable=device.type == "cuda")


OPTIMIZERS: dict[str, Optimizer] = {
    # the paper's: Nesterov momentum 0.9, weight decay 1e-4 (datasets.toml's recipes)
    "sgd": Optimizer(_sgd),
    # decoupled weight decay (Loshchilov & Hutter 2019), timm's usual settings for it
    "adamw": Optimizer(_adamw, defaults={"lr": 1e-3, "weight_decay": 0.05}),
}


class Rate:
    """The learning rate the steps read, set before each step: on CUDA a device tensor filled in
    place, elsewhere the number in each parameter group."""

    def __init__(self, value: float, device: torch.device) -> None:
        import torch

        self.tensor = torch.tensor(value, dtype=torch.float32, device=device) if device.type == "cuda" else None
        self.value = value
        self.groups: list[dict[str, Any]] = []

    @property
    def initial(self) -> Any:
        return self.tensor if self.tensor is not None else self.value

    def set(self, value: float, force: bool = False) -> None:
        if value == self.value and not force:  # on CUDA a kernel saved each step
            return
        self.value = value
        if self.tensor is not None:
            self.tensor.fill_(value)  # a kernel: no wait, and the graph reads the new value
        else:
            for group in self.groups:
                group["lr"] = value


def build(params: Iterable, config: Config, device: torch.device) -> tuple[torch.optim.Optimizer, Rate]:
    """The configured optimizer and the learning rate its steps read."""
    rate = Rate(config.lr, device)
    optimizer = OPTIMIZERS[config.optimizer].build(params, rate.initial, config, device)
    rate.groups = optimizer.param_groups
    return optimizer, rate


def state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with its learning rate as a number: a checkpoint holds no device tensor
    that only this run's graphs know."""
    import torch

    state = optimizer.state_dict()
    for group in state["param_groups"]:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
    return state


def load_state_dict(optimizer: torch.optim.Optimizer, state: dict[str, Any], rate: Rate) -> None:
    """Restore the state, keeping this run's settings (the kernels, the configured hyperparameters:
    load_state_dict would put the saved ones back) and `rate` as the learning rate the steps read."""
    settings = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)
        group["lr"] = rate.initial
    rate.groups = optimizer.param_groups
    rate.set(float(state["param_groups"][0]["lr"]), force=True)  # the schedule's, where the run stopped


def lr_at(config: Config, epoch: int, step: int, steps: int) -> float:
    """Step: divide by 1/gamma at each milestone (fractions of the epochs); cosine: per iteration."""
    if config.schedule == "cosine":
        t, total = epoch * steps + step, config.epochs * steps
        return 0.5 * config.lr * (1 + math.cos(math.pi * t / total))
    # the authors' Lua code: decay once the 1-based epoch reaches each milestone (epoch 150 of 300)
    passed = sum(epoch + 1 >= round(m * config.epochs, 6) for m in config.milestones)
    return config.lr * config.gamma**passed
