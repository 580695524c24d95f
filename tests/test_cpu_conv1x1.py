"""1x1 convolutions on the CPU's AVX-512 GEMM: ``resnet_fused::conv1x1`` / ``conv1x1_residual_``.

The ops (csrc/cpu/conv1x1_cpu.cpp) compute ``act(conv1x1(x, w * scale, stride) + shift)``, the
second summing into its residual in place, from a weight folded and packed by
``conv1x1.pack_weight``. Covered here:

* numerics against the higher-precision reference composition with the per-op bounds, random
  data and non-trivial BatchNorm: pixel counts that are not multiples of the 6-row micro-kernel,
  C_out that leaves a partial 64-channel panel, odd C_in (float32), inputs large enough to be cut
  into several row blocks, strides 1, 2 and (1, 2), contiguous and channels_last inputs;
* the in-place contract (the residual's own buffer holds the result; the input is untouched),
  NaN propagation through ReLU, empty and zero-channel tensors, every bad argument named;
* ``opcheck`` and the fake impls, ``pack_weight``'s layout, ``path`` and ``policy``;
* the CPU fast path: fused 1x1 convs run these ops (and nothing of oneDNN's) under ``auto`` and
  oneDNN under ``never``, a residual that is not scratch stays unchanged, prepared weights follow
  updates, and whole fused ResNets stay within the model bound with the ops proven to run.
"""

from __future__ import annotations

import copy

import pytest
import torch

from resnet_fused import fuse
from resnet_fused.cpu import conv1x1, onednn
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.reference import conv_bn_act_reference
from resnet_fused.testing import (
    assert_within_bound,
    dtype_name,
    random_bn_params,
    reference_dtype,
)

CL = torch.channels_last
OP = torch.ops.resnet_fused.conv1x1.default
OP_ = torch.ops.resnet_fused.conv1x1_residual_.default
DTYPES = [d for d in (torch.float32, torch.bfloat16) if conv1x1.available(d)]
pytestmark = pytest.mark.skipif(
    not DTYPES, reason="this CPU lacks AVX-512 F/BW/VL, which the 1x1 kernels need")




def make_args(generator, n, c, k, h, w, stride, dtype):
    """Random input, weight (rounded to dtype), BatchNorm scale/shift and residual."""
    weight = torch.randn(k, c, 1, 1, generator=generator) * (2.0 / max(c, 1)) ** 0.5
    scale, shift = random_bn_params(k, generator)
    x = torch.randn(n, c, h, w, generator=generator).to(dtype)
    ho, wo = (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1
    res = torch.randn(n, k, ho, wo, generator=generator).to(dtype).contiguous(memory_format=CL)
    return x, weight.to(dtype), scale, shift, res


def reference(x, weight, scale, shift, res, stride, relu):
    rd = reference_dtype(x.dtype)
    return conv_bn_act_reference(x.to(rd), weight.to(rd), scale, shift,
                                 None if res is None else res.to(rd), stride, (0, 0), relu)


# --- numerics ------------------------------------------------------------------------------------

# (n, c, k, h, w, stride): pixel counts from 1 to past several row blocks (float32 inputs above
# 512 KiB are cut into blocks: 2 x 256 x 24 x 24 is 1.2 MB), C_out leaving partial panels (16,
# 48, 80 = 64 + 16, 208 = 3 x 64 + 16), odd C_in, strides that skip rows and columns.
CASES = [
    (1, 8, 16, 1, 1, (1, 1)),
    (2, 6, 48, 5, 3, (1, 1)),
    (1, 64, 256, 7, 7, (1, 1)),
    (3, 32, 80, 9, 11, (2, 2)),
    (2, 130, 64, 8, 6, (2, 2)),
    (1, 12, 208, 13, 10, (1, 2)),
    (2, 256, 64, 24, 24, (1, 1)),
    (1, 512, 128, 14, 14, (2, 2)),
    (2, 5, 32, 4, 7, (1, 1)),
]


def case_id(case) -> str:
    n, c, k, h, w, s = case
    return f"{n}x{c}x{h}x{w}-k{k}-s{s[0]}{s[1]}"


# bfloat16 takes even C_in only (its odd-C_in refusal is checked with the bad arguments).
CASE_DTYPES = [(case, d) for case in CASES for d in DTYPES
               if d == torch.float32 or case[1] % 2 == 0]


@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize(("case", "dtype"), CASE_DTYPES,
                         ids=[f"{case_id(c)}-{dtype_name(d)}" for c, d in CASE_DTYPES])
def test_ops_match_reference(case, dtype, residual, relu, x_layout, generator):
    n, c, k, h, w, stride = case
    x, weight, scale, shift, res = make_args(generator, n, c, k, h, w, stride, dtype)
    if x_layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    packed = conv1x1.pack_weight(weight, scale, dtype)
    ref = reference(x, weight, scale, shift, res if residual else None, stride, relu)
    x_before = x.clone()
    if residual:
        y = res
        assert OP_(res, x, packed, shift, list(stride), relu) is None
    else:
        y = OP(x, packed, shift, list(stride), relu)
    assert y.shape == ref.shape and y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert_within_bound(y, ref, dtype)
    assert torch.equal(x, x_before), "the input must not be written"
    if relu:
        assert (y >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_same_bits_for_any_thread_count(dtype, generator):
    """Threads split pixels and panels, never a sum: every thread count gives the same bits
    (here also counts that make the kernel cut the rows into more blocks)."""
    x, weight, scale, shift, res = make_args(generator, 2, 64, 80, 20, 21, (1, 1), dtype)
    packed = conv1x1.pack_weight(weight, scale, dtype)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3, 5):
            torch.set_num_threads(count)
            summed = res.clone()
            OP_(summed, x, packed, shift, [1, 1], True)
            results.append((OP(x, packed, shift, [1, 1], False), summed))
    finally:
        torch.set_num_threads(threads)
    for plain, summed in results[1:]:
        assert torch.equal(plain, results[0][0]) and torch.equal(summed, results[0][1])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_residual_is_summed_in_its_own_buffer(dtype, generator):
    x, weight, scale, shift, res = make_args(generator, 2, 16, 32, 5, 6, (1, 1), dtype)
    ref = reference(x, weight, scale, shift, res, (1, 1), True)
    storage, strides = res.data_ptr(), res.stride()
    OP_(res, x, conv1x1.pack_weight(weight, scale, dtype), shift, [1, 1], True)
    assert res.data_ptr() == storage and res.stride() == strides
    assert_within_bound(res, ref, dtype)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_nan_propagates_through_relu(dtype, residual, generator):
    x, weight, scale, shift, res = make_args(generator, 1, 16, 32, 4, 5, (1, 1), dtype)
    x[0, :, 1, 2] = float("nan")  # every output channel at pixel (1, 2)
    res[0, 3, 2, 4] = float("nan")  # one output value (summed only with a residual)
    packed = conv1x1.pack_weight(weight, scale, dtype)
    if residual:
        OP_(res, x, packed, shift, [1, 1], True)
        y = res
    else:
        y = OP(x, packed, shift, [1, 1], True)
    nan = torch.zeros(1, 32, 4, 5, dtype=torch.bool)
    nan[0, :, 1, 2] = True
    if residual:
        nan[0, 3, 2, 4] = True
    assert torch.equal(y.isnan(), nan), "ReLU must keep a NaN, not turn it into 0"


# --- edge shapes and bad arguments ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("shape", [(0, 8, 32, 5, 5), (2, 8, 32, 0, 5), (2, 8, 0, 3, 3)],
                         ids=["batch0", "height0", "cout0"])
def test_empty(shape, dtype, generator):
    n, c, k, h, w = shape
    x = torch.randn(n, c, h, w, generator=generator).to(dtype)
    weight = torch.randn(k, c, 1, 1, generator=generator).to(dtype)
    scale, shift = random_bn_params(k, generator)
    packed = conv1x1.pack_weight(weight, scale, dtype)
    y = OP(x, packed, shift, [1, 1], True)
    assert y.shape == (n, k, h, w) and y.is_contiguous(memory_format=CL)
    res = torch.randn(n, k, h, w).to(dtype).contiguous(memory_format=CL)
    OP_(res, x, packed, shift, [1, 1], True)  # nothing to compute, nothing to fail


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_no_input_channels_is_the_epilogue(dtype, generator):
    x = torch.randn(2, 0, 3, 4).to(dtype)
    weight = torch.randn(32, 0, 1, 1).to(dtype)
    scale, shift = random_bn_params(32, generator)
    res = torch.randn(2, 32, 3, 4, generator=generator).to(dtype).contiguous(memory_format=CL)
    expected = torch.relu(shift.view(1, -1, 1, 1) + res.float()).to(dtype)
    packed = conv1x1.pack_weight(weight, scale, dtype)
    OP_(res, x, packed, shift, [1, 1], True)
    torch.testing.assert_close(res, expected, rtol=0, atol=0)
    y = OP(x, packed, shift, [1, 1], False)
    torch.testing.assert_close(y, shift.view(1, -1, 1, 1).expand(2, 32, 3, 4).to(dtype), rtol=0,
                               atol=0)


def _bad_cases():
    f32 = torch.float32

    def make(generator, **change):
        x, weight, scale, shift, res = make_args(generator, 2, 8, 32, 5, 5, (1, 1), f32)
        args = {"res": res, "x": x, "w": conv1x1.pack_weight(weight, scale, f32), "b": shift,
                "stride": [1, 1]}
        for key, fn in change.items():
            args[key] = fn(args)
        return args

    return {
        "input-3d": ({"x": lambda a: a["x"][0]}, "input must be 4-D"),
        "input-fp16": ({"x": lambda a: a["x"].half()}, "input must be float32 or bfloat16"),
        "weight-dtype": ({"w": lambda a: a["w"].double()}, "weight must be a CPU tensor of"),
        "weight-unpacked": ({"w": lambda a: a["w"].reshape(-1, 8)}, "packed in panels of 64"),
        "weight-panels": ({"w": lambda a: torch.cat([a["w"], a["w"]])}, "packed in panels of 64"),
        "weight-c-in": ({"w": lambda a: a["w"][:, :4]}, "packed in panels of 64"),
        "bias-dtype": ({"b": lambda a: a["b"].double()}, "bias must be a 1-D float32"),
        "bias-2d": ({"b": lambda a: a["b"].view(2, 16)}, "bias must be a 1-D float32"),
        "bias-not-16": ({"b": lambda a: a["b"][:24]}, r"must be a multiple of 16"),
        "stride-0": ({"stride": lambda a: [0, 1]}, "stride must be two positive ints"),
        "residual-sizes": ({"res": lambda a: a["res"][:, :, :4]}, "residual must have the output"),
        "residual-layout": ({"res": lambda a: a["res"].contiguous()},
                            "residual must be channels_last-contiguous"),
        "residual-dtype": ({"res": lambda a: a["res"].double().contiguous(memory_format=CL)},
                           "residual must be a CPU tensor of input's dtype"),
        "bf16-odd-c": ({"x": lambda a: a["x"][:, :7].bfloat16(),
                        "w": lambda a: torch.zeros(1, 3, 64, 2, dtype=torch.bfloat16),
                        "res": lambda a: a["res"].bfloat16()},
                       "bfloat16 needs an even number of input channels"),
    }, make


BAD, _make_bad = _bad_cases()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_arguments_are_named(name, generator):
    change, match = BAD[name]
    good = _make_bad(generator)
    # The unchanged arguments run (so each case fails for the one thing it changes).
    OP_(good["res"], good["x"], good["w"], good["b"], good["stride"], True)
    args = _make_bad(generator, **change)
    with pytest.raises(RuntimeError, match=match):
        OP_(args["res"], args["x"], args["w"], args["b"], args["stride"], True)
    if not name.startswith("residual"):  # the plain op checks the same arguments
        with pytest.raises(RuntimeError, match=match):
            OP(args["x"], args["w"], args["b"], args["stride"], True)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_opcheck(dtype, residual, generator):
    x, weight, scale, shift, res = make_args(generator, 2, 6, 32, 5, 7, (2, 1), dtype)
    packed = conv1x1.pack_weight(weight, scale, dtype)
    if residual:
        torch.library.opcheck(OP_, (res, x, packed, shift, [2, 1], True))
    else:
        torch.library.opcheck(OP, (x, packed, shift, [2, 1], True))


@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (2, 1)], ids=["s11", "s22", "s21"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_fake_impl_matches_real(dtype, stride, generator):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, weight, scale, shift, _ = make_args(generator, 2, 6, 32, 7, 4, stride, dtype)
    packed = conv1x1.pack_weight(weight, scale, dtype)
    real = OP(x, packed, shift, list(stride), False)
    with FakeTensorMode() as mode:
        fake = OP(*(mode.from_tensor(t) for t in (x, packed, shift)), list(stride), False)
    assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype)


# --- pack_weight, path, policy -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_pack_weight_layout(dtype, generator):
    k, c = 80, 6
    weight = torch.randn(k, c, 1, 1, generator=generator).to(dtype)
    scale, _ = random_bn_params(k, generator)
    packed = conv1x1.pack_weight(weight, scale, dtype)
    folded = (weight.float().view(k, c) * scale.view(-1, 1)).to(dtype)
    if dtype == torch.bfloat16:
        assert packed.shape == (2, c // 2, 64, 2)
        element = lambda ko, ci: packed[ko // 64, ci // 2, ko % 64, ci % 2]  # noqa: E731
    else:
        assert packed.shape == (2, c, 64)
        element = lambda ko, ci: packed[ko // 64, ci, ko % 64]  # noqa: E731
    for ko in (0, 1, 63, 64, 79):
        for ci in range(c):
            assert element(ko, ci) == folded[ko, ci]
    tail = packed[1, ..., 16:, :] if dtype == torch.bfloat16 else packed[1, :, 16:]
    assert (tail == 0).all(), "columns past C_out must be zeros"


@pytest.mark.parametrize(("weight", "scale", "dtype", "match"), [
    ((8, 4, 3, 3), (8,), torch.float32, "weight must be"),
    ((8, 4, 1, 1), (4,), torch.float32, "scale must have shape"),
    ((8, 4, 1, 1), (8,), torch.float16, "dtype must be float32 or bfloat16"),
    ((8, 5, 1, 1), (8,), torch.bfloat16, "bfloat16 needs an even C_in"),
])
def test_pack_weight_rejects(weight, scale, dtype, match):
    with pytest.raises(ValueError, match=match):
        conv1x1.pack_weight(torch.randn(weight), torch.rand(scale), dtype)


@pytest.mark.parametrize(("kernel", "stride", "padding", "dtype", "c_in", "c_out", "expected"), [
    ((1, 1), (1, 1), (0, 0), torch.float32, 64, 256, True),
    ((1, 1), (2, 2), (0, 0), torch.float32, 5, 16, True),
    ((1, 1), (1, 1), (0, 0), torch.bfloat16, 64, 64, True),
    ((1, 1), (1, 1), (0, 0), torch.bfloat16, 3, 64, False),   # bf16 pairs need an even C_in
    ((1, 1), (1, 1), (0, 0), torch.float32, 64, 24, False),   # C_out not a multiple of 16
    ((1, 1), (1, 1), (1, 1), torch.float32, 64, 64, False),   # padded
    ((3, 3), (1, 1), (1, 1), torch.float32, 64, 64, False),
    ((1, 1), (1, 1), (0, 0), torch.float16, 64, 64, False),
])
def test_path(kernel, stride, padding, dtype, c_in, c_out, expected, monkeypatch):
    monkeypatch.delenv("RESNET_FUSED_CONV1X1", raising=False)
    assert conv1x1.path(kernel, stride, padding, dtype, c_in, c_out) == (
        expected and conv1x1.available(dtype))
    monkeypatch.setenv("RESNET_FUSED_CONV1X1", "never")
    assert not conv1x1.path(kernel, stride, padding, dtype, c_in, c_out)


@pytest.mark.parametrize("value", ["always", "1", "oneDNN"])
def test_policy_rejects_bad_values(value, monkeypatch):
    monkeypatch.setenv("RESNET_FUSED_CONV1X1", value)
    with pytest.raises(ValueError, match="RESNET_FUSED_CONV1X1 must be one of"):
        conv1x1.policy()


# --- the CPU fast path ---------------------------------------------------------------------------


def _refuse(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} ran where it was not expected")
    return refuse


def forbid(monkeypatch, *names):
    for name in names:
        monkeypatch.setattr(onednn, name, _refuse(name))


ONEDNN = ("_CONV", "_CONV_BINARY", "_CONV_SUM_", "_WINOGRAD")
OWN = ("_CONV1X1", "_CONV1X1_")


def make_conv(generator, c, k, stride, dtype, relu=True) -> FusedConvBNAct:
    weight = torch.randn(k, c, 1, 1, generator=generator) * (2.0 / c) ** 0.5
    scale, shift = random_bn_params(k, generator)
    return FusedConvBNAct(weight.to(dtype), scale, shift, stride, (0, 0), relu, backend="cpu")


def conv_reference(conv, x, residual=None):
    return reference(x, conv.weight, conv.scale, conv.shift, residual, conv.stride, conv.relu)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2)], ids=["s1", "s2"])
@pytest.mark.parametrize("res_mode", ["nores", "res", "res-scratch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("policy", ["auto", "never"])
def test_fast_path(policy, dtype, res_mode, stride, generator, monkeypatch, no_raw_op):
    monkeypatch.setenv("RESNET_FUSED_CONV1X1", policy)
    forbid(monkeypatch, *(ONEDNN if policy == "auto" else OWN))
    conv = make_conv(generator, 24, 32, stride, dtype)
    x = torch.randn(2, 24, 9, 7, generator=generator).to(dtype)
    ho, wo = (9 - 1) // stride[0] + 1, (7 - 1) // stride[1] + 1
    res = (torch.randn(2, 32, ho, wo, generator=generator).to(dtype).contiguous(memory_format=CL)
           if res_mode != "nores" else None)
    ref = conv_reference(conv, x, res)
    kept = None if res is None else res.clone()
    with torch.no_grad():
        y = conv(x, res, residual_is_scratch=res_mode == "res-scratch")
    if res_mode == "res":
        assert torch.equal(res, kept), "a residual that is not scratch must not be written"
    if res_mode == "res-scratch" and policy == "auto":
        assert y.data_ptr() == res.data_ptr(), "the scratch residual holds the result"
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert_within_bound(y, ref, dtype)
    if policy == "auto":
        assert conv._onednn.shapes == [], "no oneDNN weight is made for a 1x1 conv it never runs"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_fast_path_follows_weight_updates(dtype, generator, monkeypatch, no_raw_op):
    monkeypatch.delenv("RESNET_FUSED_CONV1X1", raising=False)
    forbid(monkeypatch, *ONEDNN)
    conv = make_conv(generator, 16, 48, (1, 1), dtype)
    x = torch.randn(1, 16, 5, 5, generator=generator).to(dtype)
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(-1.5)
        conv.shift.add_(0.25)
        assert_within_bound(conv(x), conv_reference(conv, x), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_fused_models_run_the_ops(name, dtype, random_models, generator, monkeypatch):
    """Whole ResNets on the fast path: within the model bound, every 1x1 conv on these ops
    (ResNet-50: its 1x1 convs and downsample convs; ResNet-18: its downsample convs)."""
    monkeypatch.delenv("RESNET_FUSED_CONV1X1", raising=False)
    calls = {"plain": 0, "residual": 0}

    def count(key, op):
        def counted(*args):
            calls[key] += 1
            return op(*args)
        return counted

    monkeypatch.setattr(onednn, "_CONV1X1", count("plain", onednn._CONV1X1))
    monkeypatch.setattr(onednn, "_CONV1X1_", count("residual", onednn._CONV1X1_))
    model = random_models(name)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        ref = copy.deepcopy(model).to(reference_dtype(dtype))(x.to(reference_dtype(dtype)))
        y = fuse(model, backend="cpu", dtype=dtype)(x.to(dtype))
    assert_within_bound(y.float(), ref.float(), dtype, "model")
    convs_1x1 = sum(1 for m in model.modules()
                    if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1))
    assert calls["plain"] + calls["residual"] == convs_1x1, calls
    # ResNet-50: one residual sum per bottleneck block (16); ResNet-18: only its 3 downsample
    # convs are 1x1, and each adds its output into the block's conv2 output.
    assert calls["residual"] == (16 if name == "resnet50" else 3), calls
