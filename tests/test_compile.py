"""``torch.compile(fullgraph=True)`` traces through the ops (fake impls) and the fused model.

Compiles are slow on a 2-core machine: one fused model, a few single-op graphs.
"""

from __future__ import annotations

import pytest
import torch

import resnet_fused
from resnet_fused import ops
from resnet_fused.reference import conv_bn_act_reference
from resnet_fused.testing import random_bn_params, randomize_batchnorm_, relative_error, tolerance


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _sample(generator, residual=True, n=2):
    x = torch.randn(n, 6, 11, 9, generator=generator)
    w = torch.randn(10, 6, 3, 3, generator=generator) * 0.2
    scale, shift = random_bn_params(10, generator)
    res = torch.randn(n, 10, 6, 5, generator=generator) if residual else None
    return x, w, scale, shift, res


@pytest.mark.parametrize("backend", ["auto", "cpu", "aten"])
def test_compile_op(backend, generator):
    x, w, scale, shift, res = _sample(generator)

    def f(x, w, scale, shift, res):
        return ops.conv_bn_act(x, w, scale, shift, res, 2, 1, True, backend=backend)

    compiled = torch.compile(f, fullgraph=True)
    y = compiled(x, w, scale, shift, res)
    eager = f(x, w, scale, shift, res)
    assert y.shape == eager.shape == (2, 10, 6, 5)
    assert relative_error(y, eager) <= tolerance(torch.float32, "op")
    ref = conv_bn_act_reference(x.double(), w.double(), scale, shift, res.double(), (2, 2),
                                (1, 1), True)
    assert relative_error(y, ref) <= tolerance(torch.float32, "op")


def test_compile_raw_ops_dynamic(generator):
    """The fake impls under dynamic shapes: one graph, two batch sizes, conv + add_relu."""

    def f(x, w, scale, shift, res):
        y = torch.ops.resnet_fused.conv_bn_act(x, w, scale, shift, None, [2, 2], [1, 1], False)
        return torch.ops.resnet_fused.add_relu(y, res)

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for n in (2, 3):
        x, w, scale, shift, res = _sample(generator, n=n)
        y = compiled(x, w, scale, shift, res)
        ref = torch.relu(
            conv_bn_act_reference(x.double(), w.double(), scale, shift, None, (2, 2), (1, 1),
                                  False) + res.double())
        assert y.shape == (n, 10, 6, 5)
        assert relative_error(y, ref) <= tolerance(torch.float32, "op")


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_compile_fused_model(backend, generator):
    """fuse(resnet18) at 32x32 (layer4 runs on 1x1 maps) compiles in one graph, same output."""
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    fused = resnet_fused.fuse(model, backend=backend)
    x = torch.randn(2, 3, 32, 32, generator=generator)
    compiled = torch.compile(fused, fullgraph=True)
    with torch.no_grad():
        y = compiled(x)
        eager = fused(x)
        ref = model.double()(x.double())
    assert y.shape == (2, 10)
    assert relative_error(y, eager) <= tolerance(torch.float32, "op")
    assert relative_error(y, ref) <= tolerance(torch.float32, "model")
