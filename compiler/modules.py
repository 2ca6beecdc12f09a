"""The PyTorch building blocks that emitted networks are made of, named as in the paper.

Dimension-agnostic: the emitter picks Conv1d/2d/3d and friends; these only wire them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
        """The layer's ops grouped as norm, relu, conv and an optional dropout."""
        ops = list(self.children())
        out: list[Stage] = []
        while ops:
            norm, relu, conv, *ops = ops
            drop = ops.pop(0) if ops and isinstance(ops[0], nn.Dropout) else None
            out.append(Stage(norm, relu, conv, drop))
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
    the block's input when `concat_input` is off, as FC-DenseNet's up path has it)."""

    concat_input = True

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features if self.concat_input else features[1:], 1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv(1x1, floor(θ·C))-AvgPool(2): compresses and downsamples between blocks."""


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019): reflect padding, a fixed binomial blur of each channel,
    subsampling; as timm's BlurPool2d, in any number of dimensions. The filter is not a parameter."""

    def __init__(self, channels: int, kernel: int = 3, stride: int = 2, rank: int = 2) -> None:
        super().__init__()
        self.channels, self.stride, self.rank = channels, stride, rank
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
        x = self.conv(x)
        starts = [(a - b) // 2 for a, b in zip(x.shape[2:], skip.shape[2:], strict=True)]
        x = x[(..., *(slice(s, s + n) for s, n in zip(starts, skip.shape[2:], strict=True)))]
        return torch.cat([x, skip], 1)


class Features(nn.Sequential):
    """The network's parts in order. Where the spec keeps feature maps (`keep`) and joins them again
    (`transition_up`), it remembers them by name: the skip connections of a U-shaped network."""

    def __init__(self) -> None:
        super().__init__()
        self.keeps: dict[str, list[str]] = {}  # part -> names its output is kept under ("" : the input)
        self.joins: dict[str, str] = {}  # part -> the kept maps it takes as its second input

    def forward(self, x: Tensor) -> Tensor:
        if not self.joins:
            return super().forward(x)
        kept = dict.fromkeys(self.keeps.get("", []), x)
        for name, module in self.named_children():
            x = module(x, kept[self.joins[name]]) if name in self.joins else module(x)
            for key in self.keeps.get(name, []):
                kept[key] = x
        return x


class GlobalAvgPool(nn.Module):
    """Average over every spatial dimension, whatever their number: (N, C, *S) -> (N, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=tuple(range(2, x.dim())))


class DenseNet(nn.Module):
    """`features` (stem, dense blocks, transitions, final norm and pooling), then `classifier`."""

    def __init__(self, features: nn.Sequential, classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(x) if self.classifier is not None else x


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
