"""Memory-efficient lowerings of a dense block: `checkpoint` and `shared`.

Naive concatenation stores every layer's input (all earlier features, copied) and its BN output for
the backward pass, so training memory grows quadratically with depth. Both lowerings here compute
exactly what the naive block computes, with the same parameters, names and RNG draws:

- `checkpoint` recomputes concat+BN+ReLU+conv1 of each layer in the backward pass (PyTorch's
  non-reentrant checkpointing), updating BN running statistics only on the first pass.
- `shared` is the scheme of Pleiss et al. (2017): the block's features live in one buffer
  (N, C_in + n·k, *S) that each layer writes its k channels into; nothing is concatenated. The
  backward pass recomputes each BN+ReLU from that buffer into scratch storage and gets the conv
  gradients from the kept tensors directly, accumulating the feature gradients in one shared
  buffer. What it keeps is linear in depth: the buffer, and each bottleneck's 4k-channel output.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .lowerings import AUTO, by_speed
from .modules import DenseBlock, DenseLayer, Stage, TwoWayDenseLayer, checkpointed_layer, frozen_statistics, tracing


def _recomputed_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """A normalisation as the forward pass computed it, leaving batch norm's running statistics
    unchanged (momentum 0); the others keep no statistics."""
    if not isinstance(norm, _BatchNorm):
        return norm(x)
    training = norm.training or norm.running_mean is None
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, training, 0.0, norm.eps)


def _fast(stage: Stage) -> bool:
    """Batch norm and ReLU: the stage whose backward pass is written out in ATen ops below."""
    return isinstance(stage.norm, _BatchNorm) and isinstance(stage.relu, nn.ReLU)


def _needs_backward(x: Tensor, module: nn.Module) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


class CheckpointDenseBlock(DenseBlock):
    """Recomputes each layer's concat+BN+ReLU+conv1 in the backward pass instead of storing it."""

    def forward(self, x: Tensor) -> Tensor:
        if tracing(x) or not _needs_backward(x, self):
            return super().forward(x)
        if self.links is not None:  # the spec's own layers or connectivity: each whole layer recomputed
            return self.connected(x, checkpointed_layer)
        features = [x]
        for layer in self.values():
            features.append(self._layer(layer, features))
        return torch.cat(features if self.concat_input else features[1:], 1)

    @staticmethod
    def _layer(layer: DenseLayer | TwoWayDenseLayer, features: list[Tensor]) -> Tensor:
        if isinstance(layer, TwoWayDenseLayer):  # concat and both 1x1 Conv-BN-activations recomputed
            fresh_two = [True]

            def entry(*inputs: Tensor) -> tuple[Tensor, Tensor]:
                x = torch.cat(inputs, 1)
                with contextlib.nullcontext() if fresh_two[0] else frozen_statistics(layer):
                    out = layer.branch1a(x), layer.branch2a(x)
                fresh_two[0] = False
                return out

            # no RNG inside (dropout is applied outside): no state to stash, which a CUDA graph could not
            a, b = checkpoint(entry, *features, use_reentrant=False, preserve_rng_state=False)
            return torch.cat([layer.branch1b(a), layer.branch2c(layer.branch2b(b))], 1)
        first, *rest = layer.stages()
        fresh = [True]

        def segment(*inputs: Tensor) -> Tensor:
            x = torch.cat(inputs, 1)
            # the first call is the forward pass, where the module updates its running statistics; the
            # recomputation blends them with weight 0, keeping them as they are and the saved tensors alike
            x = first.norm(x) if fresh[0] else _recomputed_norm(first.norm, x)
            fresh[0] = False
            return first.conv(first.relu(x))

        h = checkpoint(segment, *features, use_reentrant=False, preserve_rng_state=False)
        if first.dropout is not None:
            h = first.dropout(h)
        for stage in rest:
            h = stage.conv(stage.relu(stage.norm(h)))
            if stage.dropout is not None:
                h = stage.dropout(h)
        return h


def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _replayed_mask(dropout: nn.Module, like: Tensor, state: Tensor) -> Tensor:
    """The dropout's keep mask, already scaled by 1/(1-p), drawn again from the forward pass's RNG state."""
    devices = [like.device] if like.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=like.device.type):
        if like.device.type == "cuda":
            torch.cuda.set_rng_state(state, like.device)
        else:
            torch.set_rng_state(state)
        return dropout(torch.ones_like(like))


class SharedDenseBlock(DenseBlock):
    """Keeps the block's features in one buffer and recomputes BN+ReLU in the backward pass."""

    def cuda_graph_refusal(self) -> str | None:
        """Why a CUDA graph cannot capture a training step through this block, or None."""
        stages = [s for layer in self.values() if hasattr(layer, "stages") for s in layer.stages()]
        if any(s.dropout is not None and s.dropout.p > 0 for s in stages):
            return (
                "the shared lowering draws its dropout masks again in the backward pass from a saved RNG "
                "state, which a CUDA graph cannot hold (--memory fused, for batch norm and ReLU layers, "
                "or checkpoint keeps both)"
            )
        return None

    def forward(self, x: Tensor) -> Tensor:
        if tracing(x):
            return DenseBlock.forward(self, x)
        if any(isinstance(layer, TwoWayDenseLayer) for layer in self.values()):
            out = _SharedLayersBlock.apply(self, x, *self.parameters()) if _needs_backward(x, self) else None
            out = out if out is not None else _SharedLayersBlock.run(self, x)
        else:
            grad = _needs_backward(x, self)
            out = _SharedBlock.apply(self, x, *_parameters(self)) if grad else self._run(x, None)
        return out if self.concat_input else out[:, x.shape[1] :]

    def _run(self, x: Tensor, record: dict[str, Any] | None) -> Tensor:
        """Run every layer, writing its new features into the block's buffer; `record` keeps what backward needs."""
        layers = list(self.values())
        n, c0 = x.shape[0], x.shape[1]
        buffer: Tensor | None = None
        position = c0
        for layer in layers:
            h = x if buffer is None else buffer[:, :position].contiguous(memory_format=_memory_format(x))
            kept, states, stats = [], [], []
            stages = layer.stages()
            for s, stage in enumerate(stages):
                if record is None or not _fast(stage):
                    h = stage.norm(h)
                    stats.append((None, None))
                else:  # keep the batch statistics, so that backward need not compute them again
                    h, mean, invstd = _batch_norm(stage.norm, h)
                    stats.append((mean, invstd))
                h = stage.conv(stage.relu(h))
                if stage.dropout is not None and stage.dropout.training and stage.dropout.p > 0:
                    states.append(_rng_state(h.device))
                    h = stage.dropout(h)
                else:
                    states.append(None)
                if s < len(stages) - 1:
                    kept.append(h)
            if buffer is None:
                total = c0 + len(layers) * h.shape[1]
                fmt = _memory_format(x)
                dtype = torch.promote_types(x.dtype, h.dtype)
                buffer = x.new_empty((n, total, *x.shape[2:]), dtype=dtype).contiguous(memory_format=fmt)
                buffer[:, :c0] = x
            buffer[:, position : position + h.shape[1]] = h
            position += h.shape[1]
            if record is not None:
                record["stats"].append(stats)
                record["kept"].append(kept)
                record["rng"].append(states)
        assert buffer is not None
        return buffer


class _SharedLayersBlock(torch.autograd.Function):
    """The shared buffer for layers of any shape (PeleeNet's two-way layers): the forward pass writes
    each layer's new maps into the buffer and keeps nothing else; the backward pass recomputes one
    layer at a time from the buffer in a small autograd graph, its batch statistics frozen."""

    @staticmethod
    def run(block: DenseBlock, x: Tensor) -> Tensor:
        buffer: Tensor | None = None
        position = c0 = x.shape[1]
        for layer in block.values():
            h = layer([x if buffer is None else buffer[:, :position]])
            if buffer is None:
                total = c0 + len(block) * h.shape[1]
                buffer = x.new_empty((x.shape[0], total, *x.shape[2:]), dtype=torch.promote_types(x.dtype, h.dtype))
                buffer = buffer.contiguous(memory_format=_memory_format(x))
                buffer[:, :c0] = x
            buffer[:, position : position + h.shape[1]] = h
            position += h.shape[1]
        assert buffer is not None
        return buffer

    @staticmethod
    def forward(ctx: Any, block: DenseBlock, x: Tensor, *params: Tensor) -> Tensor:
        device = x.device.type
        ctx.block, ctx.input_channels, ctx.input_dtype = block, x.shape[1], x.dtype
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        with torch.no_grad():
            buffer = _SharedLayersBlock.run(block, x)
        ctx.save_for_backward(buffer)
        return buffer

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (buffer,) = ctx.saved_tensors
        block: DenseBlock = ctx.block
        device, autocast_on, autocast_dtype = ctx.autocast
        params = list(block.parameters())
        grads = {p: torch.zeros_like(p) for p in params}
        shared_grad = grad.clone(memory_format=_memory_format(buffer))
        layers = list(block.values())
        growth = (buffer.shape[1] - ctx.input_channels) // len(layers)
        for li in reversed(range(len(layers))):
            layer, position = layers[li], ctx.input_channels + li * growth
            source = buffer[:, :position].detach()
            source = (source.to(ctx.input_dtype) if li == 0 else source).requires_grad_()
            own = [p for p in layer.parameters() if p.requires_grad]
            with torch.enable_grad(), frozen_statistics(layer):
                with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
                    h = layer([source])
                g_source, *g_params = torch.autograd.grad(
                    h, [source, *own], shared_grad[:, position : position + growth]
                )
            shared_grad[:, :position] += g_source.to(shared_grad.dtype)
            for p, gp in zip(own, g_params, strict=True):
                grads[p] += gp
        grad_x = shared_grad[:, : ctx.input_channels].to(ctx.input_dtype)
        return (None, grad_x, *[grads[p] for p in params])


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


class _SharedBlock(torch.autograd.Function):
    """The whole dense block as one autograd node, so that the feature buffer can be written in place."""

    @staticmethod
    def forward(ctx: Any, block: SharedDenseBlock, x: Tensor, *params: Tensor) -> Tensor:
        record: dict[str, Any] = {"kept": [], "rng": [], "stats": []}
        buffer = block._run(x, record)
        device = x.device.type
        ctx.block = block
        ctx.rng = record["rng"]
        ctx.stats = record["stats"]
        ctx.input_channels, ctx.input_dtype = x.shape[1], x.dtype
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.layout = [len(k) for k in record["kept"]]
        ctx.save_for_backward(buffer, *[t for kept in record["kept"] for t in kept])
        return buffer

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        buffer, *flat = ctx.saved_tensors
        block: SharedDenseBlock = ctx.block
        _, autocast_on, autocast_dtype = ctx.autocast
        compute_dtype = autocast_dtype if autocast_on else None
        kept = []
        for count in ctx.layout:
            kept.append(flat[:count])
            flat = flat[count:]
        grads: dict[Tensor, Tensor] = {}
        fmt = _memory_format(buffer)
        shared_grad = grad.clone(memory_format=fmt)  # the block's one gradient buffer
        layers = list(block.values())
        position = buffer.shape[1]
        for li in reversed(range(len(layers))):
            stages = layers[li].stages()
            growth = stages[-1].conv.out_channels
            position -= growth
            g = shared_grad[:, position : position + growth]
            for s in reversed(range(len(stages))):
                if s == 0:  # the layer's input: all earlier features, read from the buffer
                    source = buffer[:, :position].contiguous(memory_format=fmt)
                    source = source.to(ctx.input_dtype) if li == 0 else source
                else:
                    source = kept[li][s - 1]
                if ctx.rng[li][s] is not None:
                    g = g * _replayed_mask(stages[s].dropout, g, ctx.rng[li][s])
                if _fast(stages[s]):
                    g = _stage_backward(stages[s], source, g, ctx.stats[li][s], grads, compute_dtype)
                else:
                    g = _stage_backward_any(stages[s], source, g, grads, compute_dtype)
            shared_grad[:, :position] += g
        grad_x = shared_grad[:, : ctx.input_channels].to(ctx.input_dtype)
        return (None, grad_x, *[grads.get(p) for p in _parameters(block)])


def _parameters(block: DenseBlock) -> list[Tensor]:
    """The parameters the shared block's backward pass returns gradients for, in a fixed order."""
    return [p for layer in block.values() for s in layer.stages() for m in s[:3] for p in m.parameters()]


def _batch_norm(norm: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """What the BN module computes (running statistics updated once), with the batch's mean and 1/std."""
    if not norm.training:
        return norm(x), None, None
    momentum = _count_batch(norm)
    return torch.ops.aten.native_batch_norm(
        x, norm.weight, norm.bias, norm.running_mean, norm.running_var, True, momentum, norm.eps
    )


def _count_batch(norm: nn.Module) -> float:
    """What a training-mode BN module does before it blends in a batch: counts it, and says the weight
    of the batch in the running statistics (its momentum, or 1/count for the cumulative average)."""
    momentum = norm.momentum
    if norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if momentum is None:
            momentum = 1.0 / float(norm.num_batches_tracked)
    return momentum or 0.0


def _stage_backward(
    stage: Stage,
    source: Tensor,
    grad_out: Tensor,
    stats: tuple[Tensor | None, Tensor | None],
    grads: dict[Tensor, Tensor],
    autocast_dtype: torch.dtype | None,
) -> Tensor:
    """Gradients through conv(relu(norm(source))): norm and relu recomputed, the convolution not.

    Explicit ATen backward ops, not a nested autograd pass: a graph built inside a backward pass
    would keep each layer's scratch alive until the whole backward pass ends.
    """
    norm, conv = stage.norm, stage.conv
    x = source.detach()
    weight, bias = norm.weight.detach(), norm.bias.detach()
    mean, invstd = stats
    running = (None, None) if norm.training else (norm.running_mean, norm.running_var)
    if mean is None:  # eval mode: normalise with the running statistics
        t, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, *running, False, 0.0, norm.eps)
    else:  # the forward pass's statistics, as an inference-mode batch norm: one pass, in x's dtype
        variance = invstd.pow(-2) - norm.eps  # 1/invstd² = var + eps
        t = torch.ops.aten.native_batch_norm(x, weight, bias, mean, variance, False, 0.0, norm.eps)[0]
    t = t.relu_()
    dtype = autocast_dtype if autocast_dtype is not None else t.dtype
    grad_t, grad_w = _conv_backward(conv, t, grad_out, dtype)
    grad_t = grad_t.to(t.dtype)
    torch.ops.aten.threshold_backward.grad_input(grad_t, t, 0, grad_input=grad_t)  # in place
    del t
    grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
        grad_t, x, weight, *running, mean, invstd, norm.training, norm.eps, [True, True, True]
    )
    grads[conv.weight] = grad_w.to(conv.weight.dtype)
    _bias_grad(conv, grad_out, grads)
    grads[norm.weight] = grad_weight
    grads[norm.bias] = grad_bias
    return grad_x


def _conv_backward(conv: nn.Module, t: Tensor, grad_out: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The gradients of a bias-free convolution for its input and weight, from its input `t`."""
    grad_t, grad_w, _ = torch.ops.aten.convolution_backward(
        grad_out.to(dtype),
        t.to(dtype),
        conv.weight.detach().to(dtype),
        None,
        list(conv.stride),
        list(conv.padding),
        list(conv.dilation),
        False,
        [0] * (t.dim() - 2),
        conv.groups,
        [True, True, False],
    )
    return grad_t, grad_w


def _bias_grad(conv: nn.Module, grad_out: Tensor, grads: dict[Tensor, Tensor]) -> None:
    """A convolution's bias (FC-DenseNet has them) gets the output gradient summed over all but channels."""
    if conv.bias is not None:
        dims = [0, *range(2, grad_out.dim())]
        total = grad_out.sum(dims, dtype=torch.promote_types(grad_out.dtype, torch.float32))
        grads[conv.bias] = total.to(conv.bias.dtype)


def _stage_backward_any(
    stage: Stage, source: Tensor, grad_out: Tensor, grads: dict[Tensor, Tensor], autocast_dtype: torch.dtype | None
) -> Tensor:
    """Gradients through conv(act(norm(source))) for any normalisation and activation: the norm and
    activation are recomputed in a small autograd graph that is used once and freed at once."""
    norm, act, conv = stage.norm, stage.relu, stage.conv
    params = [p for m in (norm, act) for p in m.parameters() if p.requires_grad]
    autocast = torch.autocast(source.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with torch.enable_grad():
        x = source.detach().requires_grad_()
        with autocast:  # as the forward pass ran: group norm under bf16 autocast computes in float32
            t = act(_recomputed_norm(norm, x))
        dtype = autocast_dtype if autocast_dtype is not None else t.dtype
        grad_t, grad_w = _conv_backward(conv, t.detach(), grad_out, dtype)
        grad_x, *grad_params = torch.autograd.grad(t, [x, *params], grad_t.to(t.dtype))
    grads[conv.weight] = grad_w.to(conv.weight.dtype)
    _bias_grad(conv, grad_out, grads)
    for p, gp in zip(params, grad_params, strict=True):
        grads[p] = gp
    return grad_x


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes free for a training step on the device: free CUDA memory, or available RAM on the CPU."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_lowering(g: Any, requested: str, batch: int = 64, device: torch.device | str | None = None) -> str:
    """`auto`: the fastest lowering on this kind of device whose estimated step fits in 80% of its free
    memory; the one that needs least when none does."""
    if requested != AUTO:
        return requested
    from .estimate import estimate

    kind = torch.device(device).type if device is not None else "cpu"
    free = available_memory(device)
    need = {x.name: estimate(g, x.name, batch, "float32", kind).training for x in by_speed(kind)}
    fits = [name for name, bytes_ in need.items() if bytes_ <= 0.8 * free]
    return fits[0] if fits else min(need, key=need.__getitem__)
