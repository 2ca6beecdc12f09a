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


class DenseBlock(nn.ModuleDict):
    """Feeds every layer the feature maps of all earlier layers; returns their concatenation."""

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


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
