"""Op contracts: ``torch.library.opcheck`` and the fake (meta) implementations.

opcheck runs the schema, autograd-registration, fake-tensor and AOT-dispatch checks on each sample.
It ignores the strides of size-1 dims, so the fake impl's strides are also compared exactly with
the real output's (docs/design.md, csrc/checks.h: exactly torch.empty(..., channels_last)'s
strides).
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import resnet_fused  # noqa: F401  (registers the ops and their fake impls)
from resnet_fused.testing import random_bn_params

CL = torch.channels_last
CONV = torch.ops.resnet_fused.conv_bn_act.default
ADD_RELU = torch.ops.resnet_fused.add_relu.default


def conv_sample(generator, n=2, c=5, h=9, w=7, k=6, r=3, stride=(1, 1), padding=(1, 1),
                residual=False, relu=True, dtype=torch.float32, channels_last=False):
    ho = (h + 2 * padding[0] - r) // stride[0] + 1
    wo = (w + 2 * padding[1] - r) // stride[1] + 1
    x = torch.randn(n, c, h, w, generator=generator).to(dtype)
    wt = (torch.randn(k, c, r, r, generator=generator) / (c * r * r) ** 0.5).to(dtype)
    scale, shift = random_bn_params(k, generator)
    res = torch.randn(n, k, ho, wo, generator=generator).to(dtype) if residual else None
    if channels_last:
        x, wt = x.contiguous(memory_format=CL), wt.contiguous(memory_format=CL)
        res = None if res is None else res.contiguous(memory_format=CL)
    return (x, wt, scale, shift, res, list(stride), list(padding), relu)


CONV_SAMPLES = {
    "fp32": {},
    "fp32-residual": {"residual": True},
    "fp32-channels_last-residual": {"residual": True, "channels_last": True},
    "fp32-norelu-stride2": {"relu": False, "stride": (2, 2), "c": 3, "r": 7, "padding": (3, 3),
                            "h": 15, "w": 13},
    "fp32-1x1-stride2": {"r": 1, "stride": (2, 2), "padding": (0, 0), "residual": True},
    "bf16": {"dtype": torch.bfloat16},
    "bf16-channels_last-residual": {"dtype": torch.bfloat16, "residual": True,
                                    "channels_last": True},
    "fp16-residual": {"dtype": torch.float16, "residual": True},
    "n1": {"n": 1, "residual": True},
    "n0": {"n": 0, "residual": True},
}


@pytest.mark.parametrize("name", list(CONV_SAMPLES))
def test_opcheck_conv_bn_act(name, generator):
    args = conv_sample(generator, **CONV_SAMPLES[name])
    torch.library.opcheck(CONV, args)


ADD_RELU_SAMPLES = {
    "fp32-contiguous": (torch.float32, False, False),
    "fp32-channels_last": (torch.float32, True, True),
    "fp32-mixed": (torch.float32, False, True),
    "fp32-mixed-2": (torch.float32, True, False),
    "bf16-channels_last": (torch.bfloat16, True, True),
    "bf16-contiguous": (torch.bfloat16, False, False),
}


@pytest.mark.parametrize("name", list(ADD_RELU_SAMPLES))
def test_opcheck_add_relu(name, generator):
    dtype, x_cl, r_cl = ADD_RELU_SAMPLES[name]
    x = torch.randn(2, 6, 5, 7, generator=generator).to(dtype)
    res = torch.randn(2, 6, 5, 7, generator=generator).to(dtype)
    if x_cl:
        x = x.contiguous(memory_format=CL)
    if r_cl:
        res = res.contiguous(memory_format=CL)
    torch.library.opcheck(ADD_RELU, (x, res))


# --- fake impls: exact shapes and strides ------------------------------------------------------


FAKE_CASES = {
    "regular": {},
    "n1": {"n": 1},
    "n0": {"n": 0},
    "stride2": {"stride": (2, 2), "residual": True},
    "out1x1": {"h": 3, "w": 3, "padding": (0, 0)},
    "k1": {"k": 1},
}


def _fake_run(op, args):
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        return op(*fake_args)


@pytest.mark.parametrize("kwargs", list(FAKE_CASES.values()), ids=list(FAKE_CASES))
def test_fake_conv_bn_act_matches_real_exactly(kwargs, generator):
    args = conv_sample(generator, **kwargs)
    real = CONV(*args)
    fake = _fake_run(CONV, args)
    assert fake.shape == real.shape
    assert fake.dtype == real.dtype
    assert real.stride() == torch.empty(real.shape, memory_format=CL).stride()
    assert fake.stride() == real.stride()


@pytest.mark.parametrize(("x_cl", "r_cl"), [(False, False), (True, True), (False, True),
                                            (True, False)])
def test_fake_add_relu_matches_real_exactly(x_cl, r_cl, generator):
    x = torch.randn(2, 6, 5, 7, generator=generator)
    res = torch.randn(2, 6, 5, 7, generator=generator)
    x = x.contiguous(memory_format=CL) if x_cl else x
    res = res.contiguous(memory_format=CL) if r_cl else res
    real = ADD_RELU(x, res)
    fake = _fake_run(ADD_RELU, (x, res))
    assert fake.shape == real.shape and fake.dtype == real.dtype
    assert fake.stride() == real.stride() == x.stride()


def test_meta_tensors(generator):
    args = conv_sample(generator, stride=(2, 2), residual=True)
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    out = CONV(*meta)
    assert out.device.type == "meta"
    assert tuple(out.shape) == (2, 6, 5, 4)
    x = torch.randn(2, 3, 4, 4, device="meta")
    assert ADD_RELU(x, torch.randn(2, 3, 4, 4, device="meta")).shape == x.shape


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"c_weight": 4}, r"input\.size\(1\)"),
        ({"residual_shape": (2, 6, 9, 8)}, "residual"),
        ({"scale_len": 5}, "scale"),
    ],
)
def test_fake_impl_validates(change, match, generator):
    """The fake impl rejects what the real one rejects (tracing must not accept bad programs)."""
    x, wt, scale, shift, res, stride, padding, relu = conv_sample(generator, residual=True)
    if "c_weight" in change:
        wt = torch.randn(6, change["c_weight"], 3, 3, generator=generator)
    if "residual_shape" in change:
        res = torch.randn(*change["residual_shape"], generator=generator)
    if "scale_len" in change:
        scale = scale[: change["scale_len"]]
    args = (x, wt, scale, shift, res, stride, padding, relu)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        CONV(*args)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        _fake_run(CONV, args)
