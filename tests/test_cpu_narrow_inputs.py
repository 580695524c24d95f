"""Narrow and tall inputs in low precision: right on every CPU, whatever oneDNN does.

oneDNN 3.12's AMX bf16 convolution returns garbage (1e37 or NaN) for strided convs over inputs at
most 2 pixels wide, e.g. ``F.conv2d(torch.randn(1, 64, 9, 1).bfloat16(), w, stride=2,
padding=1)`` on an Intel Xeon with AMX; a bf16 ResNet-50 then misses its bound on a 33x31 image
and returns inf/NaN on 64x24 or 512x16 ones (eager PyTorch too). The package computes such
strided convs over inputs at most 2 pixels wide or tall in fp32, on every CPU (they are tiny), so
these tests run everywhere: on an AMX Xeon they are the regression test, elsewhere they check
that the fp32 detour gives the right numbers.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import resnet_fused
from resnet_fused import fuse
from resnet_fused.cpu import capability
from resnet_fused.testing import (
    random_bn_params,
    randomize_batchnorm_,
    relative_error,
    tolerance,
)

CONV = torch.ops.resnet_fused.conv_bn_act.default
DTYPES = [d for d in (torch.bfloat16, torch.float16) if d in capability.fast_dtypes()] or [
    torch.bfloat16]


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("size", [(9, 1), (1, 9), (12, 2), (2, 2), (17, 2)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:])
def test_strided_conv_over_narrow_input(dtype, size, residual, generator):
    """The raw op: the fp32 result rounded once, exactly."""
    h, w = size
    x = torch.randn(1, 64, h, w, generator=generator).to(dtype)
    weight = (torch.randn(64, 64, 3, 3, generator=generator) / 24).to(dtype)
    scale, shift = random_bn_params(64, generator)
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    res = torch.randn(1, 64, ho, wo, generator=generator).to(dtype) if residual else None
    y = CONV(x, weight, scale, shift, res, [2, 2], [1, 1], True)
    y32 = CONV(x.float(), weight.float(), scale, shift, None if res is None else res.float(),
               [2, 2], [1, 1], True)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, y32.to(dtype))
    ref = F.conv2d(x.double(), weight.double(), None, 2, 1) * scale.double().view(1, -1, 1, 1)
    ref = ref + shift.double().view(1, -1, 1, 1) + (0 if res is None else res.double())
    assert relative_error(y, torch.relu(ref)) <= tolerance(dtype, "op")


@pytest.mark.parametrize("hw", [(33, 31), (64, 24), (512, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_low_precision_resnet50_on_narrow_images(dtype, hw, generator):
    """The image sizes that broke a bf16 ResNet-50 on the AMX Xeon: within the bound, finite."""
    torch.manual_seed(2525)
    model = randomize_batchnorm_(resnet_fused.resnet50(num_classes=10), generator).eval()
    x = torch.randn(2, 3, *hw, generator=generator)
    fused = fuse(model, dtype=dtype)
    with torch.no_grad():
        y = fused(x)
        ref = copy.deepcopy(model).to(dtype).float()(x.to(dtype).float())
    assert torch.isfinite(y).all()
    err = relative_error(y.float(), ref)
    assert err <= tolerance(dtype, "model"), f"{hw}: {err:.3g}"


def test_fused_conv_sends_narrow_strided_inputs_to_the_fp32_detour(generator, monkeypatch):
    """The fast path (oneDNN) never sees them: the raw op does, which computes them in fp32."""
    from torch import nn

    from resnet_fused import ops
    from resnet_fused.fused import FusedConvBNAct

    conv = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
    bn = randomize_batchnorm_(nn.BatchNorm2d(64), generator).eval()
    fused = FusedConvBNAct.from_conv_bn(conv, bn, relu=True, backend="cpu",
                                        dtype=torch.bfloat16, name="conv")
    calls = []
    raw = ops.conv_bn_act
    monkeypatch.setattr(ops, "conv_bn_act", lambda *a, **k: calls.append(1) or raw(*a, **k))
    with torch.no_grad():
        fused(torch.randn(1, 64, 9, 1, generator=generator).bfloat16())
        assert len(calls) == 1
        fused(torch.randn(1, 64, 9, 9, generator=generator).bfloat16())
    assert len(calls) == 1 or torch.bfloat16 not in capability.fast_dtypes()
