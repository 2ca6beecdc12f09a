"""The training step: device-side sums, the state a CUDA-graph capture puts back, no host reads."""

from __future__ import annotations

import pytest
import torch

from dnetc.runtime import optim
from dnetc.runtime.config import resolve
from dnetc.runtime.launch import plan
from dnetc.runtime.step import WINDOW, Meter, module_refusal
from dnetc.runtime.train import Trainer


def test_the_meter_sums_on_the_device_and_keeps_the_first_bad_step():
    m = Meter(torch.device("cpu"))
    m.reset(5)
    for loss, hits in ((1.5, 3.0), (2.0, 4.0), (float("nan"), 1.0), (float("inf"), 2.0), (1.0, 2.0)):
        m.add(torch.tensor(loss * 4), torch.tensor(hits), 4)
    t = m.read()
    assert t.seen == 20 and t.hits == 12 and t.bad_step == 7 and t.bad_loss != t.bad_loss  # step 5 + 2; NaN
    m.reset(0)
    m.add(torch.tensor(2.0), torch.tensor(1.0), 2)
    t = m.read()
    assert (t.loss, t.hits, t.seen, t.bad_step) == (2.0, 1.0, 2.0, None)


def _cuda_like(name: str):
    """The optimizer as CUDA builds it (fused kernels, the learning rate a tensor), on the CPU."""
    config = resolve("digits", device="cpu", optimizer=name)
    return lambda params: optim.OPTIMIZERS[name].build(params, torch.tensor(config.lr), config, CUDA_LIKE)


class _Device:
    type = "cuda"


CUDA_LIKE = _Device()


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
@pytest.mark.parametrize("kernels", ["cpu", "cuda's"])
def test_a_zeroed_optimizer_state_steps_as_a_fresh_one(name, kernels):
    """What a CUDA-graph capture relies on (runtime.step): after its warm-up steps the optimizer's
    state is zeroed, and the first replayed step must be the fresh run's first step, bit for bit."""
    assert optim.OPTIMIZERS[name].zero_state_is_fresh
    config = resolve("digits", device="cpu", optimizer=name)
    make = _cuda_like(name) if kernels == "cuda's" else lambda ps: optim.build(ps, config, torch.device("cpu"))[0]
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    runs = []
    for zeroed in (False, True):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = make(params)
        if zeroed:  # a step creates the state; zero it and put the parameters back, as the capture does
            for p, g in zip(params, grads[0], strict=True):
                p.grad = g.clone()
            opt.step()
            with torch.no_grad():
                for p, s in zip(params, start, strict=True):
                    p.copy_(s)
            for state in opt.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        v.zero_()
        for g_step in grads:
            for p, g in zip(params, g_step, strict=True):
                p.grad = g.clone()
            opt.step()
        runs.append([p.detach().clone() for p in params])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def _trainer(tmp_path, **flags) -> Trainer:
    flags = {"epochs": 1, "deterministic": True, "device": "cpu", **flags}
    return Trainer(plan("densenet_bc", "digits", overrides={"depth": 10, "growth": 8}, flags=flags, out=tmp_path))


def test_putting_the_warm_up_back_restores_every_tensor_in_place(tmp_path):
    """dnetc.runtime.step's capture warms up with real steps, then puts every tensor back where the graph
    will find it: parameters, buffers, the optimizer's state (zeroed where it is new), the EMA, the
    meter. Checked here on the CPU, where the same code runs without the graph."""
    t = _trainer(tmp_path, ema=0.9)
    step = t.train_step
    before = {id(x): x.detach().clone() for x in step.state_tensors()}
    addresses = {id(x): x.data_ptr() for x in step.state_tensors()}
    rng = torch.get_rng_state()
    t.meter.reset(0)
    batches = t.data.batches(torch.arange(len(t.data.train)), 0, 3, 64, t.world, True, 0, 0)
    for inputs, size in batches:
        step.body(inputs, size)
    new = [x for x in step.state_tensors() if id(x) not in before]
    assert new and all(float(x.abs().sum()) != 0 for x in new)  # the optimizer's state, made by the steps
    changed = [x for x in step.state_tensors() if id(x) in before and not torch.equal(x, before[id(x)])]
    assert changed  # the steps moved the weights, the statistics, the EMA and the meter
    torch.rand(3)  # and the RNG
    step._put_back(before, (rng, None))
    assert all(torch.equal(x, before[id(x)]) for x in step.state_tensors() if id(x) in before)
    assert all(int(x.count_nonzero()) == 0 for x in new)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(x.data_ptr() == addresses[id(x)] for x in step.state_tensors() if id(x) in addresses)


def test_the_training_loop_reads_the_device_once_a_window(tmp_path, monkeypatch):
    """No per-step .item(): the loop's host reads of device values are a few per window of steps and
    per evaluation, however many steps an epoch has."""
    t = _trainer(tmp_path)
    reads = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            reads["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    t.train()
    steps = t.steps_per_epoch()
    assert steps > WINDOW
    # a snapshot and a mark per window, the epoch's drain, the guard before saving, the evaluation
    assert reads["n"] <= 2 * (steps // WINDOW) + 8, reads["n"]
    reads["n"] = 0
    t.evaluate()
    assert reads["n"] == 1  # the evaluation's sums, read once


def test_each_lowering_says_whether_a_cuda_graph_can_capture_it():
    """The shared lowering replays dropout from a saved RNG state (no graph can hold it) and says so;
    checkpointing stashes no RNG state (its recomputed segments draw none) and fused keeps its masks,
    so they can be captured."""
    from dnetc import compiler

    cases = [("shared", 0.2, True), ("shared", 0.0, False), ("checkpoint", 0.2, False), ("fused", 0.2, False)]
    for memory, dropout, refused in cases:
        model = compiler.compile("densenet_bc", depth=10, growth=8, dropout=dropout, memory=memory)
        why = module_refusal(model)
        assert (why is not None) == refused, (memory, dropout, why)
    assert "--memory fused" in module_refusal(compiler.compile("densenet_bc", depth=10, dropout=0.2, memory="shared"))
