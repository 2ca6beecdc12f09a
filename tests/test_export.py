"""`--export onnx`: a dynamic batch dimension, checked against the module with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnetc import compiler, dsl
from dnetc.compiler.emit import emit
from dnetc.compiler.export import onnx

from .test_exits import SMALL_MSDNET
from .test_families import EVERYTHING, network
from .test_memory import reduced
from .test_source import VOLUME

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def outputs_agree(path, model, shape) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 5):  # neither is the batch the export traced
        x = torch.randn(batch, *shape)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        assert got.shape == expected.shape
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


@pytest.mark.parametrize(
    "network",
    [
        reduced("densenet121"),
        dsl.parse(VOLUME),
        reduced("fc_densenet103"),
        dsl.load("peleenet", blocks=[1, 1, 1, 1], size=64),
        dsl.load("densenet_bc", depth=16, norm="group(4)", act="silu"),
        network(EVERYTHING),
        dsl.load("msdnet", **SMALL_MSDNET),
    ],
    # DenseNet-BC is groupnorm-silu's network; multi-exit networks are MSDNet's case
    ids=[
        "densenet121",
        "3d",
        "fc_densenet",
        "peleenet",
        "groupnorm-silu",
        "layers-and-connectivities",
        "msdnet",
    ],
)
def test_onnx_matches_the_module_at_any_batch(network, tmp_path):
    g = compiler.build_graph(network)
    torch.manual_seed(0)
    model = emit(g)
    shape = tuple(g.nodes["input"]["shape"])
    onnx(model, shape, tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # weights inside, nothing left over
    assert outputs_agree(tmp_path / "m.onnx", model, shape) <= 1e-4


def test_cli_exports_with_weights(tmp_path, dnetc):
    torch.manual_seed(3)
    trained = compiler.compile("densenet_bc", depth=16)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    target = tmp_path / "bc.onnx"
    result = dnetc(
        "densenet_bc", "--set", "depth=16", "--weights", str(tmp_path / "w.pt"), "--export", "onnx", str(target)
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {target}" in result.stdout
    assert outputs_agree(target, trained, (3, 32, 32)) <= 1e-4


def test_cli_refuses_an_unknown_export_format(tmp_path, dnetc):
    result = dnetc("densenet_bc", "--export", "tflite", str(tmp_path / "m"))
    assert result.returncode == 2 and "onnx" in result.stderr
