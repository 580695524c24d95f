"""NaN and infinity are never hidden: wherever the source model in eval mode outputs a NaN or an
infinity, the fused model does too, on every CPU path.

The CPU fast path's oneDNN convolutions apply ReLU as a post-op, which turns a NaN into 0: a NaN
pixel would vanish and the logits look confident. So a fused model reads its input once
(``resnet_fused::all_finite``, tested here too) and runs a forward whose input is not all finite
on the raw op, whose epilogue keeps NaN and infinity as ``torch.relu`` does; a conv whose weight
or BatchNorm numbers are not all finite (a NaN weight, a negative running_var) does the same.
Covered: NaN and infinity in the input (one pixel, a whole image), in a conv weight, in
BatchNorm statistics, in the classifier; float32 and bfloat16; the ``cpu``, ``auto`` and
``aten`` backends; ``forward_features`` and ``forward_stages``; a fused conv module on its own.
The rows that stay finite in the source model stay within the bound.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import resnet_fused
from resnet_fused import fuse
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.testing import randomize_batchnorm_, relative_error, tolerance

CL = torch.channels_last
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def model():
    generator = torch.Generator().manual_seed(404)
    torch.manual_seed(404)  # the constructor's conv weights
    model = randomize_batchnorm_(resnet_fused.resnet50(num_classes=NUM_CLASSES), generator)
    return model.eval()


def _input(generator, where):
    x = torch.randn(3, 3, 64, 64, generator=generator)
    if where == "one-nan-pixel":
        x[0, 1, 17, 23] = float("nan")
    elif where == "nan-image":
        x[1] = float("nan")
    elif where == "inf-pixel":
        x[2, 0, 40, 5] = float("inf")
    elif where == "neg-inf-pixel":
        x[0, 2, 3, 60] = float("-inf")
    return x


def _poison(model, where):
    model = copy.deepcopy(model)
    with torch.no_grad():
        if where == "nan-conv-weight":
            model.layer2[0].conv2.weight[5, 3, 1, 1] = float("nan")
        elif where == "inf-conv-weight":
            model.layer3[1].conv3.weight[7, 2, 0, 0] = float("inf")
        elif where == "negative-running-var":
            model.layer3[1].bn1.running_var[4] = -2.0
        elif where == "nan-running-mean":
            model.bn1.running_mean[0] = float("nan")
        elif where == "nan-stem-weight":
            model.conv1.weight[0, 0, 3, 3] = float("nan")
        elif where == "nan-fc-weight":
            model.fc.weight[3, 100] = float("nan")
    return model


INPUTS = ["one-nan-pixel", "nan-image", "inf-pixel", "neg-inf-pixel"]
PARAMETERS = ["nan-conv-weight", "inf-conv-weight", "negative-running-var", "nan-running-mean",
              "nan-stem-weight", "nan-fc-weight"]


def assert_same_nonfinite(y, ref, dtype, what=""):
    """Non-finite exactly where the reference is; the finite rest within the model bound."""
    bad, bad_ref = ~torch.isfinite(y), ~torch.isfinite(ref)
    assert bad_ref.any(), f"{what}the test needs a reference with non-finite values"
    missing = bad_ref & ~bad
    assert not missing.any(), (f"{what}{int(missing.sum())} outputs are finite where the source "
                               f"model's are not (NaN/inf hidden)")
    extra = bad & ~bad_ref
    assert not extra.any(), f"{what}{int(extra.sum())} outputs are non-finite only here"
    rows = torch.isfinite(ref).flatten(1).all(1)
    if rows.any():
        err = relative_error(y[rows], ref[rows])
        assert err <= tolerance(dtype, "model"), f"{what}finite rows: {err:.3g}"


def _reference(model, x, dtype):
    ref_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    with torch.no_grad():
        return copy.deepcopy(model).to(ref_dtype)(x.to(dtype).to(ref_dtype))


@pytest.mark.parametrize("backend", ["auto", "cpu", "aten"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("where", INPUTS)
def test_nonfinite_input(where, dtype, backend, model, generator):
    x = _input(generator, where)
    fused = fuse(model, backend=backend, dtype=dtype)
    with torch.no_grad():
        y = fused(x)
    assert_same_nonfinite(y.float(), _reference(model, x, dtype), dtype)


@pytest.mark.parametrize("backend", ["auto", "aten"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("where", PARAMETERS)
def test_nonfinite_parameters(where, dtype, backend, model, generator):
    poisoned = _poison(model, where)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    fused = fuse(poisoned, backend=backend, dtype=dtype)
    with torch.no_grad():
        y = fused(x)
        again = fused(x)  # the prepared (cached) state must not forget it
    ref = _reference(poisoned, x, dtype)
    assert_same_nonfinite(y.float(), ref, dtype)
    assert_same_nonfinite(again.float(), ref, dtype, "second call: ")


def test_poisoned_then_repaired_weights(model, generator, no_raw_op):
    """A NaN weight written in place after the fast path was prepared is seen (and so is its
    repair: the fast path comes back)."""
    fused = fuse(model)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        fused(x)
        conv = fused.stages[1][0].convs[1]
        keep = conv.weight[5, 3, 1, 1].clone()
        conv.weight[5, 3, 1, 1] = float("nan")
    with pytest.raises(AssertionError, match="raw op ran"), torch.no_grad():
        fused(x)  # the NaN conv takes the raw op (no_raw_op proves it)
    with torch.no_grad():
        conv.weight[5, 3, 1, 1] = keep
        y = fused(x)
    ref = _reference(model, x, torch.float32)
    assert relative_error(y, ref) <= tolerance(torch.float32, "model")


@pytest.mark.parametrize("where", ["one-nan-pixel", "inf-pixel"])
def test_features_and_stages_keep_nonfinite(where, model, generator):
    x = _input(generator, where)
    fused = fuse(model)
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        assert_same_nonfinite(fused.forward_features(x), ref.forward_features(x.double()),
                              torch.float32, "features: ")
        stages = fused.forward_stages(x)
    image = 0 if where == "one-nan-pixel" else 2
    others = [i for i in range(3) if i != image]
    for name, out in stages.items():
        assert not torch.isfinite(out[image]).all(), f"{name}: the bad image's values vanished"
        assert torch.isfinite(out[others]).all(), name


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("kernel", [1, 3])
def test_fused_conv_module_alone(kernel, relu, generator):
    """A fused conv used on its own checks its input itself."""
    conv = nn.Conv2d(64, 64, kernel, padding=kernel // 2, bias=False)
    bn = randomize_batchnorm_(nn.BatchNorm2d(64), generator).eval()
    fused = FusedConvBNAct.from_conv_bn(conv, bn, relu=relu, backend="cpu", dtype=torch.float32,
                                        name="conv")
    x = torch.randn(2, 64, 16, 16, generator=generator)
    x[0, 7, 8, 8] = float("nan")
    residual = torch.randn(2, 64, 16, 16, generator=generator)
    residual[1, 3, 2, 2] = float("inf")
    with torch.no_grad():
        y = fused(x, residual)
        ref = bn.double()(conv.double()(x.double())) + residual.double()
        ref = torch.relu(ref) if relu else ref
    assert_same_nonfinite(y, ref, torch.float32)


def test_finite_inputs_keep_the_fast_path(model, generator, no_raw_op):
    with torch.no_grad():
        y = fuse(model)(torch.randn(2, 3, 64, 64, generator=generator))
    assert torch.isfinite(y).all()


# --- the input check: resnet_fused::all_finite ---------------------------------------------------

ALL_FINITE = torch.ops.resnet_fused.all_finite.default


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d)[6:])
def test_all_finite_op(dtype, generator):
    x = torch.randn(2, 3, 17, 9, generator=generator).to(dtype).contiguous(memory_format=CL)
    assert bool(ALL_FINITE(x))
    largest = torch.finfo(dtype).max
    big = x.clone()
    big[1, 2, 16, 8] = largest  # the largest finite value is finite
    assert bool(ALL_FINITE(big))
    for value in (float("nan"), float("inf"), float("-inf")):
        for where in ((0, 0, 0, 0), (1, 2, 16, 8), (1, 1, 5, 3)):
            bad = x.clone()
            bad[where] = value
            assert not bool(ALL_FINITE(bad)), (value, where)
            assert not bool(ALL_FINITE(bad.contiguous())), (value, where, "contiguous")
    strided = torch.randn(2, 3, 17, 18, generator=generator).to(dtype)[..., ::2]
    assert bool(ALL_FINITE(strided))
    strided[0, 1, 2, 3] = float("nan")
    assert not bool(ALL_FINITE(strided))
    assert bool(ALL_FINITE(x[:0]))  # empty: nothing is non-finite
    torch.library.opcheck(ALL_FINITE, (x,))


def test_all_finite_rejects_other_dtypes():
    with pytest.raises(RuntimeError, match="all_finite: x must be float32, float16 or bfloat16"):
        ALL_FINITE(torch.zeros(3, dtype=torch.float64))
