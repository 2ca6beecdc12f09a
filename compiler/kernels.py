"""Triton kernels of the fused lowering: a layer's first stage, BN-ReLU-Conv(1x1), without its input's copies.

In channels_last the block buffer's prefix `[:, :C]` is a matrix A (rows N·H·W, row stride C_total)
and a 1x1 convolution over it is a matrix product that reads A in place. Each kernel applies BN's
per-channel scale and shift and the ReLU to A's tiles as it loads them (a prologue), so neither a
copy of the prefix nor its normalised form exists in memory:

- `prologue_conv`: out = relu(A·s + b) @ Wᵀ, the forward pass.
- `prologue_backward`: the input gradient g @ W with the ReLU mask, Σdy and Σdy·x̂ (γ's and β's
  gradients) and the accumulation of coef·dy into the block's gradient buffer fused in its epilogue;
  and the weight gradient gᵀ @ relu(A·s + b), the prologue recomputed on the fly.

`DNETC_KERNELS` picks the implementation: `auto` (default) times the kernels against the library
ops once per shape on the GPU and keeps the faster (cached per device in ~/.cache/dnetc); `triton`
always uses the kernels where they apply (with TRITON_INTERPRET=1 also on the CPU, for tests); `aten`
never does. Triton is optional: without it the library ops run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the library ops run instead
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MODES = ("auto", "triton", "aten")


def mode() -> str:
    value = os.environ.get("DNETC_KERNELS", "auto")
    return value if value in MODES else "auto"


def supported(conv: Any, src: Tensor) -> bool:
    """Whether the kernels can run this first stage: Triton on CUDA (or its interpreter), a bias-free 1x1
    convolution over a channels_last 2D buffer prefix."""
    if triton is None or mode() == "aten" or not (src.is_cuda or INTERPRET):
        return False
    if torch.are_deterministic_algorithms_enabled():  # the kernels' reductions add atomically
        return False
    if src.dim() != 4 or src.dtype not in DTYPES or conv.weight.dim() != 4:
        return False
    if tuple(conv.kernel_size) != (1, 1) or tuple(conv.stride) != (1, 1) or conv.bias is not None:
        return False
    if tuple(conv.padding) != (0, 0) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
        return False
    _, c, h, w = src.shape
    row = src.stride(3)
    if src.shape[0] * h * w * row >= 2**31:  # the kernels' offsets are 32-bit
        return False
    return src.stride(1) == 1 and src.stride(2) == w * row and src.stride(0) == h * w * row and row >= c


_choices: dict[str, str] | None = None


def _cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dnetc" / "kernels.json"


def key(kind: str, conv: Any, src: Tensor, dtype: torch.dtype) -> str:
    """What a timing decides for: the pass, the shapes and strides, the dtypes."""
    tf32 = torch.backends.cudnn.allow_tf32
    return f"{kind}|{tuple(src.shape)}|{src.stride()}|{src.dtype}|{dtype}|{conv.out_channels}|tf32={tf32}"


def choose(key: str, candidates: Callable[[], tuple[Callable[[], Any], Callable[[], Any]]]) -> bool:
    """Whether the kernels are the faster for this shape: `candidates()` gives (kernels, library ops),
    each timed once on the GPU (after a warm-up call, the median of five) and the winner remembered;
    never timed while a CUDA graph is being captured (the library ops run until it is decided)."""
    global _choices
    if mode() == "triton":
        return True
    if INTERPRET or not torch.cuda.is_available():
        return False
    if _choices is None:
        try:
            _choices = json.loads(_cache_file().read_text())
        except (OSError, ValueError):
            _choices = {}
    key = f"{torch.cuda.get_device_name()}|{triton.__version__}|{key}"
    if key in _choices:
        return _choices[key] == "triton"
    if torch.cuda.is_current_stream_capturing():
        return False
    timings = {}
    for name, fn in zip(("triton", "aten"), candidates(), strict=True):
        fn()
        runs = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end))
        timings[name] = sorted(runs)[2]
    _choices[key] = min(timings, key=timings.__getitem__)
    try:
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(_choices, indent=1))
        temporary.replace(path)
    except OSError:
        pass
    return _choices[key] == "triton"


def _matrix(src: Tensor) -> tuple[int, int, int]:
    """(rows, columns, row stride) of a channels_last (N, C, H, W) view as the matrix A[N·H·W, C]."""
    n, c, h, w = src.shape
    return n * h * w, c, src.stride(3)


def _tl_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def _precision(dtype: torch.dtype) -> str:
    """fp32 products as the library convolution does them: TF32 where cuDNN may use it."""
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not INTERPRET else "ieee"


if triton is not None:

    @triton.jit
    def _forward_kernel(
        a_ptr, scale_ptr, shift_ptr, w_ptr, out_ptr, M, N, K, lda,
        COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """out[M, N] = relu(A[M, K]·scale + shift) @ W[N, K]ᵀ, A read with row stride lda."""
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            mask_k = rk < K
            a = tl.load(a_ptr + rm[:, None] * lda + rk[None, :], mask=(rm[:, None] < M) & mask_k[None, :], other=0.0)
            s = tl.load(scale_ptr + rk, mask=mask_k, other=0.0)
            b = tl.load(shift_ptr + rk, mask=mask_k, other=0.0)
            t = tl.maximum(a.to(tl.float32) * s[None, :] + b[None, :], 0.0)
            t = tl.where(mask_k[None, :], t, 0.0).to(COMPUTE)
            w = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=(rn[None, :] < N) & mask_k[:, None], other=0.0)
            acc += tl.dot(t, w.to(COMPUTE), input_precision=PRECISION)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _input_grad_kernel(
        g_ptr, w_ptr, a_ptr, mean_ptr, invstd_ptr, scale_ptr, shift_ptr, coef_ptr, acc_ptr,
        dgamma_ptr, dbeta_ptr, M, N, K, lda, ldacc,
        COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """dy = (g[M, N] @ W[N, K]) · [A·scale + shift > 0]; accumulated[M, K] += coef·dy; Σdy, Σdy·x̂ per column."""
        pid_m, pid_k = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_m, mask_k = rm < M, rk < K
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            mask_n = rn < N
            g = tl.load(g_ptr + rm[:, None] * N + rn[None, :], mask=mask_m[:, None] & mask_n[None, :], other=0.0)
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            acc += tl.dot(g.to(COMPUTE), w.to(COMPUTE), input_precision=PRECISION)
        mask = mask_m[:, None] & mask_k[None, :]
        a = tl.load(a_ptr + rm[:, None] * lda + rk[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rk, mask=mask_k, other=0.0)
        invstd = tl.load(invstd_ptr + rk, mask=mask_k, other=0.0)
        s = tl.load(scale_ptr + rk, mask=mask_k, other=0.0)
        b = tl.load(shift_ptr + rk, mask=mask_k, other=0.0)
        xhat = (a - mean[None, :]) * invstd[None, :]
        dy = tl.where((a * s[None, :] + b[None, :] > 0) & mask, acc, 0.0)
        tl.atomic_add(dbeta_ptr + rk, tl.sum(dy, axis=0), mask=mask_k)
        tl.atomic_add(dgamma_ptr + rk, tl.sum(dy * xhat, axis=0), mask=mask_k)
        coef = tl.load(coef_ptr + rk, mask=mask_k, other=0.0)
        target = acc_ptr + rm[:, None] * ldacc + rk[None, :]
        old = tl.load(target, mask=mask, other=0.0).to(tl.float32)
        tl.store(target, (old + dy * coef[None, :]).to(acc_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _weight_grad_kernel(
        g_ptr, a_ptr, scale_ptr, shift_ptr, dw_ptr, M, N, K, lda, ROWS,
        COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """dW[N, K] += g[rows, N]ᵀ @ relu(A[rows, K]·scale + shift) over this program's ROWS rows."""
        pid_n, pid_k, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_n, mask_k = rn < N, rk < K
        s = tl.load(scale_ptr + rk, mask=mask_k, other=0.0)
        b = tl.load(shift_ptr + rk, mask=mask_k, other=0.0)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        start = pid_s * ROWS
        for m0 in range(start, start + ROWS, BLOCK_M):
            rm = m0 + tl.arange(0, BLOCK_M)
            mask_m = (rm < M) & (rm < start + ROWS)
            g = tl.load(g_ptr + rm[None, :] * N + rn[:, None], mask=mask_m[None, :] & mask_n[:, None], other=0.0)
            a = tl.load(a_ptr + rm[:, None] * lda + rk[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            t = tl.maximum(a.to(tl.float32) * s[None, :] + b[None, :], 0.0)
            t = tl.where(mask_m[:, None] & mask_k[None, :], t, 0.0)
            acc += tl.dot(g.to(COMPUTE), t.to(COMPUTE), input_precision=PRECISION)
        tl.atomic_add(dw_ptr + rn[:, None] * K + rk[None, :], acc, mask=mask_n[:, None] & mask_k[None, :])


def _blocks(dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): small in the interpreter, which runs every program in numpy."""
    if INTERPRET:
        return 16, 16, 16
    return (128, 64, 32) if dtype != torch.float32 else (64, 64, 32)


def compute_dtype(weight: Tensor, src: Tensor, autocast: torch.dtype | None = None) -> torch.dtype:
    """The dtype the library convolution multiplies in: autocast's (the forward pass's, given to the
    backward pass, which runs outside autocast), else the weight's and input's."""
    device = src.device.type
    if autocast is None and torch.is_autocast_enabled(device):
        autocast = torch.get_autocast_dtype(device)
    return autocast if autocast is not None else torch.promote_types(weight.dtype, src.dtype)


def prologue_conv(src: Tensor, scale: Tensor, shift: Tensor, weight: Tensor, out: Tensor | None = None) -> Tensor:
    """conv1x1(relu(src·scale + shift)) for a channels_last prefix `src`: (N, out, H, W), channels_last
    (written into `out`, (N, H, W, out) contiguous, when given)."""
    m, k, lda = _matrix(src)
    n_out = weight.shape[0]
    dtype = compute_dtype(weight, src)
    if out is None:
        out = torch.empty((src.shape[0], src.shape[2], src.shape[3], n_out), device=src.device, dtype=dtype)
    bm, bn, bk = _blocks(dtype)
    grid = (triton.cdiv(m, bm), triton.cdiv(n_out, bn))
    _forward_kernel[grid](
        src, scale.float().contiguous(), shift.float().contiguous(), weight.reshape(n_out, k).contiguous(), out,
        m, n_out, k, lda, COMPUTE=_tl_dtype(dtype), PRECISION=_precision(dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
    )  # fmt: skip
    return out.permute(0, 3, 1, 2)


def prologue_backward(
    src: Tensor,
    plan: Any,
    weight: Tensor,
    grad_out: Tensor,
    accumulated: Tensor,
    coef: Tensor,
    autocast: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The first stage's backward pass: adds coef·dy into `accumulated` (a view like src) in place and
    returns the conv weight's gradient (float32) and γ's and β's (float32), dy being the gradient at
    BN's output behind the ReLU. `plan` holds mean, invstd, scale and shift per channel."""
    m, k, lda = _matrix(src)
    _, _, ldacc = _matrix(accumulated)
    n_out = weight.shape[0]
    dtype = compute_dtype(weight, src, autocast)
    g = grad_out.permute(0, 2, 3, 1).contiguous()  # (N, H, W, out): the matrix g[M, out]
    w = weight.reshape(n_out, k).contiguous()
    scale, shift = plan.scale.float().contiguous(), plan.shift.float().contiguous()
    dgamma = torch.zeros(k, device=src.device, dtype=torch.float32)
    dbeta = torch.zeros_like(dgamma)
    bm, bn, bk = _blocks(dtype)
    _input_grad_kernel[(triton.cdiv(m, bm), triton.cdiv(k, bk))](
        g, w, src, plan.mean.float().contiguous(), plan.invstd.float().contiguous(), scale, shift,
        coef.float().contiguous(), accumulated, dgamma, dbeta, m, n_out, k, lda, ldacc,
        COMPUTE=_tl_dtype(dtype), PRECISION=_precision(dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
    )  # fmt: skip
    grad_w = torch.zeros((n_out, k), device=src.device, dtype=torch.float32)
    tiles = triton.cdiv(n_out, bn) * triton.cdiv(k, bk)
    splits = max(1, min(triton.cdiv(m, 4 * bm), 4 * 132 // max(tiles, 1)))  # enough programs to fill the GPU
    rows = triton.cdiv(triton.cdiv(m, splits), bm) * bm
    _weight_grad_kernel[(triton.cdiv(n_out, bn), triton.cdiv(k, bk), triton.cdiv(m, rows))](
        g, src, scale, shift, grad_w, m, n_out, k, lda, rows,
        COMPUTE=_tl_dtype(dtype), PRECISION=_precision(dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
    )  # fmt: skip
    return grad_w.view_as(weight), dgamma, dbeta
