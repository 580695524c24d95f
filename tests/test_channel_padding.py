"""Channel padding for the CUDA kernels' 16-byte rows (resnet_fused.cuda.channels): the stem's 3
input channels become 8 (fp16/bf16) or 4 (fp32) zero-padded ones, the fused conv's weight padded
once and reused while it is unchanged, gradients reaching the unpadded tensors.

The GPU decides only whether to pad (``needs_padding``); everything else runs here on the CPU,
through the raw op's CPU implementation. tests/test_cuda.py checks the fused stem on a GPU.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch

from resnet_fused import ops
from resnet_fused.cuda import channels
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.reference import conv_bn_act_reference
from resnet_fused.testing import random_bn_params, relative_error, tolerance


@pytest.mark.parametrize(("c", "dtype", "expected"), [
    (3, torch.bfloat16, 8), (3, torch.float16, 8), (3, torch.float32, 4), (8, torch.bfloat16, 8),
    (9, torch.bfloat16, 16), (64, torch.float32, 64), (5, torch.float32, 8)])
def test_aligned_channels(c, dtype, expected):
    assert channels.aligned_channels(c, dtype) == expected


def _fake(is_cuda: bool, c: int, dtype=torch.bfloat16, dim: int = 4):
    """Stands in for a tensor where only its device, rank, channels and dtype matter."""
    return types.SimpleNamespace(is_cuda=is_cuda, shape=(2, c, 9, 9)[:dim], dtype=dtype,
                                 dim=lambda: dim)


def test_needs_padding_on_cuda_for_cuda_and_auto_only():
    assert channels.needs_padding(_fake(True, 3), "cuda") == 8
    assert channels.needs_padding(_fake(True, 3), "auto") == 8
    assert channels.needs_padding(_fake(True, 3, torch.float32), "cuda") == 4
    assert channels.needs_padding(_fake(True, 3), "triton") is None  # masks channels itself
    assert channels.needs_padding(_fake(True, 64), "cuda") is None  # aligned already
    assert channels.needs_padding(_fake(False, 3), "cuda") is None  # CPU: oneDNN's own layout
    assert channels.needs_padding(_fake(True, 3, dim=3), "cuda") is None  # the op's error


def test_pad_channels_keeps_values_layout_and_gradient(generator):
    x = torch.randn(2, 3, 5, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = channels.pad_channels(x, 8)
    assert y.shape == (2, 8, 5, 7) and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y[:, :3], x) and not y[:, 3:].any()
    g = torch.randn(y.shape, generator=generator)
    y.backward(g)
    assert torch.equal(x.grad, g[:, :3])


def _stem(generator, dtype=torch.float32) -> FusedConvBNAct:
    weight = torch.randn(16, 3, 7, 7, generator=generator) * 0.1
    scale, shift = random_bn_params(16, generator)
    return FusedConvBNAct(weight.to(dtype), scale, shift, (2, 2), (3, 3), relu=True,
                          backend="auto")


def test_padded_weight_made_once_and_renewed_on_change(generator):
    stem = _stem(generator)
    cache = channels.PaddedWeight()
    first = cache.get(stem.weight, 8)
    assert first.shape == (16, 8, 7, 7) and torch.equal(first[:, :3], stem.weight)
    assert not first[:, 3:].any() and first.is_contiguous(memory_format=torch.channels_last)
    assert cache.get(stem.weight, 8) is first
    with torch.no_grad():
        stem.weight.mul_(2)  # an in-place write: a new version
    second = cache.get(stem.weight, 8)
    assert second is not first and torch.equal(second[:, :3], stem.weight)
    stem.weight = torch.nn.Parameter(stem.weight.detach().clone(), requires_grad=False)
    assert cache.get(stem.weight, 8) is not second  # a new tensor in its place
    cache.clear()
    assert cache._padded is None


def test_padded_weight_is_per_call_while_autograd_records(generator):
    weight = torch.randn(16, 3, 7, 7, generator=generator, requires_grad=True)
    cache = channels.PaddedWeight()
    padded = cache.get(weight, 8)
    assert padded.requires_grad and cache._padded is None
    padded.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))
    with torch.no_grad():  # nothing to record: cached
        assert cache.get(weight, 8) is cache.get(weight, 8)


@pytest.fixture
def pad_on_cpu(monkeypatch):
    """Makes the fused conv pad as it does on a GPU, so its path runs here."""
    monkeypatch.setattr(channels, "needs_padding",
                        lambda x, backend: channels.aligned_channels(x.shape[1], x.dtype))


def _reference(stem, x):
    return conv_bn_act_reference(x.double(), stem.weight.double(), stem.scale, stem.shift, None,
                                 stem.stride, stem.padding, stem.relu)


def test_fused_conv_pads_weight_once_on_the_raw_op_path(pad_on_cpu, generator):
    stem = _stem(generator)
    x = torch.randn(2, 3, 20, 18, generator=generator)
    x[0, 1, 4, 5] = float("nan")  # not all finite: the raw op runs (the fast path would not pad)
    with torch.no_grad():
        first = stem(x)
        padded = stem._padded_weight._padded
        again = stem(x)
    assert padded is not None and padded.shape[1] == 4
    assert stem._padded_weight._padded is padded
    assert torch.equal(first.isnan(), again.isnan())
    assert torch.equal(first.nan_to_num(), again.nan_to_num())
    ref = _reference(stem, x)
    assert torch.equal(first.isnan(), ref.isnan()), "NaN not kept where the reference keeps it"
    assert relative_error(first.nan_to_num(), ref.nan_to_num()) <= tolerance(torch.float32, "op")
    # Moves, casts, refresh and copies drop the padded weight; the next call makes it again.
    stem.refresh()
    assert stem._padded_weight._padded is None
    with torch.no_grad():
        stem(x)
    clone = copy.deepcopy(stem)
    assert clone._padded_weight._padded is None
    stem.to(torch.float32)
    assert stem._padded_weight._padded is None


def test_fused_conv_gradients_reach_the_unpadded_tensors(pad_on_cpu, generator):
    stem = _stem(generator)
    stem.weight.requires_grad_(True)
    x = torch.randn(2, 3, 20, 18, generator=generator, requires_grad=True)
    y = stem(x)
    g = torch.randn(y.shape, generator=generator)
    y.backward(g)
    assert x.grad.shape == x.shape and stem.weight.grad.shape == stem.weight.shape
    assert stem._padded_weight._padded is None  # padded per call while autograd records

    xr = x.detach().double().requires_grad_(True)
    wr = stem.weight.detach().double().requires_grad_(True)
    ref = conv_bn_act_reference(xr, wr, stem.scale, stem.shift, None, stem.stride, stem.padding,
                                stem.relu)
    ref.backward(g.double())
    bound = tolerance(torch.float32, "op")
    assert relative_error(y, ref) <= bound
    assert relative_error(x.grad, xr.grad) <= bound
    assert relative_error(stem.weight.grad, wr.grad) <= bound


def test_raw_op_sees_the_padded_operands(pad_on_cpu, generator, monkeypatch):
    stem = _stem(generator, torch.bfloat16)
    seen = []
    real = ops.conv_bn_act

    def spy(x, weight, *args, **kwargs):
        seen.append((x.shape[1], weight.shape[1]))
        return real(x, weight, *args, **kwargs)

    monkeypatch.setattr(ops, "conv_bn_act", spy)
    x = torch.randn(1, 3, 16, 16, generator=generator).bfloat16()
    x[0, 0, 0, 0] = float("inf")
    with torch.no_grad():
        stem(x)
    assert seen == [(8, 8)]
