"""BatchNorm folding: ``fold_batchnorm`` is exactly an eval-mode BatchNorm, as fp32 scale/shift."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnet_fused import fold_batchnorm, ops
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.testing import randomize_batchnorm_, relative_error, tolerance


def random_bn(c, generator, eps=1e-5, affine=True, dtype=torch.float32):
    bn = nn.BatchNorm2d(c, eps=eps, affine=affine)
    randomize_batchnorm_(bn, generator)
    return bn.to(dtype).eval()


def apply_folded(x, scale, shift):
    return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_fold_matches_batchnorm_eval(eps, affine, generator):
    c = 13
    bn = random_bn(c, generator, eps=eps, affine=affine)
    if not affine:
        assert bn.weight is None
    scale, shift = fold_batchnorm(bn)
    assert scale.dtype == shift.dtype == torch.float32
    assert scale.shape == shift.shape == (c,)
    assert scale.is_contiguous() and shift.is_contiguous()
    x = torch.randn(3, c, 5, 7, generator=generator, dtype=torch.float64)
    ref = bn.double()(x)  # eval mode: running statistics, in float64
    assert relative_error(apply_folded(x, scale, shift), ref) <= tolerance(torch.float32, "op")


def test_fold_formula(generator):
    bn = random_bn(9, generator, eps=1e-3)
    scale, shift = fold_batchnorm(bn)
    var, mean = bn.running_var.double(), bn.running_mean.double()
    g, b = bn.weight.detach().double(), bn.bias.detach().double()
    exp_scale = g / torch.sqrt(var + 1e-3)
    torch.testing.assert_close(scale.double(), exp_scale, rtol=1e-7, atol=0)
    torch.testing.assert_close(shift.double(), b - mean * exp_scale, rtol=1e-6, atol=1e-7)


def test_eps_matters(generator):
    """Guards against a fold that ignores ``bn.eps`` (small variances make it visible)."""
    bn = random_bn(8, generator, eps=0.5)
    with torch.no_grad():
        bn.running_var.uniform_(0.01, 0.05, generator=generator)
    scale, shift = fold_batchnorm(bn)
    x = torch.randn(2, 8, 3, 3, generator=generator, dtype=torch.float64)
    assert relative_error(apply_folded(x, scale, shift), bn.double()(x)) <= 1e-5


def test_fold_ignores_training_flag(generator):
    """A BN in training mode still folds to its *eval* behaviour (running statistics)."""
    bn = random_bn(6, generator).train()
    scale, shift = fold_batchnorm(bn)
    x = torch.randn(4, 6, 3, 3, generator=generator, dtype=torch.float64)
    ref = bn.double().eval()(x)
    assert relative_error(apply_folded(x, scale, shift), ref) <= tolerance(torch.float32, "op")


def test_fold_does_not_modify_bn(generator):
    bn = random_bn(6, generator).train()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    fold_batchnorm(bn)
    assert bn.training
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_fold_with_conv_bias(affine, generator):
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.bias.copy_(torch.randn(7, generator=generator))
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.2)
    bn = random_bn(7, generator, affine=affine)
    scale, shift = fold_batchnorm(bn, conv.bias)
    x = torch.randn(2, 5, 6, 9, generator=generator, dtype=torch.float64)
    ref = bn.double()(conv.double()(x))
    y = apply_folded(F.conv2d(x, conv.weight.double(), None, 1, 1), scale, shift)
    assert relative_error(y, ref) <= tolerance(torch.float32, "op")
    # ... and the bias really is in there: leaving it out is measurably wrong.
    y_nobias = apply_folded(F.conv2d(x, conv.weight.double(), None, 1, 1), *fold_batchnorm(bn))
    assert relative_error(y_nobias, ref) > 1e-2


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_fused_module_from_conv_with_bias(backend, generator):
    """FusedConvBNAct.from_conv_bn folds a conv bias too (conv -> BN -> ReLU, one op)."""
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True).double()
    with torch.no_grad():
        conv.bias.copy_(torch.randn(6, generator=generator))
    bn = random_bn(6, generator).double()
    fused = FusedConvBNAct.from_conv_bn(conv, bn, relu=True, backend=backend,
                                        dtype=torch.float32, name="layer")
    x = torch.randn(2, 4, 9, 7, generator=generator, dtype=torch.float64)
    y = fused(x.float())
    assert relative_error(y, torch.relu(bn(conv(x)))) <= tolerance(torch.float32, "op")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_low_precision_bn_folds_in_fp32(dtype, generator):
    bn = random_bn(16, generator, eps=1e-5, dtype=dtype)
    with torch.no_grad():
        # Variances close to eps: var + eps computed in bf16/fp16 would lose most of eps.
        bn.running_var.copy_((torch.rand(16, generator=generator) * 4e-5 + 1e-5).to(dtype))
    scale, shift = fold_batchnorm(bn)
    assert scale.dtype == shift.dtype == torch.float32
    var, mean = bn.running_var.double(), bn.running_mean.double()
    g, b = bn.weight.detach().double(), bn.bias.detach().double()
    exp_scale = g / torch.sqrt(var + bn.eps)
    exp_shift = b - mean * exp_scale
    assert relative_error(scale, exp_scale) <= 1e-6
    assert relative_error(shift, exp_shift) <= 1e-6


def test_fold_refuses_batch_statistics(generator):
    bn = nn.BatchNorm2d(8, track_running_stats=False)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fold_batchnorm(bn, name="layer2.0.bn1")
    with pytest.raises(ValueError, match=r"layer2\.0\.bn1"):
        fold_batchnorm(bn, name="layer2.0.bn1")


@pytest.mark.parametrize("module", [nn.Conv2d(3, 3, 1), nn.GroupNorm(2, 4), nn.LayerNorm(4)],
                         ids=["conv", "groupnorm", "layernorm"])
def test_fold_refuses_non_batchnorm(module):
    with pytest.raises(TypeError, match="BatchNorm"):
        fold_batchnorm(module, name="stem.norm")


def test_folded_params_drive_the_op(generator):
    """End to end: conv -> BN(eval) -> +res -> ReLU in float64 vs the op with the folded BN."""
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=False)
    bn = random_bn(10, generator, eps=1e-4)
    x = torch.randn(2, 6, 7, 5, generator=generator)
    res = torch.randn(2, 10, 7, 5, generator=generator)
    scale, shift = fold_batchnorm(bn)
    y = ops.conv_bn_act(x, conv.weight.detach(), scale, shift, res, 1, 1, True, backend="cpu")
    with torch.no_grad():
        ref = torch.relu(bn.double()(conv.double()(x.double())) + res.double())
    assert relative_error(y, ref) <= tolerance(torch.float32, "op")
