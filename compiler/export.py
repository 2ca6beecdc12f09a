"""Export a compiled module for deployment: ONNX with a dynamic batch dimension.

The naive lowering is exported: every lowering computes the same function, and inference keeps
nothing for a backward pass. torch's exporter (torch.export, `dynamo=True`) needs `onnxscript`;
`pip install 'dnetc[onnx]'` installs it with onnx and onnxruntime.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch
from torch import nn


class ExportError(Exception):
    """What stops an export: a missing package, or a path that cannot be written."""


def onnx(model: nn.Module, shape: tuple[int, ...], path: str | Path, opset: int | None = None) -> Path:
    """Write `model` (in eval mode) to an ONNX file whose input `input` is (batch, *shape) for any
    batch and whose output is `output`; the weights are stored in the one file."""
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs onnxscript: pip install 'dnetc[onnx]'") from None
    path = Path(path)
    was_training = model.training
    model.eval()
    x = torch.randn(2, *shape)
    batch = torch.export.Dim("batch", min=1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
            )
    finally:
        model.train(was_training)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        program.save(tmp, external_data=False)
        os.replace(tmp, path)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
