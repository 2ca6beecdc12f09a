"""The memory-efficient lowerings compute what the naive one computes, and the estimator predicts their memory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnetc import compiler, dsl
from dnetc.compiler.emit import emit
from dnetc.compiler.estimate import estimate
from dnetc.compiler.lowerings import LOWERINGS as LOWERING_NAMES
from dnetc.compiler.memory import choose_lowering
from dnetc.compiler.modules import DenseLayer

from .conftest import ZOO_DISTINCT
from .fuzzing import BESIDE, CONNECTIVITIES, GENERATED_LAYERS, LAYER_CHOICES

LOWERINGS = ("checkpoint", "shared", "fused")
# fused's arithmetic is naive's in another order (statistics once, BN folded into a scale and shift), so
# at float32 a ReLU whose input rounds across zero may flip, and with it a gradient: it is held to naive
# here in float64, and in float32 on small networks in test_fused.py
ROUNDS_DIFFERENTLY = ("fused",)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}

# every zoo model at reduced size: fewer layers, a small input
REDUCED = {
    "densenet": {"depth": 10, "size": 16},
    "densenet_bc": {"depth": 16, "size": 16},
    "densenet_imagenet": {"blocks": [2, 2, 2, 2], "size": 64},
    "fc_densenet": {"down": [2, 2], "middle": 2, "up": [2, 2], "size": 16},
    "hardnet": {
        "stem": [8, 12],
        "growth": [4, 6],
        "blocks": [4, 3],
        "widths": [16, 20],
        "stages": [[0], [1]],
        "drops": [0, 0.1],
        "size": 16,
    },
    "vovnet": {"stem": [8, 8, 12], "mid": [6, 8], "out": [12, 16], "layers": 3, "blocks": [1, 2], "size": 16},
    "condensenet": {"stages": [2, 2], "growth": [8, 16], "size": 16},
    "dpn": {
        "widths": [8, 8, 16, 16],
        "blocks": [1, 2, 1, 2],
        "inc": [4, 4, 8, 8],
        "init": 8,
        "k_r": 32,
        "groups": 2,
        "size": 64,
    },
    # the input keeps its size (the classifiers need 7x7 or more at the coarsest scale); three scales and
    # layers so many that the last keeps only the coarsest, whose maps alone the head reads
    "msdnet": {
        "blocks": 3,
        "step": 1,
        "base": 1,
        "channels": 4,
        "growth": 4,
        "width": 8,
        "factors": [1, 2, 4],
        "bottlenecks": [1, 2, 4],
    },
}


def reduced(name: str) -> dsl.Network:
    net = dsl.load(name)
    matching = [f for f in REDUCED if set(REDUCED[f]) <= set(net.parameters)]
    family = max(matching, key=lambda f: len(REDUCED[f]), default=None)  # the family that fits it best
    if family is None:
        return net  # figure1 is small already
    settings = dict(REDUCED[family])
    if net.parameters.get("dims", 2) == 3:  # volumes: a smaller side
        settings["size"] = 32
    return dsl.load(name, **settings)


def step(model: torch.nn.Module, x: torch.Tensor, seed: int = 7) -> dict[str, torch.Tensor]:
    """One training step's outputs, gradients and BN statistics, keyed by name."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # the same dropout draws for every lowering
    out = model(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    result = {"output": out.detach(), "input.grad": x.grad}
    result |= {f"{k}.grad": p.grad for k, p in model.named_parameters()}
    result |= {k: b.detach().clone() for k, b in model.named_buffers()}
    return result


def assert_same(got: dict, expected: dict, tolerance: float, floor: float = 0.0) -> None:
    """Each tensor within `tolerance` of its largest element (or of `floor`, for gradients that are
    zero but for rounding, such as a conv bias before a batch norm)."""
    assert got.keys() == expected.keys()
    for k, e in expected.items():
        g = got[k]
        assert g is not None and e is not None, k
        if not e.is_floating_point():
            assert torch.equal(g, e), k
            continue
        scale = e.abs().max().clamp_min(max(floor, torch.finfo(e.dtype).tiny))
        assert ((g - e).abs().max() / scale).item() <= tolerance, k


def compare(network: dsl.Network, dtype: torch.dtype, batch: int = 3, channels_last: bool = False) -> None:
    g = compiler.build_graph(network)
    torch.manual_seed(0)
    naive = emit(g, "naive").to(dtype)
    x = torch.randn(batch, *g.nodes["input"]["shape"], dtype=dtype)
    if channels_last:
        naive = naive.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    state = {k: v.clone() for k, v in naive.state_dict().items()}
    expected = step(naive, x)
    for lowering in LOWERINGS:
        if lowering in ROUNDS_DIFFERENTLY and dtype != torch.float64:
            continue
        model = emit(g, lowering).to(dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.load_state_dict(state)
        # a gradient that cancels to 1e-5 of its terms (norm0's γ) keeps only 1e-8 of float64's digits
        if lowering in ROUNDS_DIFFERENTLY:
            assert_same(step(model, x), expected, 1e-8, floor=1e-4)
        else:
            assert_same(step(model, x), expected, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", ZOO_DISTINCT)
def test_zoo_lowerings_equal_naive(name, dtype):
    compare(reduced(name), dtype)


@pytest.mark.parametrize("name", ["densenet_bc", "densenet"])
def test_lowerings_equal_naive_with_dropout(name):
    compare(dsl.load(name, **REDUCED[name], dropout=0.2), torch.float64)


@st.composite
def small_specs(draw) -> dsl.Network:
    lines = [*GENERATED_LAYERS.splitlines(), f"network n {{ input 2 x {draw(st.sampled_from([4, 8, 12]))} x 8"]
    lines.append("stem conv(3, 6)")
    blocks = draw(st.integers(1, 3))
    head = draw(st.booleans())
    for b in range(blocks):
        if head and draw(st.booleans()):  # an early exit before the block
            lines.append("exit classifier(3)")
        bottleneck = draw(st.sampled_from(["none", "1", "2", "4"]))
        dropout = draw(st.sampled_from(["0", "0.2"]))
        # mostly DenseNet's own blocks (the lowerings' subject), some of the other connectivities and layers
        connect = draw(st.sampled_from(["all"] * 4 + CONNECTIVITIES[1:]))
        layer = draw(st.sampled_from([""] * 3 + LAYER_CHOICES[1:]))
        settings = f"layer = {layer}" if layer else f"bottleneck = {bottleneck}, dropout = {dropout}"
        beside = BESIDE.get(connect, "")
        lines.append(
            f"dense({draw(st.integers(1, 4))}, {draw(st.integers(1, 6))}, connect = {connect}, {settings}{beside})"
        )
        if b < blocks - 1:
            lines.append(f"transition({draw(st.sampled_from(['0.5', '1', '0.7']))}, {dropout})")
    if head:
        lines.append("head classifier(3)")
    return dsl.parse("\n".join([*lines, "}"]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_specs(), st.sampled_from([torch.float64, torch.float32]))
def test_generated_specs_lowerings_equal_naive(network, dtype):
    compare(network, dtype, batch=2)


def test_channels_last():
    compare(reduced("densenet121"), torch.float32, channels_last=True)


def test_running_statistics_are_updated_once():
    network = reduced("densenet_bc_100_12")
    for lowering in ("naive", *LOWERINGS):
        model = compiler.compile(network, memory=lowering)
        step(model, torch.randn(2, 3, 16, 16))
        norm = model.features.denseblock1.denselayer1.norm1
        assert norm.num_batches_tracked.item() == 1, lowering
        # momentum 0.1 from mean 0, var 1: one update moves them by exactly a tenth of the batch's
        assert 0 < norm.running_mean.abs().max() < 1


def test_eval_mode_and_inference_equal_naive():
    network = reduced("densenet169")
    naive = compiler.compile(network).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = naive(x)
    for lowering in LOWERINGS:
        model = compiler.compile(network, memory=lowering).eval()
        model.load_state_dict(naive.state_dict())
        with torch.no_grad():
            assert torch.equal(model(x), expected)
        assert_same(step(model, x), step(naive, x), 1e-5)  # eval mode with gradients (frozen BN)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_autocast_trains_close_to_naive(dtype):
    network = dsl.load("densenet_bc", **REDUCED["densenet_bc"], dropout=0.2)
    torch.manual_seed(0)
    naive = compiler.compile(network)
    x = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=dtype):
        expected = step(naive, x)
    model = compiler.compile(network, memory="shared")
    model.load_state_dict(naive.state_dict())
    with torch.autocast("cpu", dtype=dtype):
        got = step(model, x)
    for k in ("output", "input.grad", "features.denseblock1.denselayer1.conv1.weight.grad"):
        assert got[k].dtype == expected[k].dtype, k
        assert ((got[k].float() - expected[k].float()).abs().max() / expected[k].float().abs().max()) < 2e-2, k


@pytest.mark.parametrize("lowering", ["shared", "fused"])
def test_torch_compile_trains_the_buffer_lowerings(lowering):
    network = dsl.load("densenet_bc", **REDUCED["densenet_bc"], dropout=0.2)
    naive = compiler.compile(network).double()
    model = compiler.compile(network, memory=lowering).double()
    model.load_state_dict(naive.state_dict())
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    got = {k.removeprefix("_orig_mod."): v for k, v in step(compiled, x).items()}
    assert_same(got, step(naive, x), 1e-8, floor=1e-4)


@pytest.mark.parametrize("lowering", ["shared", "fused"])
def test_distributed_data_parallel(tmp_path, lowering):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        network = reduced("densenet_bc_100_12")
        naive = compiler.compile(network).double()
        model = compiler.compile(network, memory=lowering).double()
        model.load_state_dict(naive.state_dict())
        ddp = DistributedDataParallel(model)
        x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
        got = step(ddp, x)
        expected = step(naive, x)
        assert_same({k.removeprefix("module."): v for k, v in got.items()}, expected, 1e-8, floor=1e-4)
    finally:
        dist.destroy_process_group()


def test_weights_move_between_lowerings():
    a = compiler.compile("densenet_bc_100_12")
    b = compiler.compile("densenet_bc_100_12", memory="shared")
    assert list(a.state_dict()) == list(b.state_dict())
    assert b.load_state_dict(a.state_dict(), strict=True)


def test_spec_setting_cli_and_auto(monkeypatch):
    net = dsl.parse("network n { memory checkpoint input 3 x 8 x 8 dense(2, 4) }")
    assert compiler.compile(net).memory == "checkpoint"
    assert compiler.compile(net, memory="shared").memory == "shared"
    g = compiler.build_graph(dsl.load("densenet_bc_100_12"))
    need = estimate(g, "naive", 64).training
    monkeypatch.setattr("dnetc.compiler.memory.available_memory", lambda device=None: 10 * need)
    assert choose_lowering(g, "auto", 64) == "naive"
    monkeypatch.setattr("dnetc.compiler.memory.available_memory", lambda device=None: need)
    assert choose_lowering(g, "auto", 64) == "fused"  # the next fastest, at shared's memory
    monkeypatch.setattr("dnetc.compiler.memory.available_memory", lambda device=None: 1)
    least = min(LOWERING_NAMES, key=lambda x: estimate(g, x, 64).training)
    assert choose_lowering(g, "auto", 64) == least  # nothing fits: the least memory
    with pytest.raises(ValueError, match="memory must be one of"):
        compiler.compile("figure1", memory="lots")


def measured_saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward, each storage once, parameters and buffers left out; with
    checkpointing, the layer outputs that the checkpoints hold for recomputation count too."""
    owned = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in owned:
            seen[s.data_ptr()] = s.nbytes()
        return t

    held: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: held.append(o)) for m in model.modules() if isinstance(m, DenseLayer)
    ]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    for h in hooks:
        h.remove()
    if getattr(model, "memory", None) == "checkpoint":
        for t in held:
            seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
    return sum(seen.values())


@pytest.mark.parametrize("name", ZOO_DISTINCT)
def test_estimator_predicts_saved_memory(name):
    network = reduced(name)
    g = compiler.build_graph(network)
    for lowering in ("naive", *LOWERINGS):
        model = emit(g, lowering)
        got = measured_saved_bytes(model, torch.randn(2, *g.nodes["input"]["shape"]))
        predicted = estimate(g, lowering, batch=2).saved
        assert abs(predicted - got) <= 0.15 * got, (lowering, predicted, got)


def test_estimator_with_dropout_and_shared_linear_growth():
    for lowering in ("naive", *LOWERINGS):
        network = dsl.load("densenet_bc", **REDUCED["densenet_bc"], dropout=0.2)
        g = compiler.build_graph(network)
        got = measured_saved_bytes(emit(g, lowering), torch.randn(2, 3, 16, 16))
        assert abs(estimate(g, lowering, batch=2).saved - got) <= 0.15 * got
    # shared memory grows like the feature maps; naive memory faster
    small, big = (compiler.build_graph(dsl.load("densenet_bc", depth=d)) for d in (100, 250))
    feature_growth = sum(
        d["shape"][0] * d["shape"][1] ** 2 for n, d in big.nodes(data=True) if n.endswith("conv2")
    ) / sum(d["shape"][0] * d["shape"][1] ** 2 for n, d in small.nodes(data=True) if n.endswith("conv2"))
    shared = estimate(big, "shared").saved / estimate(small, "shared").saved
    naive = estimate(big, "naive").saved / estimate(small, "naive").saved
    assert abs(shared / feature_growth - 1) < 0.10
    assert naive > 1.5 * shared


# naive and the shared buffer; bench/memory.py measures every lowering (docs/performance.md)
@pytest.mark.parametrize("lowering", ["naive", "shared"])
def test_estimator_predicts_the_peak_resident_memory_of_a_step(lowering):
    """The benchmark's measurement, in a fresh subprocess: the rise of the peak RSS during a step."""
    import json
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    bench = ROOT / "bench" / "memory.py"
    run = {"what": "memory", "spec": "densenet_bc_100_12", "set": {}, "batch": 8, "lowering": lowering, "device": "cpu"}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(
        [sys.executable, str(bench), "--child", json.dumps(run)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(r["estimated_bytes"] - r["peak_bytes"]) <= 0.15 * r["peak_bytes"], r
