"""Numerics and layout of the ops (``conv_bn_act``, ``add_relu``) on the CPU backends.

Every check compares against the reference composition (``resnet_fused.reference``) run in a
higher precision: float64 copies for float32 results, float32 copies of the same low-precision
tensors for float16/bfloat16 results; bounds come from ``resnet_fused.testing.tolerance``.
The Triton backend has its own file (tests/test_triton.py).
"""

from __future__ import annotations

import random

import pytest
import torch

from resnet_fused import ops
from resnet_fused.reference import conv_bn_act_reference
from resnet_fused.testing import (
    random_bn_params,
    reference_dtype,
    relative_error,
    tolerance,
)

CL = torch.channels_last

# (backend, dtype): the C++ CPU backend in every supported dtype, the aten composition in fp32.
BACKEND_DTYPES = [
    ("cpu", torch.float32),
    ("cpu", torch.bfloat16),
    ("cpu", torch.float16),
    ("aten", torch.float32),
]
BACKEND_DTYPE_IDS = [f"{b}-{str(d).removeprefix('torch.')}" for b, d in BACKEND_DTYPES]


def canonical_cl_strides(shape) -> tuple[int, ...]:
    return torch.empty(tuple(shape), memory_format=CL).stride()


def out_hw(h, w, r, s, stride, padding):
    return (h + 2 * padding[0] - r) // stride[0] + 1, (w + 2 * padding[1] - s) // stride[1] + 1


def expected(x, w, scale, shift, res, stride, padding, relu, dtype):
    """The reference composition on higher-precision copies of the very tensors the op got."""
    rd = reference_dtype(dtype)
    return conv_bn_act_reference(
        x.to(rd), w.to(rd), scale, shift, None if res is None else res.to(rd),
        stride, padding, relu,
    )


def make_case(generator, n, c, h, w, k, r, s, stride, padding, residual, dtype):
    ho, wo = out_hw(h, w, r, s, stride, padding)
    x = torch.randn(n, c, h, w, generator=generator).to(dtype)
    # Weights scaled like a Kaiming init so outputs stay O(1) whatever C*R*S is.
    wt = (torch.randn(k, c, r, s, generator=generator) * (2.0 / (c * r * s)) ** 0.5).to(dtype)
    scale, shift = random_bn_params(k, generator)
    res = torch.randn(n, k, ho, wo, generator=generator).to(dtype) if residual else None
    return x, wt, scale, shift, res


def check_close(y, ref, dtype, what=""):
    err = relative_error(y, ref)
    bound = tolerance(dtype, "op")
    assert err <= bound, f"{what}: relative error {err:.3g} > {bound:g} for {dtype}"


# --- randomized shapes -------------------------------------------------------------------------


def _random_cases(count: int, seed: int):
    """Shapes drawn once at collection time (seeded, so the ids are stable)."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        r = rng.choice([1, 3, 7])
        s = r if rng.random() < 0.8 else rng.choice([1, 3, 7])  # sometimes a non-square kernel
        stride = (rng.choice([1, 2]), rng.choice([1, 2]))
        if rng.random() < 0.7:
            stride = (stride[0], stride[0])
        padding = (rng.randint(0, 3), rng.randint(0, 3))
        if rng.random() < 0.7:
            padding = (padding[0], padding[0])
        h = rng.choice([1, 3, 5, 7, 9, 11, 13, 15, 17])
        w = rng.choice([1, 3, 5, 7, 9, 11, 13, 15, 17, 19])
        if h + 2 * padding[0] < r or w + 2 * padding[1] < s:
            continue
        c = rng.choice([1, 3, 5, 7, 13, 17, 30])
        k = rng.choice([1, 5, 7, 12, 19, 33])
        n = rng.randint(1, 3)
        ho, wo = out_hw(h, w, r, s, stride, padding)
        if n * k * ho * wo < 48:
            # A relative L2 error over a handful of elements measures one rounding, not the op:
            # bf16 rounds the conv result once before the epilogue, and cancellation against
            # shift/residual can make a single element's error look 10x the typical one.
            continue
        cases.append((n, c, h, w, k, r, s, stride, padding, rng.random() < 0.5,
                      rng.random() < 0.7))
    return cases


FIXED_CASES = [
    # n, c, h, w, k, r, s, stride, padding, residual, relu
    (2, 3, 33, 31, 16, 7, 7, (2, 2), (3, 3), False, True),  # a ResNet stem on an odd image, C_in=3
    (1, 12, 9, 11, 20, 1, 1, (2, 2), (0, 0), True, False),  # 1x1 strided downsample + residual
    (3, 10, 7, 7, 10, 3, 3, (1, 1), (1, 1), True, True),  # basic block conv2 with the skip path
    (2, 5, 6, 8, 9, 3, 3, (2, 2), (1, 1), False, True),  # even sizes, strided 3x3
    (3, 7, 3, 3, 24, 3, 3, (1, 1), (0, 0), True, True),  # 1x1 output
    (2, 6, 5, 5, 1, 3, 3, (1, 1), (1, 1), False, False),  # a single output channel
]
RANDOM_CASES = _random_cases(14, seed=1234)
CASES = FIXED_CASES + RANDOM_CASES


def _case_id(case):
    n, c, h, w, k, r, s, stride, padding, residual, relu = case
    return (f"n{n}c{c}x{h}x{w}-k{k}r{r}s{s}-st{stride[0]}{stride[1]}-p{padding[0]}{padding[1]}"
            f"{'-res' if residual else ''}{'-relu' if relu else ''}")


@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES, ids=BACKEND_DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_conv_bn_act_matches_reference(case, backend, dtype, generator):
    n, c, h, w, k, r, s, stride, padding, residual, relu = case
    x, wt, scale, shift, res = make_case(generator, n, c, h, w, k, r, s, stride, padding,
                                         residual, dtype)
    y = ops.conv_bn_act(x, wt, scale, shift, res, stride, padding, relu, backend=backend)
    ref = expected(x, wt, scale, shift, res, stride, padding, relu, dtype)
    assert y.dtype == dtype
    assert tuple(y.shape) == (n, k, *out_hw(h, w, r, s, stride, padding))
    assert y.is_contiguous(memory_format=CL)
    check_close(y, ref, dtype, _case_id(case))
    if relu:
        assert (y >= 0).all()


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_int_stride_padding_mean_both_dims(backend, generator):
    x, wt, scale, shift, _ = make_case(generator, 2, 5, 9, 11, 6, 3, 3, (2, 2), (1, 1), False,
                                       torch.float32)
    a = ops.conv_bn_act(x, wt, scale, shift, None, 2, 1, True, backend=backend)
    b = ops.conv_bn_act(x, wt, scale, shift, None, (2, 2), [1, 1], True, backend=backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_defaults_are_stride1_pad0_relu(backend, generator):
    x, wt, scale, shift, _ = make_case(generator, 1, 4, 7, 7, 6, 3, 3, (1, 1), (0, 0), False,
                                       torch.float32)
    y = ops.conv_bn_act(x, wt, scale, shift, backend=backend)
    ref = expected(x, wt, scale, shift, None, (1, 1), (0, 0), True, torch.float32)
    check_close(y, ref, torch.float32)


def test_backends_agree(generator):
    x, wt, scale, shift, res = make_case(generator, 2, 13, 15, 13, 24, 3, 3, (2, 2), (1, 1), True,
                                         torch.float32)
    a = ops.conv_bn_act(x, wt, scale, shift, res, 2, 1, True, backend="cpu")
    b = ops.conv_bn_act(x, wt, scale, shift, res, 2, 1, True, backend="aten")
    c = ops.conv_bn_act(x, wt, scale, shift, res, 2, 1, True)  # auto -> cpu on a CPU tensor
    assert relative_error(a, b) <= tolerance(torch.float32, "op")
    assert torch.equal(a, c)


# --- layouts -----------------------------------------------------------------------------------

# Output shapes whose channels_last strides are easy to get subtly wrong: size-1 dims make
# `.contiguous(memory_format=channels_last)` a no-op on an NCHW tensor.
LAYOUT_CASES = {
    "regular": (2, 5, 9, 7, 6, 3, 1),
    "n1": (1, 5, 9, 7, 6, 3, 1),
    "out1x1": (2, 5, 3, 3, 6, 3, 0),
    "k1": (2, 5, 9, 7, 1, 3, 1),
    "n0": (0, 5, 9, 7, 6, 3, 1),
}


def _layout_params():
    for backend in ("cpu", "aten"):
        for name in LAYOUT_CASES:
            yield pytest.param(backend, name, id=f"{backend}-{name}")


@pytest.mark.parametrize(("backend", "name"), list(_layout_params()))
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
def test_output_has_canonical_channels_last_strides(backend, name, residual, generator):
    n, c, h, w, k, r, p = LAYOUT_CASES[name]
    x, wt, scale, shift, res = make_case(generator, n, c, h, w, k, r, r, (1, 1), (p, p), residual,
                                         torch.float32)
    y = ops.conv_bn_act(x, wt, scale, shift, res, 1, p, True, backend=backend)
    assert tuple(y.shape) == (n, k, *out_hw(h, w, r, r, (1, 1), (p, p)))
    assert y.stride() == canonical_cl_strides(y.shape)


def _views(x: torch.Tensor, generator) -> dict[str, torch.Tensor]:
    """The same values as ``x`` in several memory layouts, including non-dense views."""
    n, c, h, w = x.shape
    big = torch.randn(n + 1, c + 3, 2 * h, w + 2, generator=generator).to(x.dtype)
    sliced = big[1:, 2:2 + c, ::2, 1:1 + w]
    sliced.copy_(x)
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)
    return {
        "contiguous": x.contiguous(),
        "channels_last": x.contiguous(memory_format=CL),
        "sliced": sliced,
        "transposed": transposed,
    }


@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES, ids=BACKEND_DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "transposed"])
def test_any_input_layout(backend, dtype, layout, generator):
    x, wt, scale, shift, res = make_case(generator, 2, 7, 11, 9, 10, 3, 3, (1, 1), (1, 1), True,
                                         dtype)
    xv, rv = _views(x, generator)[layout], _views(res, generator)[layout]
    assert torch.equal(xv, x) and torch.equal(rv, res)
    if layout in ("sliced", "transposed"):
        assert not xv.is_contiguous() and not xv.is_contiguous(memory_format=CL)
    y = ops.conv_bn_act(xv, wt, scale, shift, rv, 1, 1, True, backend=backend)
    ref = expected(x, wt, scale, shift, res, (1, 1), (1, 1), True, dtype)
    check_close(y, ref, dtype, layout)
    assert y.is_contiguous(memory_format=CL)


@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES, ids=BACKEND_DTYPE_IDS)
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last", "sliced", "transposed"])
def test_any_weight_layout(backend, dtype, weight_layout, generator):
    x, wt, scale, shift, _ = make_case(generator, 2, 6, 9, 9, 11, 3, 3, (2, 2), (1, 1), False,
                                       dtype)
    wv = _views(wt, generator)[weight_layout]
    assert torch.equal(wv, wt)
    y = ops.conv_bn_act(x, wv, scale, shift, None, 2, 1, True, backend=backend)
    ref = expected(x, wt, scale, shift, None, (2, 2), (1, 1), True, dtype)
    check_close(y, ref, dtype, weight_layout)


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_non_contiguous_scale_shift(backend, generator):
    x, wt, scale, shift, _ = make_case(generator, 2, 5, 7, 7, 9, 3, 3, (1, 1), (1, 1), False,
                                       torch.float32)
    scale_v = torch.stack([scale, torch.randn(9, generator=generator)], 1)[:, 0]
    shift_v = torch.stack([shift, torch.randn(9, generator=generator)], 1)[:, 0]
    assert not scale_v.is_contiguous() and torch.equal(scale_v, scale)
    y = ops.conv_bn_act(x, wt, scale_v, shift_v, None, 1, 1, True, backend=backend)
    check_close(y, expected(x, wt, scale, shift, None, (1, 1), (1, 1), True, torch.float32),
                torch.float32)


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_inputs_are_not_modified(backend, generator):
    x, wt, scale, shift, res = make_case(generator, 2, 5, 7, 7, 5, 3, 3, (1, 1), (1, 1), True,
                                         torch.float32)
    x = x.contiguous(memory_format=CL)
    res = res.contiguous(memory_format=CL)
    before = [t.clone() for t in (x, wt, scale, shift, res)]
    y = ops.conv_bn_act(x, wt, scale, shift, res, 1, 1, True, backend=backend)
    for t, b in zip((x, wt, scale, shift, res), before, strict=True):
        assert torch.equal(t, b)
    for t in (x, wt, res):
        assert y.data_ptr() != t.data_ptr()


# --- empty batches -----------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES, ids=BACKEND_DTYPE_IDS)
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
def test_empty_batch(backend, dtype, residual, generator):
    x, wt, scale, shift, res = make_case(generator, 0, 5, 9, 8, 7, 3, 3, (2, 2), (1, 1), residual,
                                         dtype)
    y = ops.conv_bn_act(x, wt, scale, shift, res, 2, 1, True, backend=backend)
    assert tuple(y.shape) == (0, 7, 5, 4)
    assert y.dtype == dtype
    assert y.stride() == canonical_cl_strides(y.shape)


# --- NaN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "aten"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
def test_nan_propagates(backend, relu, generator):
    # 1x1 kernel: a NaN input pixel poisons exactly that output pixel, in every channel.
    x, wt, scale, shift, res = make_case(generator, 2, 6, 5, 7, 8, 1, 1, (1, 1), (0, 0), True,
                                         torch.float32)
    x[1, 2, 3, 4] = float("nan")
    res[0, 5, 1, 2] = float("nan")
    y = ops.conv_bn_act(x, wt, scale, shift, res, 1, 0, relu, backend=backend)
    nan = torch.zeros(y.shape, dtype=torch.bool)
    nan[1, :, 3, 4] = True
    nan[0, 5, 1, 2] = True
    assert torch.equal(torch.isnan(y), nan)
    finite = ~nan
    ref = expected(x, wt, scale, shift, res, (1, 1), (0, 0), relu, torch.float32)
    check_close(y[finite], ref[finite], torch.float32)


# --- add_relu ----------------------------------------------------------------------------------

ADD_RELU_LAYOUTS = [
    ("contiguous", "contiguous"),
    ("channels_last", "channels_last"),
    ("contiguous", "channels_last"),
    ("channels_last", "contiguous"),
    ("sliced", "contiguous"),
    ("transposed", "transposed"),
    ("sliced", "sliced"),
]
ADD_RELU_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def add_relu_expected(x, res):
    return torch.relu(x.double() + res.double())


@pytest.mark.parametrize("backend", ["cpu", "aten"])
@pytest.mark.parametrize("dtype", ADD_RELU_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize(("x_layout", "res_layout"), ADD_RELU_LAYOUTS,
                         ids=[f"{a}+{b}" for a, b in ADD_RELU_LAYOUTS])
def test_add_relu(backend, dtype, x_layout, res_layout, generator):
    x = torch.randn(2, 5, 7, 9, generator=generator).to(dtype)
    res = torch.randn(2, 5, 7, 9, generator=generator).to(dtype)
    xv, rv = _views(x, generator)[x_layout], _views(res, generator)[res_layout]
    y = ops.add_relu(xv, rv, backend=backend)
    assert y.dtype == dtype and y.shape == x.shape
    # x's memory format, as torch.empty_like(x) (preserve_format) defines it.
    assert y.stride() == torch.empty_like(xv).stride()
    if x_layout != "sliced":
        assert y.stride() == xv.stride()
    # One fp32 add, one rounding: exactly what torch gives for the same computation.
    assert torch.equal(y, torch.relu(x.float() + res.float()).to(dtype))
    assert relative_error(y, add_relu_expected(x, res)) <= tolerance(dtype, "op")
    assert (y >= 0).all()


@pytest.mark.parametrize("backend", ["cpu", "aten"])
@pytest.mark.parametrize("x_layout", ["contiguous", "sliced"])
def test_add_relu_nan_propagates(backend, x_layout, generator):
    x = torch.randn(2, 3, 4, 5, generator=generator)
    res = torch.randn(2, 3, 4, 5, generator=generator)
    x[0, 1, 2, 3] = float("nan")
    res[1, 2, 0, 4] = float("nan")
    x[1, 0, 0, 0], res[1, 0, 0, 0] = -5.0, 1.0  # negative: clamps to 0, must not become NaN
    nan = torch.isnan(x) | torch.isnan(res)
    y = ops.add_relu(_views(x, generator)[x_layout], res, backend=backend)
    assert torch.equal(torch.isnan(y), nan)
    assert y[1, 0, 0, 0] == 0
    assert torch.equal(y[~nan], torch.relu(x + res)[~nan])


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_add_relu_empty(backend):
    x = torch.empty(0, 4, 3, 3)
    y = ops.add_relu(x, torch.empty(0, 4, 3, 3), backend=backend)
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_add_relu_does_not_modify_inputs(backend, generator):
    x = torch.randn(3, 4, 5, 6, generator=generator)
    res = torch.randn(3, 4, 5, 6, generator=generator)
    x0, r0 = x.clone(), res.clone()
    y = ops.add_relu(x, res, backend=backend)
    assert torch.equal(x, x0) and torch.equal(res, r0)
    assert y.data_ptr() not in (x.data_ptr(), res.data_ptr())
