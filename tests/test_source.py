"""`--emit python`: standalone source that imports only torch and equals the compiled module."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnetc import compiler, dsl
from dnetc.compiler.emit import emit
from dnetc.compiler.modules import DenseBlock
from dnetc.compiler.source import python_source
from dnetc.runtime import checkpoint

from .conftest import ZOO_DISTINCT
from .test_memory import REDUCED, assert_same, reduced, step

RUFF = [sys.executable, "-m", "ruff"]
RUFF_RULES = ["--isolated", "--line-length", "120", "--select", "E,F,W,I,B,UP,SIM,RUF"]

MIXED = """
network mixed {
    input 2 x 20
    stem { conv(5, 8, stride = 2) norm relu maxpool(3, stride = 2, padding = 1) }
    dense(2, 4, bottleneck = none, dropout = 0.1)
    transition(compression = 0.75, dropout = 0.1)
    dense(2, 6, bottleneck = 2)
    head classifier(3)
}
"""
VOLUME = """
network volume(growth = 4) {
    input 1 x 8 x 8 x 8
    stem conv(3x3x3, 2 * growth)
    repeat 2 separated by transition(compression = 0.5) { dense(2, growth) }
    head classifier(2)
}
"""


BLURRED = """
network blurred(dims = 2, size = 16) {
    input 3 x [size] * dims
    stem { conv(3, 8) norm act maxpool(3, stride = 1, padding = 1) blurpool(stride = 2, kernel = 4) }
    repeat 2 separated by transition(compression = 0.5, blur = true) { dense(2, 4) }
    head classifier(5)
}
"""


def load_source(text: str, folder: Path, name: str):
    """Import emitted source from a file, as a user of it would."""
    path = folder / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def builder(module, g):
    """The network's builder in an emitted file: named after the network, as torchvision's are."""
    return getattr(module, g.graph["name"])


def check_equal(network: dsl.Network, folder: Path, memory_efficient: bool) -> None:
    """The emitted builder's network equals the compiled one: keys, a training step and inference (float64),
    with the flag that recomputes each dense layer on or off."""
    g = compiler.build_graph(network)
    torch.manual_seed(0)
    reference = emit(g, "naive").double()
    module = load_source(python_source(g), folder, f"emitted_{network.name}_{memory_efficient}")
    build = builder(module, g)
    has_flag = "memory_efficient" in inspect.signature(build).parameters
    assert has_flag == any(isinstance(m, DenseBlock) for m in reference.modules())
    model = build(**({"memory_efficient": memory_efficient} if has_flag else {})).double()
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(3, *g.nodes["input"]["shape"], dtype=torch.float64)
    assert_same(step(model, x), step(reference, x), 1e-10)
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=0, atol=1e-10)


def test_emitted_source_imports_only_torch():
    text = python_source(compiler.build_graph(dsl.load("densenet121")))
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"torch"}


def test_runs_of_layers_are_loops():
    """densenet121's 58 dense layers are four loops, one a block; its transitions stay written out."""
    text = python_source(compiler.build_graph(dsl.load("densenet121")))
    assert text.count("DenseLayer()") == 4
    for layers in (6, 12, 24, 16):
        assert f"in range({layers}):" in text
    assert text.count("Transition()") == 3
    assert len(text[text.index("def densenet121(") :].splitlines()) < 100


def test_the_building_blocks_are_copied_as_defined():
    """Each block is defined once: the file holds compiler/modules.py's classes (and the checkpoint
    lowering's block) as written there, not a second version."""
    from dnetc.compiler import memory, modules

    text = python_source(compiler.build_graph(reduced("hardnet39ds")))
    for block in (modules.Layer, modules.DenseBlock, modules.DenseNet, modules.initialise, memory.CheckpointDenseBlock):
        assert inspect.getsource(block) in text
    assert inspect.getsource(checkpoint.load_weights) in text


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["naive", "memory_efficient"])
@pytest.mark.parametrize("name", ZOO_DISTINCT)
def test_emitted_zoo_model_equals_compiled(name, memory_efficient, tmp_path):
    check_equal(reduced(name), tmp_path, memory_efficient)


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["naive", "memory_efficient"])
@pytest.mark.parametrize("text", [MIXED, VOLUME], ids=["mixed-1d-dropout", "3d"])
def test_emitted_variants_equal_compiled(text, memory_efficient, tmp_path):
    check_equal(dsl.parse(text), tmp_path, memory_efficient)


def test_emitted_dropout_model_equals_compiled(tmp_path):
    check_equal(dsl.load("densenet_bc", **REDUCED["densenet_bc"], dropout=0.2), tmp_path, True)


def test_memory_efficient_source_keeps_running_statistics(tmp_path):
    """Recomputation in the backward pass must not update batch-norm statistics a second time."""
    g = compiler.build_graph(reduced("densenet_bc_100_12"))
    build = builder(load_source(python_source(g), tmp_path, "stats"), g)
    torch.manual_seed(0)
    plain, efficient = build(), build(memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(4, *g.nodes["input"]["shape"])
    for model in (plain, efficient):
        model(x).sum().backward()
    key = "features.denseblock1.denselayer1.norm1.num_batches_tracked"
    assert efficient.state_dict()[key].item() == 1
    for k, v in plain.state_dict().items():
        assert torch.allclose(efficient.state_dict()[k].float(), v.float(), atol=1e-6), k


SOURCES = {
    "densenet121": lambda: dsl.load("densenet121"),
    "densenet_bc_dropout": lambda: dsl.load("densenet_bc", dropout=0.2),
    "densenet_40_12": lambda: dsl.load("densenet_40_12"),
    "figure1": lambda: dsl.load("figure1"),
    "mixed": lambda: dsl.parse(MIXED),
    "volume": lambda: dsl.parse(VOLUME),
    "fc_densenet103": lambda: dsl.load("fc_densenet103"),
    "peleenet": lambda: dsl.load("peleenet"),
    "peleenet_instance_gelu": lambda: dsl.parse(
        'use peleenet from "peleenet.dnet"\nnetwork p = peleenet(blocks = [2, 2, 2, 2])', str(dsl.zoo_dir() / "p.dnet")
    ),
    "fc_densenet_small": lambda: dsl.parse(
        'use fc_densenet from "fc_densenet.dnet"\nnetwork f = fc_densenet(down = [2], middle = 2, up = [2])',
        str(dsl.zoo_dir() / "f.dnet"),
    ),
    "blurred_group_silu": lambda: dsl.parse(BLURRED.replace("{\n", "{\n normalization group(2) activation silu\n", 1)),
    "blurred_3d_prelu": lambda: dsl.parse(BLURRED.replace("{\n", "{\n activation prelu\n", 1), dims=3, size=12),
    "ese_vovnet19b_dw": lambda: reduced("ese_vovnet19b_dw"),
    "hardnet39ds": lambda: reduced("hardnet39ds"),
    "msdnet": lambda: reduced("msdnet"),
}


@pytest.mark.skipif(shutil.which("ruff") is None and importlib.util.find_spec("ruff") is None, reason="needs ruff")
def test_emitted_source_passes_ruff(tmp_path):
    for name, load in SOURCES.items():
        (tmp_path / f"{name}.py").write_text(python_source(compiler.build_graph(load()), overrides=["depth=40"]))
    files = sorted(str(p) for p in tmp_path.glob("*.py"))
    lint = subprocess.run([*RUFF, "check", *RUFF_RULES, *files], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run(
        [*RUFF, "format", "--check", "--diff", *RUFF_RULES[:3], *files], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_header_gives_spec_overrides_params_and_macs():
    g = compiler.build_graph(dsl.load("densenet_bc", depth=40))
    text = python_source(g, overrides=["depth=40"])
    header = ast.get_docstring(ast.parse(text))
    assert "densenet_bc.dnet in dnetc's zoo" in header
    assert "--set depth=40" in header
    assert f"{g.graph['params']:,} parameters" in header
    assert f"{g.graph['macs']:,} multiply-adds" in header


def test_cli_emits_python_that_loads_a_dnetc_checkpoint(tmp_path, dnetc):
    target = tmp_path / "net.py"
    result = dnetc("densenet_bc", "--set", "depth=16", "--emit", "python", str(target))
    assert result.returncode == 0, result.stderr
    assert f"wrote {target}" in result.stdout
    module = load_source(target.read_text(), tmp_path, "net")
    torch.manual_seed(1)
    trained = compiler.compile("densenet_bc", depth=16)
    checkpoint.save({"model": trained.state_dict(), "epoch": 0}, tmp_path / "best.pt")
    model = module.densenet_bc()
    model.load_state_dict(module.load_weights(str(tmp_path / "best.pt")))
    model.eval(), trained.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    corrupt = bytearray((tmp_path / "best.pt").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # inside the payload
    (tmp_path / "bad.pt").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="corrupt"):
        module.load_weights(str(tmp_path / "bad.pt"))


def test_cli_emits_python_to_stdout_with_the_specs_lowering(dnetc):
    result = dnetc("densenet_bc", "--set", "depth=16", "--memory", "shared", "--emit", "python")
    assert result.returncode == 0, result.stderr
    assert "def densenet_bc(classes: int = 10, memory_efficient: bool = True) -> DenseNet:" in result.stdout
    compile(result.stdout, "emitted.py", "exec")


def test_cli_refuses_an_unknown_emit_format(dnetc):
    result = dnetc("densenet_bc", "--emit", "java")
    assert result.returncode == 2
    assert "python" in result.stderr
