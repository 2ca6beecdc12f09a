"""The fused lowering: naive's arithmetic with statistics once and BN in the 1x1 conv's prologue.

Its ATen path is held to naive in float64 on every zoo network by test_memory.py; here: float32 on
small networks with fresh random inputs, running statistics, modes, autocast, what it does not cover,
and its Triton kernels in Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 without a GPU).
"""

from __future__ import annotations

import json
import random
import statistics

import pytest
import torch

from dnetc import compiler, dsl
from dnetc.compiler import kernels
from dnetc.compiler.emit import emit
from dnetc.compiler.fused import FusedDenseBlock, _Plan

from .test_memory import REDUCED, assert_same, step

SMALL = """network n {{
    input 3 x 8 x 8
    stem conv(3, 8)
    dense(3, 4, 4, {p})
    transition(0.5)
    dense(2, 4, 4)
    head classifier(3)
}}"""


def fresh_seed() -> int:
    """A new seed each run, printed by a failing assertion so that the run can be repeated."""
    return random.SystemRandom().randrange(2**31)


def relative(got: dict, expected: dict) -> dict[str, float]:
    """Each floating-point tensor's error relative to its norm (a single ReLU flipped by rounding moves
    one element, not the norm)."""
    out = {}
    for k, e in expected.items():
        if e.is_floating_point():
            out[k] = float((got[k].double() - e.double()).norm() / e.double().norm().clamp_min(1e-12))
    return out


def pair(network: dsl.Network, dtype: torch.dtype, channels_last: bool, seed: int, batch: int = 3):
    g = compiler.build_graph(network)
    torch.manual_seed(seed)
    naive = emit(g, "naive").to(dtype)
    fused = emit(g, "fused").to(dtype)
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(batch, *g.nodes["input"]["shape"], dtype=dtype)
    if channels_last:
        naive, fused = (m.to(memory_format=torch.channels_last) for m in (naive, fused))
        x = x.contiguous(memory_format=torch.channels_last)
    return naive, fused, x


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_float32_equals_naive(channels_last, dropout):
    seed = fresh_seed()
    naive, fused, x = pair(dsl.parse(SMALL.format(p=dropout)), torch.float32, channels_last, seed)
    errors = relative(step(fused, x, seed), step(naive, x, seed))
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] < 1e-4, (seed, worst, errors[worst])


def test_running_statistics_match_naive_with_cumulative_momentum():
    seed = fresh_seed()
    naive, fused, x = pair(dsl.load("densenet_bc", **REDUCED["densenet_bc"]), torch.float64, False, seed)
    for m in (naive, fused):
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.momentum = None  # the cumulative average: 1/num_batches_tracked
    for _ in range(2):
        expected, got = step(naive, x, seed), step(fused, x, seed)
    buffers = {k: v for k, v in got.items() if "running" in k or "num_batches" in k}
    assert buffers and all(torch.allclose(v, expected[k], rtol=1e-10, atol=1e-12) for k, v in buffers.items()), seed


def test_eval_mode_and_no_grad_equal_naive():
    seed = fresh_seed()
    naive, fused, x = pair(dsl.load("densenet_bc", **REDUCED["densenet_bc"]), torch.float64, False, seed)
    step(naive, x, seed), step(fused, x, seed)  # running statistics that are not the initial ones
    naive.eval(), fused.eval()
    with torch.no_grad():
        assert torch.allclose(fused(x), naive(x), rtol=1e-10, atol=1e-12)
    assert_same(step(fused, x, seed), step(naive, x, seed), 1e-8, floor=1e-4)  # frozen BN, with gradients
    naive.train(), fused.train()
    with torch.no_grad():  # training-mode statistics without a backward pass
        assert torch.allclose(fused(x), naive(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_autocast_trains_close_to_naive(dtype):
    seed = fresh_seed()
    naive, fused, x = pair(dsl.load("densenet_bc", **REDUCED["densenet_bc"], dropout=0.2), torch.float32, True, seed)
    truth = step(naive, x, seed)  # float32
    with torch.autocast("cpu", dtype=dtype):
        expected, got = step(naive, x, seed), step(fused, x, seed)
    for k in ("output", "input.grad", "features.denseblock1.denselayer1.conv1.weight.grad"):
        assert got[k].dtype == expected[k].dtype, k
    # half precision at these sizes is far from float32 for naive too: fused must be no further from it
    ours, theirs = relative(got, truth), relative(expected, truth)
    assert statistics.median(ours.values()) <= 1.5 * statistics.median(theirs.values()) + 1e-3, seed
    assert max(ours.values()) <= 1.5 * max(theirs.values()) + 1e-3, seed


def test_what_it_does_not_cover_runs_shared_and_is_said():
    for name, settings in [("densenet_bc", {"norm": "group(2)"}), ("densenet_bc", {"act": "silu"}), ("peleenet", {})]:
        model = compiler.compile(dsl.load(name, **settings), memory="fused")
        blocks = [m for m in model.modules() if isinstance(m, FusedDenseBlock)]
        assert blocks and all(b.fallback() for b in blocks), name
    model = compiler.compile(dsl.load("densenet_bc", **REDUCED["densenet_bc"]), memory="fused")
    assert not any(m.fallback() for m in model.modules() if isinstance(m, FusedDenseBlock))


def test_summary_says_the_fallback_once(dnetc):
    result = dnetc("densenet_bc", "--set", "norm=group(2)", "--memory", "fused", "--summary", "--depth", "1")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "as shared" in line]
    assert lines == [
        "The fused lowering runs denseblock1, denseblock2, denseblock3 as shared: "
        "the layers normalise with something other than an affine batch norm."
    ]


def test_dropout_is_capturable_unlike_shared():
    network = dsl.load("densenet_bc", **REDUCED["densenet_bc"], dropout=0.2)
    block = lambda lowering: compiler.compile(network, memory=lowering).features.denseblock1  # noqa: E731
    assert block("fused").cuda_graph_refusal() is None
    assert "RNG" in block("shared").cuda_graph_refusal()
    grouped = dsl.load("densenet_bc", **REDUCED["densenet_bc"], dropout=0.2, norm="group(2)")
    grouped = compiler.compile(grouped, memory="fused")
    assert "--memory checkpoint" in grouped.features.denseblock1.cuda_graph_refusal()


# --- the Triton kernels, in Triton's interpreter on the CPU -----------------------------------------------

needs_interpreter = pytest.mark.skipif(
    kernels.triton is None or not kernels.INTERPRET, reason="Triton's interpreter (TRITON_INTERPRET=1) runs these"
)


def problem(dtype: torch.dtype, seed: int) -> dict:
    """A channels_last buffer prefix with odd sizes (partial tiles everywhere), its statistics and BN."""
    g = torch.Generator().manual_seed(seed)
    n, c_total, c, h, w, out = 2, 40, 21, 5, 3, 24
    buffer = torch.randn(n, c_total, h, w, generator=g).contiguous(memory_format=torch.channels_last).to(dtype)
    src = buffer[:, :c]
    mean, var = src.float().mean((0, 2, 3)), src.float().var((0, 2, 3), unbiased=False)
    invstd = torch.rsqrt(var + 1e-5)
    gamma, beta = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.3
    scale = gamma * invstd
    norm = torch.nn.BatchNorm2d(c)
    with torch.no_grad():
        norm.weight.copy_(gamma), norm.bias.copy_(beta)
    plan = _Plan(mean, invstd, scale, beta - mean * scale, var, norm)
    weight = torch.randn(out, c, 1, 1, generator=g).to(dtype)
    grad = torch.randn(n, out, h, w, generator=g).contiguous(memory_format=torch.channels_last).to(dtype)
    return {"buffer": buffer, "src": src, "plan": plan, "gamma": gamma, "beta": beta, "weight": weight, "grad": grad}


def reference(p: dict) -> dict:
    """The same first stage in float64 autograd, the statistics held fixed (they are the block's)."""
    plan = p["plan"]
    x = p["src"].double().requires_grad_()
    weight = p["weight"].double().requires_grad_()
    gamma, beta = p["gamma"].double().requires_grad_(), p["beta"].double().requires_grad_()
    shape = (1, -1, 1, 1)
    xhat = (x - plan.mean.double().view(shape)) * plan.invstd.double().view(shape)
    out = torch.nn.functional.conv2d(torch.relu(xhat * gamma.view(shape) + beta.view(shape)), weight)
    out.backward(p["grad"].double())
    # dL/dx̂ = γ·dy: what the kernel adds into the accumulator with coef = γ
    xhat = x.grad / plan.invstd.double().view(shape)
    return {"out": out.detach(), "weight": weight.grad, "gamma": gamma.grad, "beta": beta.grad, "xhat": xhat}


TOLERANCES = {torch.float32: 1e-5, torch.float16: 3e-3}


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> bool:
    return float((got.double() - want).abs().max() / want.abs().max()) < TOLERANCES[dtype]


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_prologue_conv_kernel(dtype):
    seed = fresh_seed()
    p = problem(dtype, seed)
    n, _, h, w = p["src"].shape
    out = torch.full((n, h, w, p["weight"].shape[0]), float("nan"), dtype=dtype)  # poisoned: every element written
    got = kernels.prologue_conv(p["src"], p["plan"].scale, p["plan"].shift, p["weight"], out=out)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.isnan().any()
    assert close(got, reference(p)["out"], dtype), seed


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_prologue_backward_kernel(dtype):
    seed = fresh_seed()
    p = problem(dtype, seed)
    want = reference(p)
    before = torch.randn_like(p["buffer"], dtype=torch.float32).to(dtype)  # an accumulator already holding sums
    accumulated = before.clone(memory_format=torch.channels_last)
    c = p["src"].shape[1]
    grad_w, grad_gamma, grad_beta = kernels.prologue_backward(
        p["src"], p["plan"], p["weight"], p["grad"], accumulated[:, :c], p["gamma"]
    )
    assert close(grad_w, want["weight"], dtype), seed
    assert close(grad_gamma, want["gamma"], dtype) and close(grad_beta, want["beta"], dtype), seed
    assert close(accumulated[:, :c].double() - before[:, :c].double(), want["xhat"], dtype), seed
    assert torch.equal(accumulated[:, c:], before[:, c:]), "a channel beyond the prefix was written"


@needs_interpreter
def test_lowering_with_kernels_equals_naive(monkeypatch):
    """The whole block with its first stages in the kernels: the kernels ran, and naive's results came out."""
    monkeypatch.setenv("DNETC_KERNELS", "triton")
    calls = {"forward": 0, "backward": 0}
    for name, key in (("prologue_conv", "forward"), ("prologue_backward", "backward")):
        original = getattr(kernels, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernels, name, counted)
    seed = fresh_seed()
    naive, fused, x = pair(dsl.parse(SMALL.format(p=0.2)), torch.float32, True, seed, batch=2)
    errors = relative(step(fused, x, seed), step(naive, x, seed))
    assert calls == {"forward": 5, "backward": 5}  # one per dense layer
    assert max(errors.values()) < 1e-4, (seed, max(errors, key=errors.__getitem__))


def test_kernels_stay_off_where_they_do_not_apply(monkeypatch):
    monkeypatch.setenv("DNETC_KERNELS", "aten")
    conv = torch.nn.Conv2d(8, 16, 1, bias=False)
    src = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert not kernels.supported(conv, src)
    monkeypatch.setenv("DNETC_KERNELS", "triton")
    assert kernels.supported(conv, src) == (kernels.triton is not None and kernels.INTERPRET)
    assert not kernels.supported(conv, src.contiguous())  # NCHW: not a matrix with unit column stride
    assert not kernels.supported(torch.nn.Conv2d(8, 16, 3, padding=1, bias=False), src)
    torch.use_deterministic_algorithms(True)
    try:
        assert not kernels.supported(conv, src)  # their reductions add atomically
    finally:
        torch.use_deterministic_algorithms(False)


def test_choice_is_timed_once_per_shape_and_cached(monkeypatch, tmp_path):
    """`auto` on a GPU: both candidates timed once, the faster kept in memory and on disk; not timed
    during a CUDA graph's capture. (A stand-in for CUDA's clock: each candidate's call takes a known time.)"""
    cost = {"triton": 1.0, "aten": 3.0}
    clock = {"now": 0.0}

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            self.at = 0.0

        def record(self) -> None:
            self.at = clock["now"]

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, end: Event) -> float:
            return end.at - self.at

    calls = {"triton": 0, "aten": 0}

    def candidate(name: str):
        def run() -> None:
            calls[name] += 1
            clock["now"] += cost[name]

        return run

    monkeypatch.setenv("DNETC_KERNELS", "auto")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.setattr(kernels, "_choices", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a GPU")
    monkeypatch.setattr(torch.cuda, "Event", Event)
    capturing = {"now": False}
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing["now"])
    both = lambda: (candidate("triton"), candidate("aten"))  # noqa: E731
    capturing["now"] = True
    assert kernels.choose("a shape", both) is False and calls == {"triton": 0, "aten": 0}  # never timed in a capture
    capturing["now"] = False
    assert kernels.choose("a shape", both) is True and calls == {"triton": 6, "aten": 6}
    assert kernels.choose("a shape", both) is True and calls == {"triton": 6, "aten": 6}  # remembered
    cost["aten"] = 0.5
    assert kernels.choose("another shape", both) is False
    monkeypatch.setattr(kernels, "_choices", None)  # a new process: read from the cache file
    assert kernels.choose("a shape", lambda: pytest.fail("timed again")) is True
    assert len(json.loads((tmp_path / "dnetc" / "kernels.json").read_text())) == 2


def test_the_trainer_trains_it_as_it_trains_naive(tmp_path):
    """Ten SGD steps with dropout through the trainer: the fused lowering's weights follow naive's."""
    from dnetc.runtime.launch import plan
    from dnetc.runtime.train import Trainer

    weights = {}
    for memory in ("naive", "fused"):
        flags = {"epochs": 1, "max_steps": 10, "deterministic": True, "device": "cpu", "precision": "fp32"}
        overrides = {"depth": 10, "growth": 8, "dropout": 0.2}
        flags["memory"] = memory
        run = plan("densenet_bc", "digits", overrides=overrides, flags=flags, out=tmp_path / memory)
        try:
            t = Trainer(run)
            assert t.model.memory == memory
            t.train()
        finally:  # `deterministic` is process-wide: later tests need the kernels, which it turns off
            torch.use_deterministic_algorithms(False)
        weights[memory] = {k: v.double() for k, v in t.model.state_dict().items() if v.is_floating_point()}
    errors = relative(weights["fused"], weights["naive"])
    assert max(errors.values()) < 1e-3, max(errors, key=errors.__getitem__)


@needs_interpreter
def test_kernels_under_autocast_multiply_in_its_dtype_both_ways(monkeypatch):
    """float16 autocast: the forward kernel and the backward ones (which run outside autocast) multiply
    in float16, as the library convolutions do, and the step comes out as the ATen path's."""
    seen = []
    original = kernels.prologue_backward

    def spied(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("autocast"))
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "prologue_backward", spied)
    seed = fresh_seed()
    _, fused, x = pair(dsl.parse(SMALL.format(p=0.0)), torch.float32, True, seed, batch=2)
    results = {}
    for mode in ("aten", "triton"):
        monkeypatch.setenv("DNETC_KERNELS", mode)
        with torch.autocast("cpu", dtype=torch.float16):
            results[mode] = step(fused, x, seed)
        for bn in fused.modules():  # the same starting statistics for the second run
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.reset_running_stats()
    assert seen == [torch.float16] * 5
    assert results["triton"]["output"].dtype == results["aten"]["output"].dtype
    errors = relative(results["triton"], results["aten"])
    assert statistics.median(errors.values()) < 1e-2, (seed, errors)


def test_a_constant_channel_keeps_finite_statistics():
    """A channel constant over the batch (a dead ReLU's) has variance 0: its running variance stays
    finite and its gradient is naive's (BN divides by sqrt(eps) there)."""
    seed = fresh_seed()
    g = compiler.build_graph(dsl.load("densenet_bc", **REDUCED["densenet_bc"]))
    torch.manual_seed(seed)
    naive = emit(g, "naive").double()
    fused = emit(g, "fused").double()
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(3, naive.features.denseblock1.denselayer1.norm1.num_features, 16, 16, dtype=torch.float64)
    x[:, 0] = 0.5
    results = []
    for model in (naive, fused):
        block = model.features.denseblock1
        source = x.clone().requires_grad_()
        out = block(source)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        results.append((source.grad, block.denselayer1.norm1.running_var.clone()))
    (grad_naive, var_naive), (grad_fused, var_fused) = results
    assert torch.isfinite(var_fused).all() and torch.allclose(var_fused, var_naive), seed
    assert torch.allclose(grad_fused, grad_naive, rtol=1e-8, atol=1e-8), seed
