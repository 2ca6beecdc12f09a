"""A run's configuration: its fields, the device's defaults, how the recipe and the flags resolve
into it, and what the flags alone rule out. Free of torch at import: the command line reads the
choices (compile modes, optimizers) and Config's fields from here to build its flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from . import optim
from .datasets import DEFAULT_WORKERS, dataset

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OWN_GRAPHS = ("reduce-overhead", "max-autotune")  # torch.compile modes that capture CUDA graphs themselves
PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}  # --precision: autocast's torch dtype


class TrainingError(Exception):
    """Training cannot go on (a non-finite loss, a checkpoint that does not fit): says what to do."""


class UsageError(TrainingError):
    """Flags that cannot work together: a usage mistake (exit 2), found before any work is done."""


@dataclass
class Config:
    """Everything a run depends on, resolved from the dataset's recipe, the device and the flags."""

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
    optimizer: str = "sgd"  # runtime.optim.OPTIMIZERS
    seed: int = 0
    deterministic: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    compile: str | None = None  # a torch.compile mode, or None: eager
    cuda_graphs: bool | None = None  # None: on CUDA wherever they apply, saying where not (stays None: a
    # resumed run decides again on the device it resumes on)
    ema: float | None = None  # the decay of an average of the weights (runtime.ema)
    memory: str | None = None  # None: the spec's `memory` setting, else naive
    sync_bn: bool = False  # batch statistics over all ranks (CUDA, data parallel)
    checkpoint_every: float = 0.0  # minutes; 0: only at the end of each epoch
    keep: int = 3
    extra_data: bool = False  # SVHN: train + extra, as the paper
    validation: int = 0  # training images held out for model selection (SVHN: 6,000)
    workers: int | None = None  # data-loading processes for image folders (resolved: up to 8)
    decode: str = "workers"  # image folders' training images: decoded in the workers, or on the device
    accumulate: int = 1  # micro-batches per step, gradients summed: the batch's memory / accumulate
    max_steps: int | None = None  # stop (saving) after this many steps of one invocation


# Device defaults by input size, as measured (docs/performance.md): the largest input (positions per
# sample) each row covers. CUDA: an H100, eager, bench/speed.py: BC-100-12 at batch 64 of 32x32 ran
# 0.0308 s/iter in fp32 NCHW and 0.0376 in bf16 + channels_last (launch-bound); densenet121 at batch
# 256 of 224x224 ran 1.79x faster in bf16 + channels_last than fp32. CPU: channels_last 1.19x for
# the main job on 2 cores; bf16 stays opt-in (CPUs without AMX emulate it slowly).
# Image files: a CPU core decodes and transforms about 230 ImageNet JPEGs a second (bench/decode.py),
# too few for a GPU; on CUDA they are decoded on the device (nvJPEG).
CUDA_DEFAULTS: tuple[tuple[float, dict[str, Any]], ...] = (
    (64 * 64, {"precision": "fp32", "channels_last": False, "decode": "device"}),
    (math.inf, {"precision": "bf16", "channels_last": True, "decode": "device"}),
)
CPU_DEFAULTS: dict[str, Any] = {"precision": "fp32", "channels_last": True, "decode": "workers"}
DECODERS = ("workers", "device")


def device_defaults(device: str, shape: tuple[int, ...] | None) -> dict[str, Any]:
    """The precision and layout a device trains fastest in at this input shape."""
    if not _cuda(device):
        return dict(CPU_DEFAULTS)
    positions = math.prod(shape[1:]) if shape else math.inf
    return dict(next(d for limit, d in CUDA_DEFAULTS if positions <= limit))


def resolve(name: str, shape: tuple[int, ...] | None = None, **flags: Any) -> Config:
    """The recipe of dataset `name`, with the device's defaults at input `shape` and every flag that
    is not None put over it; a recipe written for another optimizer takes the chosen one's defaults."""
    ds = dataset(name)
    recipe = dict(ds.recipe)
    recipe["batch_size"] = recipe.pop("batch")
    recipe.pop("dropout", None)  # a property of the network: bound to the spec by launch.bind
    chosen = flags.get("optimizer") or recipe["optimizer"]
    if chosen not in optim.OPTIMIZERS:
        raise UsageError(f"unknown optimizer `{chosen}`: choose one of {', '.join(optim.OPTIMIZERS)}")
    if chosen != recipe["optimizer"]:
        recipe |= optim.OPTIMIZERS[chosen].defaults
    device = flags.get("device") or default_device()
    known = {f.name for f in fields(Config)}  # a checkpoint's config may hold fields of another version
    given = {k: v for k, v in flags.items() if v is not None and k in known}
    if isinstance(given.get("compile"), bool):  # checkpoints before compile modes: True or False
        given["compile"] = "default" if given["compile"] else None
    values = {**device_defaults(device, shape), "device": device, **recipe, **given}
    if values.get("workers") is None:  # image folders' DataLoader processes
        values["workers"] = DEFAULT_WORKERS
    return Config(dataset=name, **values)


def check(config: Config, processes: int) -> None:
    """What the flags alone tell: called by each process, and by `--nproc` before it starts any."""
    pieces = processes * config.accumulate
    if config.accumulate < 1 or config.batch_size < pieces:
        raise UsageError(
            f"a batch of {config.batch_size} cannot be shared by {pieces} micro-batches "
            f"({processes} process(es) x --accumulate {config.accumulate}): use a larger --batch-size"
        )
    from .tasks import TASKS

    cuda = _cuda(config.device)
    if config.sync_bn and processes > 1 and not cuda:
        raise UsageError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
    if config.augment and not TASKS[dataset(config.dataset).task].augments:
        raise UsageError(f"{config.dataset} is a segmentation dataset: its masks are not augmented yet; drop --augment")
    if config.compile is not None and config.compile not in COMPILE_MODES:
        raise UsageError(f"--compile takes a mode ({', '.join(COMPILE_MODES)}), not `{config.compile}`")
    if config.cuda_graphs:
        why = graph_refusal(config, processes)
        if not cuda:
            why = f"they are a CUDA feature and this run is on {config.device}"
        if why:
            raise UsageError(f"--cuda-graphs cannot apply: {why}")
    if config.decode not in DECODERS:
        raise UsageError(f"--decode takes {' or '.join(DECODERS)}, not `{config.decode}`")
    if config.max_steps is not None and config.max_steps < 1:
        raise UsageError(f"--max-steps takes a number of steps of at least 1, not {config.max_steps}")


def graph_refusal(config: Config, processes: int) -> str | None:
    """Why a CUDA run's training step cannot be one CUDA graph, or None: every case in one place."""
    if config.precision == "fp16":
        return "fp16's loss scaling reads the GPU after every step; bf16 needs no scaling and keeps them"
    if processes > 1:
        return "data-parallel steps are not captured (DDP's buckets); train in one process to use them"
    if config.compile in OWN_GRAPHS:
        return f"--compile {config.compile} captures CUDA graphs of its own; --compile default combines with them"
    if not optim.OPTIMIZERS[config.optimizer].zero_state_is_fresh:
        return "this optimizer's first step differs from its later ones, so a captured step cannot start a run"
    return None


def default_device() -> str:
    """CUDA when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cuda(device: str) -> bool:
    return device.split(":")[0] == "cuda"
