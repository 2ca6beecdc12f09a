"""Convert a trained CondenseNet to its inference form (Huang et al. 2018): each learned group convolution
becomes an index-select of the inputs its groups kept, a batch norm of them, a group convolution and a
channel shuffle back to the trained order; the classifier reads the half of the features that matter most.

The training form's network and the converted one come from one family (`converted = true`): their
modules pair up in order, a LearnedGroupConv with a Select, a norm, an activation, a conv and a shuffle.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .modules import NORMS, LearnedGroupConv, Select


class ConversionError(Exception):
    """The two networks are not a CondenseNet's training and converted forms: says where they part."""


def _norm_before(trained: nn.Module, lgc: LearnedGroupConv) -> nn.Module:
    """The batch norm that feeds a learned group conv in its layer (norm, act, lgconv)."""
    names = {id(m): n for n, m in trained.named_modules()}
    path = names[id(lgc)].rsplit(".", 1)
    parent = trained.get_submodule(path[0]) if len(path) == 2 else trained
    children = list(parent.children())
    before = [m for m in children[: children.index(lgc)] if isinstance(m, NORMS)]
    if not before:
        raise ConversionError(f"`{names[id(lgc)]}` has no norm before it to carry over")
    return before[-1]


def _after(converted: nn.Module, select: Select) -> tuple[nn.Module, nn.Module]:
    """The norm and the conv that follow a Select in its layer (select, norm, act, conv, shuffle)."""
    names = {id(m): n for n, m in converted.named_modules()}
    path = names[id(select)].rsplit(".", 1)
    parent = converted.get_submodule(path[0]) if len(path) == 2 else converted
    children = list(parent.children())
    rest = children[children.index(select) + 1 :]
    norm = next((m for m in rest if isinstance(m, NORMS)), None)
    conv = next((m for m in rest if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)), None)
    if norm is None or conv is None:
        raise ConversionError(f"`{names[id(select)]}` is not followed by a norm and a conv")
    return norm, conv


def _copy_norm(target: nn.Module, source: nn.Module, index: Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        t, s = getattr(target, name, None), getattr(source, name, None)
        if t is not None and s is not None:
            t.copy_(s[index])
    if getattr(target, "num_batches_tracked", None) is not None:
        target.num_batches_tracked.copy_(source.num_batches_tracked)


@torch.no_grad()
def convert(trained: nn.Module, converted: nn.Module) -> nn.Module:
    """Fill `converted` (the inference form) from `trained` (the training form, fully condensed)."""
    lgcs = [m for m in trained.modules() if isinstance(m, LearnedGroupConv)]
    selects = [m for m in converted.modules() if isinstance(m, Select)]
    head = selects[len(lgcs) :]  # the classifier's selection comes last
    if len(selects) - len(head) != len(lgcs) or len(head) > 1:
        raise ConversionError(
            f"the trained network has {len(lgcs)} learned group convolutions, the converted one "
            f"{len(selects)} selections: they are not two forms of one CondenseNet"
        )
    done: set[int] = {id(m) for lgc in lgcs for m in lgc.modules()} | {id(_norm_before(trained, x)) for x in lgcs}
    for lgc, select in zip(lgcs, selects, strict=False):
        norm, conv = _after(converted, select)
        if lgc.stage.item() < lgc.condense - 1:
            raise ConversionError(
                f"a learned group convolution is at stage {lgc.stage.item()} of {lgc.condense - 1}: condense "
                "fully first (train at least half of the epochs)"
            )
        g, out = lgc.groups, lgc.weight.shape[0]
        kept = [lgc.mask[i].flatten(1).any(1).nonzero().flatten() for i in range(g)]
        if len({len(k) for k in kept}) != 1 or conv.groups != g or len(select.index) != sum(len(k) for k in kept):
            raise ConversionError("the converted layer does not match the condensed groups")
        select.index.copy_(torch.cat(kept))
        _copy_norm(norm, _norm_before(trained, lgc), select.index)
        for i in range(g):  # group i's outputs (i, i + G, ...) become the contiguous block i of the group conv
            conv.weight[i * (out // g) : (i + 1) * (out // g)] = lgc.weight[i::g][:, kept[i]]
        done |= {id(select), id(norm), id(conv)}
    if head:  # the classifier keeps the features with the largest summed |weight|, in ascending order
        old = trained.classifier
        new = converted.classifier
        index = old.weight.abs().sum(0).sort().indices[-len(head[0].index) :]
        head[0].index.copy_(index)
        new.weight.copy_(old.weight[:, index])
        new.bias.copy_(old.bias)
        done |= {id(head[0]), id(new), id(old)}
    _copy_rest(trained, converted, done)
    return converted


def _copy_rest(trained: nn.Module, converted: nn.Module, done: set[int]) -> None:
    """Every other module's parameters and buffers, in order: the two forms agree on them."""
    rest_a = [m for m in trained.modules() if id(m) not in done and (m._parameters or m._buffers)]
    rest_b = [m for m in converted.modules() if id(m) not in done and (m._parameters or m._buffers)]
    if len(rest_a) != len(rest_b):
        raise ConversionError(f"the networks differ beyond their condensed layers ({len(rest_a)} vs {len(rest_b)})")
    for a, b in zip(rest_a, rest_b, strict=True):
        state = a.state_dict()
        if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in b.state_dict().items()}:
            raise ConversionError(f"{type(a).__name__} and {type(b).__name__} differ in their weights' shapes")
        b.load_state_dict(state)
