"""dnetc's ImageNet DenseNets are torchvision's: same keys and shapes, same outputs."""

from __future__ import annotations

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from dnetc import compiler  # noqa: E402


@pytest.mark.parametrize("name", ["densenet121", "densenet161", "densenet169", "densenet201"])
def test_torchvision_weights_load_and_give_the_same_outputs(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None)
    # random statistics and affine parameters, so that eval mode exercises every BN fully
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            if isinstance(m, torch.nn.Linear):
                m.bias.uniform_(-0.1, 0.1)
    ours = compiler.compile(name)
    theirs = reference.state_dict()
    mine = ours.state_dict()
    assert list(mine) == list(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in theirs)
    ours.load_state_dict(theirs, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference.eval()(x)
        got = ours.eval()(x)
    assert expected.abs().max() > 1e-3  # a meaningful output, not all zeros
    assert (got - expected).abs().max().item() <= 1e-5
