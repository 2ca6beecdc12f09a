"""The PyTorch building blocks that emitted networks are made of, named as in the paper.

Dimension-agnostic: the emitter picks Conv1d/2d/3d and friends; these only wire them. A block that
takes constructor arguments keeps each under its own name, so that `--emit python` (compiler/source.py),
which copies these classes, writes the call that made it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


class Stage(NamedTuple):
    """One BN-ReLU-Conv(-Dropout) step of a dense layer: a layer has one, or two with a bottleneck."""

    norm: nn.Module
    relu: nn.Module
    conv: nn.Module
    dropout: nn.Module | None


class DenseLayer(nn.Module):
    """H_l: BN-ReLU-Conv(1x1, bottleneck·k)-BN-ReLU-Conv(3x3, k) over the concatenated earlier features."""

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        for op in self.children():
            x = op(x)
        return x

    def stages(self) -> list[Stage]:
        """The layer's ops by name: norm1, relu1, conv1 and drop1 if there is one, then norm2, ..."""
        out: list[Stage] = []
        get = self._modules.get
        while f"norm{len(out) + 1}" in self._modules:
            i = len(out) + 1
            out.append(Stage(get(f"norm{i}"), get(f"relu{i}"), get(f"conv{i}"), get(f"drop{i}")))
        return out


class TwoWayDenseLayer(nn.Module):
    """PeleeNet's dense layer: a 1x1-3x3 branch and a 1x1-3x3-3x3 branch, each Conv-BN-activation
    (`branch1a` ... `branch2c`), of growth/2 new maps each, over the earlier features' concatenation."""

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        return torch.cat([self.branch1b(self.branch1a(x)), self.branch2c(self.branch2b(self.branch2a(x)))], 1)


class StemBlock(nn.Module):
    """PeleeNet's stem block: `stem1` (3x3/2); `pool` (2x2/2) beside `stem2a` (1x1) and `stem2b` (3x3/2);
    their concatenation through `stem3` (1x1). Each stem conv is Conv-BN-activation."""

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem1(x)
        return self.stem3(torch.cat([self.pool(x), self.stem2b(self.stem2a(x))], 1))


class DenseBlock(nn.ModuleDict):
    """Feeds every layer the feature maps of all earlier layers; returns their concatenation (without
    the block's input when `concat_input` is off, as FC-DenseNet's up path has it).

    Other connectivities set `links` (the features each layer reads, 0 the block's input) and `outputs`
    (those the block returns); CSPNet's `bypass` channels go round the layers, a `fuse` child runs on the
    output and `residual` adds the block's input: see compiler/graph.py, which decides them."""

    concat_input = True
    links: list[list[int]] | None = None
    outputs: list[int] | None = None
    bypass = 0
    residual = False
    dual = 0  # DPN: the channels of each layer's output that join the residual path
    grad_checkpointing = False  # timm's switch (DenseNet.set_grad_checkpointing): each layer recomputed

    def layers(self) -> list[nn.Module]:
        return [m for name, m in self.items() if name not in ("fuse", "entry")]

    def forward(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not tracing(x):
            return self.connected(x, checkpointed_layer)
        if self.links is None:
            features = [x]
            for layer in self.values():
                features.append(layer(features))
            return torch.cat(features if self.concat_input else features[1:], 1)
        return self.connected(x, lambda layer, inputs: layer(inputs))

    def connected(self, x: Tensor, run: Callable[[nn.Module, list[Tensor]], Tensor]) -> Tensor:
        """The block as `links` and `outputs` say (every earlier layer, by default), each layer run on its
        inputs by `run`."""
        if self.dual:
            return self.dual_path(x, run)
        entry = x
        skip, x = (x[:, : self.bypass], x[:, self.bypass :]) if self.bypass else (None, x)
        layers = self.layers()
        every = [list(range(i + 1)) for i in range(len(layers))]
        features = [x]
        for layer, links in zip(layers, self.links or every, strict=True):
            features.append(run(layer, [features[j] for j in links]))
        outputs = self.outputs if self.outputs is not None else range(0 if self.concat_input else 1, len(features))
        out = [features[j] for j in outputs]
        x = torch.cat(out if skip is None else [skip, *out], 1)
        return self.finish(x, entry)

    def finish(self, x: Tensor, entry: Tensor) -> Tensor:
        if "fuse" in self:
            x = self["fuse"](x)
        return x + entry if self.residual else x

    def dual_path(self, x: Tensor, run: Callable[[nn.Module, list[Tensor]], Tensor]) -> Tensor:
        """DPN's dual path: the `entry` layer's first `dual` channels start the residual, the rest the
        dense path; each layer reads both (the first, the block's input), adds its first `dual`
        channels to the residual and appends the rest."""
        r, start = self.dual, self["entry"](x)
        residual, dense, inputs = start[:, :r], [start[:, r:]], [x]
        for layer in self.layers():
            out = run(layer, inputs)
            residual = residual + out[:, :r]
            dense.append(out[:, r:])
            inputs = [residual, *dense]
        return self.finish(torch.cat(inputs, 1), x)


class Layer(nn.Sequential):
    """A dense layer of the spec's own (`layer NAME { ... }`): its ops in order over the concatenation
    of the features it reads."""

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[0] if len(features) == 1 else torch.cat(features, 1)
        return super().forward(x)


class Composite(nn.Sequential):
    """A layer of the spec's own used in a stem, the body or another layer: its ops in order."""


class Branches(nn.ModuleDict):
    """Parallel branches over one input (an empty one passes it through), concatenated or added."""

    join = "concat"

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.values()]
        return torch.cat(outs, 1) if self.join == "concat" else sum(outs[1:], outs[0])


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): scale each channel by a gate computed from the pooled maps,
    global pool -> 1x1 conv (`fc1`) -> ReLU -> 1x1 conv (`fc2`) -> sigmoid."""

    def __init__(self, channels: int, width: int, rank: int = 2) -> None:
        super().__init__()
        self.channels, self.width, self.rank = channels, width, rank
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1]
        self.fc1, self.act, self.fc2 = conv(channels, width, 1), nn.ReLU(inplace=True), conv(width, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(2).mean(2)[(..., *(None,) * self.rank)]
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class EffectiveSqueezeExcite(nn.Module):
    """VoVNet-v2's eSE (Lee and Park 2020): one 1x1 conv (`fc`) of the pooled maps, a hard sigmoid gate."""

    def __init__(self, channels: int, rank: int = 2) -> None:
        super().__init__()
        self.channels, self.rank = channels, rank
        self.fc = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1](channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(2).mean(2)[(..., *(None,) * self.rank)]
        return x * F.hardsigmoid(self.fc(s))


class Transition(nn.Sequential):
    """BN-ReLU-Conv(1x1, floor(θ·C))-AvgPool(2): compresses and downsamples between blocks."""


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019): reflect padding, a fixed binomial blur of each channel,
    subsampling; as timm's BlurPool2d, in any number of dimensions. The filter is not a parameter."""

    def __init__(self, channels: int, kernel: int = 3, stride: int = 2, rank: int = 2) -> None:
        super().__init__()
        self.channels, self.kernel, self.stride, self.rank = channels, kernel, stride, rank
        self.padding = ((stride - 1) + (kernel - 1)) // 2
        taps = torch.tensor([math.comb(kernel - 1, k) for k in range(kernel)], dtype=torch.float32)
        filt = taps
        for _ in range(rank - 1):
            filt = filt.unsqueeze(-1) * taps
        filt = (filt / filt.sum()).expand(channels, 1, *filt.shape).contiguous()
        self.register_buffer("filt", filt, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, [self.padding] * (2 * self.rank), mode="reflect")
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.rank - 1]
        return conv(x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels)


class TransitionUp(nn.Module):
    """FC-DenseNet's transition up: transposed convolution, centre crop to the skip's size, concatenation."""

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return torch.cat([centre_crop(self.conv(x), skip), skip], 1)


def centre_crop(x: Tensor, like: Tensor) -> Tensor:
    """The centre of `x` at the spatial size of `like` (one call in a torch.fx graph: sizes are not traced)."""
    starts = [(a - b) // 2 for a, b in zip(x.shape[2:], like.shape[2:], strict=True)]
    return x[(..., *(slice(s, s + n) for s, n in zip(starts, like.shape[2:], strict=True)))]


torch.fx.wrap("centre_crop")


@contextlib.contextmanager
def frozen_statistics(module: nn.Module) -> Iterator[None]:
    """Batch norms inside `module` normalise as in training but leave their running statistics (and
    count) as they are: for a recomputation of what the forward pass already accounted for."""
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def checkpointed_layer(layer: nn.Module, inputs: list[Tensor]) -> Tensor:
    """A layer of any kind kept as its inputs alone: recomputed in the backward pass, its batch norms'
    statistics counted once, its dropout masks drawn again from the saved RNG state."""
    fresh = [True]

    def segment(*xs: Tensor) -> Tensor:
        with contextlib.nullcontext() if fresh[0] else frozen_statistics(layer):
            out = layer(list(xs))
        fresh[0] = False
        return out

    drops = any(isinstance(m, nn.Dropout) and m.p > 0 for m in layer.modules())
    return checkpoint(segment, *inputs, use_reentrant=False, preserve_rng_state=drops)


def tracing(x: Tensor) -> bool:
    """Whether torch.fx is tracing: a lowered dense block then traces as the naive one (the same function
    and names; the graph is for inspection and feature extraction, not for the lowering's backward pass)."""
    return isinstance(x, torch.fx.Proxy)


class Features(nn.Sequential):
    """The network's parts in order. Where the spec keeps feature maps (`keep`) and joins them again
    (`transition_up`), it remembers them by name: the skip connections of a U-shaped network."""

    def __init__(self) -> None:
        super().__init__()
        self.keeps: dict[str, list[str]] = {}  # part -> names its output is kept under ("" : the input)
        self.joins: dict[str, str] = {}  # part -> the kept maps it takes as its second input
        self.taps: dict[str, list[int]] = {}  # part -> the exits that read its output

    def forward(self, x: Tensor) -> Tensor:
        if not self.joins and not self.taps:
            return super().forward(x)
        return self.walk(x)

    def walk(
        self, x: Tensor, tap: Callable[[int, Any], None] | None = None, taps: dict[str, list[int]] | None = None
    ) -> Tensor:
        """The parts in order, calling `tap(i, maps)` where the i-th reader of `taps` (the exits, by
        default) reads the maps."""
        taps = self.taps if taps is None else taps
        kept = dict.fromkeys(self.keeps.get("", []), x)
        for e in taps.get("", []) if tap else ():
            tap(e, x)
        for name, module in self.named_children():
            x = module(x, kept[self.joins[name]]) if name in self.joins else module(x)
            for key in self.keeps.get(name, []):
                kept[key] = x
            for e in taps.get(name, []) if tap else ():
                tap(e, x)
        return x


class FeatureMaps(nn.Module):
    """A backbone (timm's `features_only`): the feature maps of `features` at the taps of
    `feature_info` (compiler/taps.py), as a list, finest first."""

    def __init__(self, features: Features, feature_info: list[dict[str, Any]]) -> None:
        super().__init__()
        self.features = features
        self.feature_info = feature_info
        self.parts = {t["module"].split(".", 1)[1]: [i] for i, t in enumerate(feature_info)}

    def forward(self, x: Tensor) -> list[Tensor]:
        out: list[Tensor] = []
        self.features.walk(x, lambda i, maps: out.append(maps[-1] if isinstance(maps, list) else maps), self.parts)
        return out


class MultiScaleStem(nn.ModuleDict):
    """MSDNet's first column: the input is the finest scale, each `scaleS` makes the next coarser one."""

    def forward(self, x: Tensor) -> list[Tensor]:
        grid = [x]
        for module in self.values():
            grid.append(module(grid[-1]))
        return grid


class ScaleLayer(nn.ModuleDict):
    """One scale of an MSDNet layer: its input, a conv of it (`normal`) and a stride-2 conv of the next
    finer scale (`down`, where there is one), concatenated."""

    def forward(self, finer: Tensor | None, x: Tensor) -> Tensor:
        new = [x, self["down"](finer)] if "down" in self else [x]
        return torch.cat([*new, self["normal"](x)], 1)


class MultiScaleLayer(nn.ModuleDict):
    """An MSDNet layer over the grid of scales, one ScaleLayer per scale it keeps: where it drops the
    finest, the first kept scale reads the dropped one as its finer input."""

    def forward(self, grid: list[Tensor]) -> list[Tensor]:
        dropped = len(grid) - len(self)
        return [
            module(grid[k + dropped - 1] if k + dropped else None, grid[k + dropped])
            for k, module in enumerate(self.values())
        ]


class ParallelScales(nn.ModuleDict):
    """A module per scale, each on its own maps (MSDNet's transitions)."""

    def forward(self, grid: list[Tensor]) -> list[Tensor]:
        return [module(x) for module, x in zip(self.values(), grid, strict=True)]


class Coarsest(nn.Module):
    """The coarsest scale of a grid: what the head of a multi-scale network reads."""

    def forward(self, grid: list[Tensor]) -> Tensor:
        return grid[-1]


class LearnedGroupConv(nn.Module):
    """CondenseNet's learned group convolution in its training form (Huang et al. 2018): a 1x1 conv whose
    weight is masked. Output o is in group o mod G; `schedule(progress)` prunes 1/C of each group's inputs
    (the weakest by L1 norm) at each of C - 1 stages in the first half of training, and `penalty()` is
    its group lasso. The trainer calls both; compiler/condense.py converts it to a group conv."""

    def __init__(
        self, in_channels: int, out_channels: int, groups: int, condense: int, lasso: float = 0.0, rank: int = 2
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.condense, self.lasso, self.rank = groups, condense, lasso, rank
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *(1,) * rank))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.register_buffer("mask", torch.ones_like(self.weight))
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))
        self._stage: int | None = None  # the buffer's value on the host, read once

    def forward(self, x: Tensor) -> Tensor:
        return (F.conv1d, F.conv2d, F.conv3d)[self.rank - 1](x, self.weight * self.mask.to(self.weight.dtype))

    def schedule(self, progress: float) -> None:
        """Reach the stage that the progress of training (0 to 1) calls for: stage i once 2·progress >=
        i / (C - 1), so that condensing ends halfway; each stage reached prunes once."""
        target = next(
            (i for i in range(self.condense - 1) if 2 * progress < (i + 1) / (self.condense - 1)), self.condense - 1
        )
        if self._stage is None:
            self._stage = int(self.stage)
        with torch.no_grad():
            while self._stage < target:
                self._prune(self.weight.shape[1] // self.condense)
                self._stage += 1
                self.stage.fill_(self._stage)

    def _prune(self, delta: int) -> None:
        """Zero the `delta` weakest inputs still read by each group (L1 norm over the group's outputs)."""
        strength = (self.weight * self.mask).abs().flatten(2).sum(2)
        for g in range(self.groups):
            dropped = int((self.mask[g].flatten() == 0).sum())
            order = strength[g :: self.groups].sum(0).sort(stable=True).indices
            self.mask[g :: self.groups, order[dropped : dropped + delta]] = 0

    def penalty(self) -> Tensor:
        """λ · Σ over groups and inputs of the L2 norm of the group's weights on that input, until the
        last stage but one (device ops only: a CUDA graph holds it)."""
        out, inputs = self.weight.shape[:2]
        w = (self.weight * self.mask).flatten(1).pow(2).view(out // self.groups, self.groups, inputs).sum(0)
        active = (self.stage < self.groups - 1).to(w.dtype)
        return self.lasso * active * w.clamp_min(1e-6).sqrt().sum()

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]
        self._stage = None  # read the loaded stage again


class Select(nn.Module):
    """An index-select of channels (CondenseNet's converted layers): the `index` buffer, set by the
    conversion, says which input channels in which order."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.in_channels, self.channels = in_channels, channels
        self.register_buffer("index", torch.arange(channels) % in_channels)

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.index)


class GlobalAvgPool(nn.Module):
    """Average over every spatial dimension, whatever their number: (N, C, *S) -> (N, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).mean(2)


class DenseNet(nn.Module):
    """`features` (stem, dense blocks, transitions, the last norm) returns the last feature maps, as
    torchvision's does; `head` (the activation and pooling, no weights) and `classifier` follow. With
    early classifiers (`exits`), every exit's scores and the head's, stacked: (exits + 1, N, classes).
    timm's model API on top: forward_features, forward_head, get_classifier, reset_classifier,
    set_grad_checkpointing."""

    def __init__(
        self,
        features: nn.Sequential,
        head: nn.Sequential | None = None,
        classifier: nn.Module | None = None,
        exits: nn.ModuleList | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head if head is not None else nn.Sequential()
        self.classifier = classifier
        self.exits = exits

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature maps, (N, C, *S)."""
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Scores from the last feature maps; with `pre_logits`, the pooled features the classifier reads."""
        x = self.head(x)
        return x if pre_logits or self.classifier is None else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.exits is None:
            return self.forward_head(self.features(x))
        scores: list[Tensor] = []

        def tap(e: int, maps: Tensor | list[Tensor]) -> None:
            scores.append(self.exits[e](maps[-1] if isinstance(maps, list) else maps))

        scores.append(self.forward_head(self.features.walk(x, tap)))
        return torch.stack(scores)

    def _repr_html_(self) -> str | None:
        """In a notebook, a compiled network shows its graph's diagram and table (the standalone
        source's network, which has no graph, shows as any module)."""
        graph = self.__dict__.get("graph_ir")
        return graph._repr_html_() if graph is not None else None

    def get_classifier(self) -> nn.Module | None:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier (and exits' classifiers) of `num_classes` outputs; 0 leaves the pooled features."""
        holders = [self, *(self.exits or [])]
        for holder in holders:
            old = holder.classifier
            if old is None:
                continue
            if num_classes == 0:
                holder.classifier = nn.Identity()
            elif isinstance(old, nn.Linear):
                holder.classifier = nn.Linear(old.in_features, num_classes, **_like(old.weight))
            else:  # scores at every position: a 1x1 convolution
                holder.classifier = type(old)(old.in_channels, num_classes, 1, **_like(old.weight))
            initialise(holder.classifier)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each dense layer in the backward pass (as the checkpoint lowering does) or not."""
        for m in self.modules():
            if isinstance(m, DenseBlock):
                m.grad_checkpointing = enable


def _like(t: Tensor) -> dict[str, Any]:
    return {"device": t.device, "dtype": t.dtype}


NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def initialise(module: nn.Module) -> None:
    """The paper's initialisation: conv ~ N(0, sqrt(2 / (k·k·out))), BN weight 1 bias 0, Linear bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, NORMS) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
