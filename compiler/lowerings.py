"""How the compiler may lower a dense block: one record per lowering, read by every stage that cares.

The language validates `memory NAME` against these names, `--memory` offers them, the emitter takes
the block class from here, the estimator its rules, `--emit python` its standalone mapping, the
trainer its constraints and `auto` its speed rank. Adding a lowering is one record here, its block
class, and tests. No torch here: the language and the estimator read it without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

# What a lowering holds for the backward pass, as the estimator (compiler/estimate.py) counts it:
# every op's saved tensors; the layers' inputs (checkpointed segments); or the block's buffer and each
# layer's later-stage inputs (the buffer lowerings).
Keeps = Literal["all", "inputs", "buffer"]


@dataclass(frozen=True)
class Lowering:
    name: str
    summary: str  # one line for --help and the docs
    block: str  # "module:Class" of its dense block, imported when a network is emitted
    keeps: Keeps
    # the backward pass's scratch at a dense block, in elements: (per element of the block's output,
    # per element of its last layer's input), measured against max_memory_allocated and RSS
    scratch: tuple[float, float]
    dropout_masks: bool  # keeps each dropout's mask for backward rather than drawing it again
    memory_efficient: bool  # `--emit python` turns the standalone source's checkpointing on by default
    sync_bn: bool  # its batch norms stay modules that SyncBatchNorm can take over
    # `auto` tries the lowerings by this rank on each kind of device, lowest first, and takes the first
    # whose estimated step fits (docs/performance.md has the measurements behind it)
    speed: dict[str, int]
    # what it covers: the dense layers' norms and activations (None: any) and PeleeNet's two-way layers;
    # a block outside them runs `falls_back` (said once by --summary)
    norms: tuple[str, ...] | None = None
    activations: tuple[str, ...] | None = None
    two_way: bool = True
    falls_back: str | None = None
    # whether it lowers any block: other connectivities (harmonic, window, ...), layers of the spec's own,
    # fuse and residual; such a block gets the first lowering along `falls_back` that does, else naive
    general: bool = False

    def covers(self, norm: str, activation: str, two_way: bool) -> bool:
        """Whether a dense block of these layers is lowered as this lowering says (not as `falls_back`)."""
        return (
            (self.norms is None or norm in self.norms)
            and (self.activations is None or activation in self.activations)
            and (self.two_way or not two_way)
        )

    def for_block(self, general: bool, norm: str, activation: str, two_way: bool) -> Lowering:
        """The lowering a block actually gets: this one, or the first along `falls_back` that covers it."""
        lowering = self
        while not (lowering.general or not general) or not lowering.covers(norm, activation, two_way):
            if lowering.falls_back is None:
                return next(r for r in LOWERINGS.values() if r.general and r.falls_back is None)
            lowering = LOWERINGS[lowering.falls_back]
        return lowering

    def block_class(self) -> type:
        module, _, name = self.block.partition(":")
        return getattr(importlib.import_module(module), name)


LOWERINGS: dict[str, Lowering] = {
    lowering.name: lowering
    for lowering in (
        Lowering(
            "naive",
            "concatenate every layer's input: fast, memory quadratic in depth",
            "dnetc.compiler.modules:DenseBlock",
            keeps="all",
            scratch=(2, 2),
            dropout_masks=True,
            memory_efficient=False,
            sync_bn=True,
            speed={"cpu": 0, "cuda": 0},
            general=True,
        ),
        Lowering(
            "checkpoint",
            "recompute each layer's concat, BN, ReLU and 1x1 conv in the backward pass",
            "dnetc.compiler.memory:CheckpointDenseBlock",
            keeps="inputs",
            scratch=(2, 4),
            dropout_masks=True,
            memory_efficient=True,
            sync_bn=True,
            speed={"cpu": 3, "cuda": 3},
            general=True,  # blocks of the spec's own layers or connectivity recompute each whole layer
        ),
        Lowering(
            "shared",
            "one feature buffer per block, BN and ReLU recomputed in backward (Pleiss et al. 2017)",
            "dnetc.compiler.memory:SharedDenseBlock",
            keeps="buffer",
            scratch=(2, 5),
            dropout_masks=False,
            memory_efficient=True,
            sync_bn=False,
            speed={"cpu": 2, "cuda": 2},
            falls_back="checkpoint",  # for blocks of the spec's own layers or connectivity
        ),
        Lowering(
            "fused",
            "the shared buffer with statistics once, BN folded into the 1x1 conv's prologue, no copies",
            "dnetc.compiler.fused:FusedDenseBlock",
            keeps="buffer",
            scratch=(2, 4),
            dropout_masks=True,
            memory_efficient=True,
            sync_bn=False,
            speed={"cpu": 1, "cuda": 1},
            norms=("batch",),
            activations=("relu",),
            two_way=False,
            falls_back="shared",
        ),
    )
}
AUTO = "auto"  # the fastest lowering whose estimated step fits the device's free memory


def choices() -> tuple[str, ...]:
    """What `memory` may say: every lowering's name, and `auto` (read when asked: a record added later counts)."""
    return (*LOWERINGS, AUTO)


def by_speed(device: str) -> list[Lowering]:
    """The lowerings fastest first on a kind of device (cpu, cuda): the order in which `auto` tries them."""
    return sorted(LOWERINGS.values(), key=lambda lowering: lowering.speed.get(device, lowering.speed["cuda"]))
