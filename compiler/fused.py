"""The `fused` lowering: the shared buffer of Pleiss et al. (2017), with what a dense block's structure allows.

Three facts about a dense block make it cheaper than a chain of library ops:

- **Statistics once.** In training mode the batch mean and variance of a channel of the block's buffer
  are the same for every later layer that normalises it; only each layer's γ and β differ. They are
  computed once, when the channel is written, so the statistics work is linear in depth, not quadratic.
  Every layer's running statistics are still updated with them, exactly as its own BN module would.
- **No copies, no normalised tensors kept.** Each layer reads the buffer's prefix in place, applying its
  BN as one per-channel scale and shift and the ReLU as it loads, and writes its new channels straight
  into their slice of the buffer. Nothing is concatenated; nothing normalised is kept for backward.
- **Batch norm's backward once per channel.** Batch norm's gradient is linear in the gradient of its
  normalised output x̂, and with shared statistics every reading layer applies the same map. So each
  layer only adds γ·dy into one accumulator (dL/dx̂, summed over readers), and the map (the mean terms)
  runs once per channel, when the backward pass reaches the layer that wrote it.

The arithmetic is the same as naive's (outputs, gradients, running statistics, dropout draws), up to
rounding. Dropout masks are kept (one byte an element on CUDA), not drawn again, so that a CUDA graph
can capture the step. On CUDA the first stage's 1x1 convolution and its prologue run as Triton kernels
(compiler/kernels.py) where they measure faster than the library ops; elsewhere the same algorithm runs
in ATen ops. Blocks outside what it covers (other norms or activations, two-way layers) run `shared`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import kernels
from .memory import (
    SharedDenseBlock,
    _batch_norm,
    _bias_grad,
    _conv_backward,
    _count_batch,
    _memory_format,
    _needs_backward,
    _parameters,
    _stage_backward,
)
from .modules import DenseBlock, DenseLayer, tracing


def coverage(block: nn.Module) -> str | None:
    """Why `fused` cannot lower this block (it then runs `shared`), or None: BN-ReLU-Conv stages with
    affine batch norms of one eps, dense layers of one growth rate."""
    layers = list(block.values())
    if not layers or not all(isinstance(layer, DenseLayer) for layer in layers):
        return "the layers are not BN-ReLU-Conv dense layers"
    stages = [s for layer in layers for s in layer.stages()]
    if not all(isinstance(s.norm, _BatchNorm) and s.norm.affine for s in stages):
        return "the layers normalise with something other than an affine batch norm"
    if not all(type(s.relu) is nn.ReLU for s in stages):
        return "the layers activate with something other than ReLU"
    if len({layer.stages()[0].norm.eps for layer in layers}) > 1:
        return "the layers' batch norms differ in eps"
    if len({layer.stages()[-1].conv.out_channels for layer in layers}) > 1:
        return "the layers differ in growth rate"
    if any(s.dropout is not None and not 0 <= s.dropout.p < 1 for s in stages):
        return "a dropout rate of 1"
    return None


def _batch_statistics(norm: _BatchNorm) -> bool:
    return norm.training or norm.running_mean is None


class FusedDenseBlock(SharedDenseBlock):
    """A dense block lowered as this module's docstring says; `shared` where `coverage` says no."""

    def cuda_graph_refusal(self) -> str | None:
        """None: the masks are kept, nothing is drawn again; a block run as `shared` answers as shared does."""
        if self._covered() or super().cuda_graph_refusal() is None:
            return None
        return (
            f"{self.fallback()}, so the fused lowering runs the block as shared, which draws its dropout masks "
            "again in the backward pass from a saved RNG state; a CUDA graph cannot hold it (--memory checkpoint "
            "keeps both)"
        )

    def fallback(self) -> str | None:
        """Why this block runs `shared` instead (said once by --summary), or None."""
        if not hasattr(self, "_coverage"):
            self._coverage = coverage(self)
        return self._coverage

    def _covered(self) -> bool:
        return self.fallback() is None

    def forward(self, x: Tensor) -> Tensor:
        if tracing(x):
            return DenseBlock.forward(self, x)
        firsts = [layer.stages()[0].norm for layer in self.values()] if self._covered() else []
        modes = {_batch_statistics(n) for n in firsts}
        if len(modes) != 1:  # not covered, or layers in train and eval mode at once
            return super().forward(x)
        if _needs_backward(x, self):
            out = _FusedBlock.apply(self, x, *_parameters(self))
        else:
            with torch.no_grad():
                out = _forward(self, x, None)[0]
        return out if self.concat_input else out[:, x.shape[1] :]


class _Layer(NamedTuple):
    """What the backward pass needs of one layer beyond the buffer."""

    kept: list[Tensor]  # each later stage's input
    masks: list[Tensor | None]  # each stage's dropout mask (scaled noise on the CPU)
    stats: list[tuple[Tensor | None, Tensor | None]]  # each later stage's batch mean and 1/std


def _view(v: Tensor, like: Tensor) -> Tensor:
    """A per-channel vector shaped to broadcast over (N, C, *S)."""
    return v.view(1, -1, *[1] * (like.dim() - 2))


def _channel_statistics(h: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Batch mean and biased variance of each channel of h (ATen's batch-norm reduction: one pass,
    accumulated in float32 or wider), in `dtype`."""
    mean, var = torch.ops.aten.batch_norm_update_stats(h, None, None, 0.0)
    return mean.to(dtype), var.to(dtype)


def _no_scratch(x: Tensor) -> bool:
    """CUDA's caching allocator reuses memory by itself; torch.compile cannot trace writes into a view
    of a flat tensor (as_strided)."""
    return x.is_cuda or torch.compiler.is_compiling()


class _Scratch:
    """One allocation for every layer's prologue in a pass: large fresh CPU tensors cost a page fault
    per page each time, so the normalised input is written into the same warm memory layer after layer."""

    def __init__(self, like: Tensor, channels: int, dtype: torch.dtype) -> None:
        self.flat = like.new_empty(like.numel() // like.shape[1] * channels, dtype=dtype)
        self.fmt = _memory_format(like)

    def view(self, shape: torch.Size) -> Tensor:
        strides = torch.empty(shape, device="meta").contiguous(memory_format=self.fmt).stride()
        return self.flat[: shape.numel()].as_strided(shape, strides)


def _update_running(norm: _BatchNorm, mean: Tensor, var: Tensor, count: int) -> None:
    """What BN's forward pass does to its running statistics, from the batch's mean and biased variance."""
    if not (norm.training and norm.track_running_stats and norm.running_mean is not None):
        return
    momentum = _count_batch(norm)
    unbiased = var * (count / (count - 1))
    norm.running_mean.mul_(1 - momentum).add_(mean.to(norm.running_mean.dtype), alpha=momentum)
    norm.running_var.mul_(1 - momentum).add_(unbiased.to(norm.running_var.dtype), alpha=momentum)


def _dropout(h: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Dropout with the draws F.dropout makes, and its mask: CUDA's fused kernel (a boolean mask),
    else Bernoulli noise already scaled by 1/(1-p), as ATen draws them."""
    if h.is_cuda:
        return torch.native_dropout(h, p, True)
    noise = torch.empty_like(h).bernoulli_(1 - p).div_(1 - p)
    return h * noise, noise


def _dropout_backward(g: Tensor, mask: Tensor, p: float) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.ops.aten.native_dropout_backward(g, mask, 1.0 / (1 - p))
    return g * mask


class _Plan(NamedTuple):
    """The first stage's normalisation of one layer, as a per-channel scale and shift."""

    mean: Tensor
    invstd: Tensor
    scale: Tensor  # γ·invstd
    shift: Tensor  # β - mean·γ·invstd
    var: Tensor
    norm: _BatchNorm


def _plan(norm: _BatchNorm, mean: Tensor, var: Tensor, batch: bool) -> _Plan:
    if not batch:
        mean, var = norm.running_mean, norm.running_var
    var = var.to(mean.dtype)
    invstd = torch.rsqrt(var + norm.eps)
    scale = norm.weight.detach().to(mean.dtype) * invstd
    return _Plan(mean, invstd, scale, norm.bias.detach().to(mean.dtype) - mean * scale, var, norm)


def _prologue(src: Tensor, plan: _Plan, scratch: _Scratch | None) -> Tensor:
    """relu(BN(src)) in src's dtype, read in place from the buffer's prefix: scratch, never kept.
    In half precision as naive's BN computes it (in float32 from float32 statistics, the output
    rounded once); in float32 and float64 as one multiply-add with the folded scale and shift."""
    if src.dtype.itemsize < 4:
        norm = plan.norm
        weight, bias = norm.weight.detach(), norm.bias.detach()
        t = torch.ops.aten.native_batch_norm(src, weight, bias, plan.mean, plan.var, False, 0.0, norm.eps)[0]
        return t.relu_()
    shift, scale = _view(plan.shift.to(src.dtype), src), _view(plan.scale.to(src.dtype), src)
    if scratch is None or src.dtype != scratch.flat.dtype:
        return torch.addcmul(shift, src, scale).relu_()
    return torch.addcmul(shift, src, scale, out=scratch.view(src.shape)).relu_()


def _first_conv(conv: nn.Module, src: Tensor, plan: _Plan, scratch: _Scratch | None) -> Tensor:
    """conv(relu(BN(src))): one Triton kernel with the normalisation in its prologue where that is
    faster (CUDA, channels_last, a 1x1 convolution), else the prologue's scratch and the library conv."""
    fused = lambda: kernels.prologue_conv(src, plan.scale, plan.shift, conv.weight)  # noqa: E731
    library = lambda: conv(_prologue(src, plan, scratch))  # noqa: E731
    dtype = kernels.compute_dtype(conv.weight, src)
    if kernels.supported(conv, src) and kernels.choose(
        kernels.key("forward", conv, src, dtype), lambda: (fused, library)
    ):
        return fused()
    return library()


def _forward(block: FusedDenseBlock, x: Tensor, record: list[_Layer] | None) -> tuple[Tensor, Tensor, Tensor]:
    """Run the block, writing each layer's new channels into one buffer; `record` keeps what backward
    needs. Returns the buffer and each of its channels' batch mean and biased variance."""
    layers = list(block.values())
    batch = _batch_statistics(layers[0].stages()[0].norm)
    growth = layers[0].stages()[-1].conv.out_channels
    c0, total = x.shape[1], x.shape[1] + len(layers) * growth
    count = x.numel() // c0
    if batch and block.training:
        F._verify_batch_size(x.size())
    stat_dtype = torch.promote_types(x.dtype, torch.float32)
    mean = x.new_zeros(total, dtype=stat_dtype)
    var = x.new_ones(total, dtype=stat_dtype)
    if batch:
        mean[:c0], var[:c0] = _channel_statistics(x, stat_dtype)
    buffer: Tensor | None = None
    scratch = None if _no_scratch(x) else _Scratch(x, total - growth, x.dtype)
    position = c0
    for layer in layers:
        first, *rest = layer.stages()
        src = x if buffer is None else buffer[:, :position]
        if batch:
            _update_running(first.norm, mean[:position], var[:position], count)
        h = _first_conv(first.conv, src, _plan(first.norm, mean[:position], var[:position], batch), scratch)
        kept: list[Tensor] = []
        masks: list[Tensor | None] = []
        stats: list[tuple[Tensor | None, Tensor | None]] = []
        for s, stage in enumerate([first, *rest]):
            if s > 0:
                kept.append(h)
                if record is None:
                    h = stage.norm(h)
                    stats.append((None, None))
                else:  # the batch statistics, kept so that backward need not compute them again
                    h, m, inv = _batch_norm(stage.norm, h)
                    stats.append((m, inv))
                h = stage.conv(stage.relu(h))
            drop = stage.dropout
            if drop is not None and drop.training and drop.p > 0:
                h, mask = _dropout(h, drop.p)
                masks.append(mask)
            else:
                masks.append(None)
        if buffer is None:
            fmt = _memory_format(x)
            dtype = torch.promote_types(x.dtype, h.dtype)
            buffer = x.new_empty((x.shape[0], total, *x.shape[2:]), dtype=dtype).contiguous(memory_format=fmt)
            buffer[:, :c0] = x
            if scratch is not None and scratch.flat.dtype != dtype:
                scratch = _Scratch(x, total - growth, dtype)
        buffer[:, position : position + growth] = h
        if batch:
            mean[position : position + growth], var[position : position + growth] = _channel_statistics(h, stat_dtype)
        position += growth
        if record is not None:
            record.append(_Layer(kept, masks, stats))
    assert buffer is not None
    return buffer, mean, var


class _FusedBlock(torch.autograd.Function):
    """The whole block as one autograd node: the buffer is written in place, and backward is ours."""

    @staticmethod
    def forward(ctx: Any, block: FusedDenseBlock, x: Tensor, *params: Tensor) -> Tensor:
        record: list[_Layer] = []
        buffer, mean, var = _forward(block, x, record)
        device = x.device.type
        ctx.block, ctx.stats = block, [r.stats for r in record]
        ctx.input_channels, ctx.input_dtype = x.shape[1], x.dtype
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        # every tensor backward reads goes through save_for_backward (saved-tensor hooks see them all)
        per_layer = [[*r.kept, *[m for m in r.masks if m is not None]] for r in record]
        ctx.layout = [(len(r.kept), [m is not None for m in r.masks]) for r in record]
        ctx.save_for_backward(buffer, mean, var, *[t for tensors in per_layer for t in tensors])
        return buffer

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        buffer, mean, var, *flat = ctx.saved_tensors
        per_layer = []
        for count, present in ctx.layout:
            kept, flat = flat[:count], flat[count:]
            masks: list[Tensor | None] = []
            for has in present:
                masks.append(flat[0] if has else None)
                flat = flat[1:] if has else flat
            per_layer.append((kept, masks))
        block: FusedDenseBlock = ctx.block
        _, autocast_on, autocast_dtype = ctx.autocast
        compute_dtype = autocast_dtype if autocast_on else None
        layers = list(block.values())
        batch = _batch_statistics(layers[0].stages()[0].norm)
        eps = layers[0].stages()[0].norm.eps
        invstd = torch.rsqrt(var + eps)
        grads: dict[Tensor, Tensor] = {}
        # dL/dx̂ summed over every reading layer (batch statistics), or dL/dx itself (running statistics)
        accumulated = torch.zeros_like(buffer, memory_format=_memory_format(buffer))
        scratch = None if _no_scratch(buffer) else _Scratch(buffer, buffer.shape[1], buffer.dtype)

        def channel_grad(a: int, b: int) -> Tensor:
            """The whole gradient of buffer channels [a, b), once every layer that reads them is done."""
            g = accumulated[:, a:b]
            if batch:  # batch norm's backward through the shared statistics, once for all readers
                fmt = _memory_format(buffer)  # ATen's batch norm is twice as fast on dense tensors
                g = torch.ops.aten.native_batch_norm_backward(
                    g.contiguous(memory_format=fmt),
                    buffer[:, a:b].contiguous(memory_format=fmt),
                    None, None, None, mean[a:b], invstd[a:b], True, eps, [True, False, False],
                )[0]  # fmt: skip
            return g + grad[:, a:b]

        position = buffer.shape[1]
        for li in reversed(range(len(layers))):
            stages = layers[li].stages()
            kept, masks = per_layer[li]
            stats = ctx.stats[li]
            growth = stages[-1].conv.out_channels
            position -= growth
            g = channel_grad(position, position + growth)
            for s in reversed(range(1, len(stages))):
                if masks[s] is not None:
                    g = _dropout_backward(g, masks[s], stages[s].dropout.p)
                g = _stage_backward(stages[s], kept[s - 1], g, stats[s - 1], grads, compute_dtype)
            if masks[0] is not None:
                g = _dropout_backward(g, masks[0], stages[0].dropout.p)
            src = buffer[:, :position]
            src = src.to(ctx.input_dtype) if li == 0 else src
            _first_backward(
                stages[0], src, g, mean[:position], var[:position], batch, accumulated, grads, compute_dtype, scratch
            )
        grad_x = channel_grad(0, ctx.input_channels).to(ctx.input_dtype)
        return (None, grad_x, *[grads.get(p) for p in _parameters(block)])


def _first_backward(
    stage: Any,
    src: Tensor,
    grad_out: Tensor,
    mean: Tensor,
    var: Tensor,
    batch: bool,
    accumulated: Tensor,
    grads: dict[Tensor, Tensor],
    autocast_dtype: torch.dtype | None,
    scratch: _Scratch | None,
) -> None:
    """Gradients through conv(relu(BN(src))) of a layer's first stage, BN's statistics shared: the
    conv's weight gradient from the recomputed prologue, γ and β's gradients, and γ·dy (or, with
    running statistics, γ·invstd·dy) added into the accumulator's prefix in place."""
    norm, conv = stage.norm, stage.conv
    plan = _plan(norm, mean, var, batch)
    channels = src.shape[1]
    coef = norm.weight.detach() * (1 if batch else plan.invstd.to(norm.weight.dtype))

    def candidates() -> tuple[Callable[[], Any], Callable[[], Any]]:
        """Both ways, for timing: they add into a copy of the accumulator, never into the real one."""
        trial = accumulated[:, :channels].clone(memory_format=torch.channels_last)
        return (
            lambda: kernels.prologue_backward(src, plan, conv.weight, grad_out, trial, coef, autocast_dtype),
            lambda: _library_backward(stage, src, plan, grad_out, trial, coef, autocast_dtype, scratch),
        )

    use = kernels.supported(conv, src) and kernels.supported(conv, accumulated[:, :channels])
    dtype = kernels.compute_dtype(conv.weight, src, autocast_dtype)
    if use and kernels.choose(kernels.key("backward", conv, src, dtype), candidates):
        grad_w, grad_weight, grad_bias = kernels.prologue_backward(
            src, plan, conv.weight, grad_out, accumulated[:, :channels], coef, autocast_dtype
        )
    else:
        grad_w, grad_weight, grad_bias = _library_backward(
            stage, src, plan, grad_out, accumulated[:, :channels], coef, autocast_dtype, scratch
        )
    grads[conv.weight] = grad_w.to(conv.weight.dtype)
    _bias_grad(conv, grad_out, grads)
    grads[norm.weight] = grad_weight.to(norm.weight.dtype)
    grads[norm.bias] = grad_bias.to(norm.bias.dtype)


def _library_backward(
    stage: Any,
    src: Tensor,
    plan: _Plan,
    grad_out: Tensor,
    accumulated: Tensor,
    coef: Tensor,
    autocast_dtype: torch.dtype | None,
    scratch: _Scratch | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`_first_backward`'s work in ATen ops: the prologue recomputed into scratch, the library's
    convolution backward, the ReLU mask in place, BN's reductions for γ and β, coef·dy added in place."""
    norm, conv = stage.norm, stage.conv
    t = _prologue(src, plan, scratch)
    dtype = autocast_dtype if autocast_dtype is not None else t.dtype
    grad_t, grad_w = _conv_backward(conv, t, grad_out, dtype)
    grad_t = grad_t.to(t.dtype)
    dy = torch.ops.aten.threshold_backward.grad_input(grad_t, t, 0, grad_input=grad_t)  # in place
    gamma, beta = norm.weight.detach(), norm.bias.detach()
    # (on CUDA and under torch.compile always the first way: a test of γ would wait for the GPU, or break the graph)
    direct = src.is_cuda or torch.compiler.is_compiling() or src.is_contiguous(memory_format=_memory_format(src))
    if direct or not bool(gamma.all()):
        # Σ dy·x̂ and Σ dy: batch norm's backward for γ and β alone, one pass over dy and src
        _, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            dy, src, gamma, None, None, plan.mean, plan.invstd, True, norm.eps, [False, True, True]
        )
    else:  # from t, which is dense where the prefix is strided: dy is 0 where t is, and elsewhere t = γ·x̂ + β
        zeros, ones = torch.zeros_like(plan.mean), torch.ones_like(plan.invstd)
        _, dy_t, grad_bias = torch.ops.aten.native_batch_norm_backward(
            dy, t, None, None, None, zeros, ones, True, norm.eps, [False, True, True]
        )
        grad_weight = (dy_t - beta.to(dy_t.dtype) * grad_bias) / gamma.to(dy_t.dtype)
    del t, grad_t
    accumulated.addcmul_(dy, _view(coef, dy))  # coef in float32: γ unrounded
    return grad_w, grad_weight, grad_bias
