"""TF32's numerics, emulated on the CPU: the rounding the GPU's TF32 tensor cores apply to their
operands (``round_to_tf32``, as ``cvt.rna.tf32.f32``) and the bound fp32-with-TF32 results are held
to (docs/design.md, "Numerics policy": one bound, 5e-3, for single ops and whole models).

The whole-model check answers whether one bound can serve both scopes: a ResNet-50 whose every
conv rounds its activations and weights to TF32 (sums in fp32, as the tensor cores keep them),
against the fp64 model, must stay inside the bound at every stage, with room to spare. The GPU
tests then hold the package's TF32 kernel to this same rounding (tests/test_cuda.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnet_fused import models
from resnet_fused.testing import (
    TF32_TOLERANCE,
    randomize_batchnorm_,
    relative_error,
    round_to_tf32,
    tolerance,
)

# A TF32 operand keeps 10 of fp32's 23 mantissa bits: its relative rounding error is at most
# half a unit in the 11th significant bit.
TF32_UNIT_ROUNDOFF = 2.0 ** -11


def test_round_to_tf32_rounds_to_nearest_ties_away():
    one_ulp = 2.0 ** -10  # TF32's spacing at 1
    cases = {
        1.0: 1.0,
        1.0 + one_ulp / 2: 1.0 + one_ulp,  # a tie rounds away from zero
        1.0 + one_ulp / 2 - 2.0 ** -23: 1.0,  # just below the tie rounds down
        1.0 + 3 * one_ulp / 2: 1.0 + 2 * one_ulp,  # ties away, not to even
        -(1.0 + one_ulp / 2): -(1.0 + one_ulp),
        3.0 * 2.0 ** -127: 3.0 * 2.0 ** -127,  # subnormals keep their top 10 bits
        2.0 ** -140: 0.0,  # and lose the rest
    }
    x = torch.tensor(list(cases), dtype=torch.float32)
    assert round_to_tf32(x).tolist() == list(cases.values())


def test_round_to_tf32_bounds_and_specials(generator):
    x = torch.randn(4096, generator=generator) * torch.logspace(-30, 30, 4096)
    y = round_to_tf32(x)
    assert (y.view(torch.int32) & 0x1FFF == 0).all(), "bits below TF32's mantissa survived"
    rel = ((y.double() - x.double()).abs() / x.double().abs()).max().item()
    assert 0 < rel <= TF32_UNIT_ROUNDOFF
    big = torch.finfo(torch.float32).max
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), big, -big, 0.0, -0.0])
    got = round_to_tf32(special)
    assert torch.isnan(got[0])
    assert got[1:5].tolist() == [float("inf"), -float("inf"), float("inf"), -float("inf")]
    assert got[5:].tolist() == [0.0, -0.0] and torch.signbit(got[6])
    # Layout-preserving: a non-contiguous view rounds elementwise, same shape.
    view = x.view(64, 64).t()
    assert torch.equal(round_to_tf32(view), y.view(64, 64).t())
    with pytest.raises(TypeError, match="float32"):
        round_to_tf32(x.double())


class _TF32Conv(nn.Module):
    """A conv whose operands are rounded to TF32 first, its sums in fp32: what TF32 tensor cores
    compute."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x):
        c = self.conv
        return F.conv2d(round_to_tf32(x), round_to_tf32(c.weight), c.bias, c.stride, c.padding)


def _with_tf32_convs(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, _TF32Conv(child))
        else:
            _with_tf32_convs(child)
    return module


def _stages(model, x) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outputs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outputs.append(x)
    logits = model.fc(torch.flatten(model.avgpool(x), 1))
    return [*outputs, logits]


@torch.no_grad()
def test_resnet50_with_tf32_convs_fits_the_tf32_bound(generator):
    """Every stage and the logits of a TF32 ResNet-50 within the TF32 bound of fp64, with a margin
    of at least 2x (measured: ~1.2e-3 at layer4, ~5e-4 at the logits, against 5e-3), and
    TF32-sized (the emulation ran). The bound the GPU model tests use for fp32 is this one."""
    assert tolerance(torch.float32, "model", "cuda") == TF32_TOLERANCE
    model = randomize_batchnorm_(models.resnet50(), generator).eval()
    x = torch.randn(1, 3, 224, 224, generator=generator)
    ref = _stages(model.double(), x.double())
    got = _stages(_with_tf32_convs(model.float()), x)
    errors = [relative_error(g, r) for g, r in zip(got, ref, strict=True)]
    names = ["layer1", "layer2", "layer3", "layer4", "logits"]
    detail = ", ".join(f"{n} {e:.3g}" for n, e in zip(names, errors, strict=True))
    assert max(errors) <= TF32_TOLERANCE / 2, f"TF32 ResNet-50 too far from fp64: {detail}"
    assert min(errors) > 1e-5, f"fp32-sized errors, so no TF32 rounding happened: {detail}"
