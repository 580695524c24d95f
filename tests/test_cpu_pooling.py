"""Pooling and the classifier of fused models on the CPU (``resnet_fused.cpu.pooling``).

``max_pool2d`` must equal ``torch.max_pool2d`` exactly (a max is exact), NaN included;
``global_avg_pool`` is checked against a float64 mean with the project's per-op bounds;
``PackedLinear`` against ``F.linear`` in float64, and like the fused convs its prepared weights
must follow every update. Both ops pass ``torch.library.opcheck`` (fake impls, schemas).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnet_fused
from resnet_fused import fuse
from resnet_fused.cpu import capability, pooling
from resnet_fused.testing import randomize_batchnorm_, relative_error, tolerance

CL = torch.channels_last
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
IDS = ["float32", "bfloat16", "float16"]


def _views(x: torch.Tensor, generator) -> dict[str, torch.Tensor]:
    n, c, h, w = x.shape
    big = torch.randn(n, c + 1, h, 2 * w, generator=generator).to(x.dtype)
    sliced = big[:, 1:, :, ::2]
    sliced.copy_(x)
    return {"channels_last": x.contiguous(memory_format=CL), "contiguous": x.contiguous(),
            "sliced": sliced}


POOL_CASES = [  # (n, c, h, w, kernel, stride, padding)
    (2, 64, 17, 23, (3, 3), (2, 2), (1, 1)),  # the ResNet stem's pool, odd sizes
    (1, 5, 1, 1, (3, 3), (2, 2), (1, 1)),
    (3, 20, 8, 6, (2, 3), (1, 2), (0, 1)),
    (1, 300, 9, 9, (3, 3), (3, 3), (0, 0)),
]


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "x".join(map(str, c[:4])))
def test_max_pool_equals_torch(case, dtype, layout, generator):
    n, c, h, w, k, s, p = case
    x = torch.randn(n, c, h, w, generator=generator).to(dtype)
    xv = _views(x, generator)[layout]
    y = pooling.max_pool2d(xv, k, s, p)
    ref = F.max_pool2d(x.float(), k, s, p).to(dtype)
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("c", [16, 64, 130])  # a tail chunk only; one full chunk; two and a tail
def test_max_pool_nan_and_inf(c, dtype, generator):
    x = torch.randn(1, c, 8, 8, generator=generator).to(dtype).contiguous(memory_format=CL)
    for ch in (3, c - 1):
        x[0, ch, 2, 2] = float("nan")
    x[0, 4, 5, 5] = float("-inf")
    x[0, 5] = float("-inf")
    x[0, c // 2, 4, 4] = float("inf")
    y = pooling.max_pool2d(x, (3, 3), (2, 2), (1, 1))
    ref = F.max_pool2d(x.float(), 3, 2, 1).to(dtype)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.isnan(y).any()
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(ref))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(2, 2048, 7, 7), (1, 300, 1, 1), (3, 40, 5, 9)],
                         ids=lambda s: "x".join(map(str, s)))
def test_global_avg_pool_matches_mean(shape, dtype, layout, generator):
    x = torch.randn(*shape, generator=generator).to(dtype)
    y = pooling.global_avg_pool(_views(x, generator)[layout])
    ref = x.double().mean((2, 3))
    assert y.shape == shape[:2] and y.dtype == dtype
    err = relative_error(y, ref)
    assert err <= tolerance(dtype, "op"), err


def test_empty_batch():
    assert pooling.max_pool2d(torch.randn(0, 8, 9, 9), (3, 3), (2, 2), (1, 1)).shape == \
        (0, 8, 5, 5)
    assert pooling.global_avg_pool(torch.randn(0, 8, 3, 3)).shape == (0, 8)


BAD_POOL = {
    "3-D": (lambda: pooling.max_pool2d(torch.randn(8, 9, 9), (3, 3), (2, 2), (1, 1)), "4-D"),
    "int": (lambda: pooling.max_pool2d(torch.ones(1, 8, 9, 9, dtype=torch.int32), (3, 3),
                                       (2, 2), (1, 1)), "float32"),
    "stride0": (lambda: pooling.max_pool2d(torch.randn(1, 8, 9, 9), (3, 3), (0, 2), (1, 1)),
                "stride"),
    "pad>half": (lambda: pooling.max_pool2d(torch.randn(1, 8, 9, 9), (3, 3), (2, 2), (2, 2)),
                 "padding"),
    "too-small": (lambda: pooling.max_pool2d(torch.randn(1, 8, 1, 1), (3, 3), (1, 1), (0, 0)),
                  "smaller than the kernel"),
    "avg-3-D": (lambda: pooling.global_avg_pool(torch.randn(8, 3, 3)), "4-D"),
    "avg-empty-hw": (lambda: pooling.global_avg_pool(torch.randn(1, 8, 0, 3)), "H, W >= 1"),
}


@pytest.mark.parametrize("name", list(BAD_POOL))
def test_bad_pool_arguments(name):
    call, match = BAD_POOL[name]
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_opcheck(layout, generator):
    x = torch.randn(2, 8, 11, 9, generator=generator)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    torch.library.opcheck(torch.ops.resnet_fused.max_pool2d.default,
                          (x, [3, 3], [2, 2], [1, 1]))
    torch.library.opcheck(torch.ops.resnet_fused.global_avg_pool.default, (x,))


def test_fake_impls_match_real(generator):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(2, 8, 11, 9, generator=generator)
    real = (pooling.max_pool2d(x, (3, 2), (2, 1), (1, 0)), pooling.global_avg_pool(x))
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        fake = (pooling.max_pool2d(fx, (3, 2), (2, 1), (1, 0)), pooling.global_avg_pool(fx))
    for r, f in zip(real, fake, strict=True):
        assert r.shape == f.shape and r.stride() == f.stride() and r.dtype == f.dtype


# --- PackedLinear ------------------------------------------------------------------------------


def _linear(generator, dtype=torch.float32, bias=True):
    lin = nn.Linear(64, 30, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(30, 64, generator=generator) * 0.1)
        if bias:
            lin.bias.copy_(torch.randn(30, generator=generator))
    return pooling.PackedLinear.from_linear(lin).to(dtype).requires_grad_(False)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", sorted(capability.fast_dtypes(), key=str),
                         ids=[str(d).removeprefix("torch.") for d in
                              sorted(capability.fast_dtypes(), key=str)])
def test_packed_linear_matches_linear(dtype, bias, generator):
    lin = _linear(generator, dtype, bias)
    for n in (1, 3, 8, 1):
        x = torch.randn(n, 64, generator=generator).to(dtype)
        with torch.no_grad():
            y = lin(x)
        ref = F.linear(x.double(), lin.weight.double(),
                       None if lin.bias is None else lin.bias.double())
        assert y.dtype == dtype
        assert relative_error(y, ref) <= tolerance(dtype, "op")
    assert sorted(lin._packed) == [1, 3, 8], "one packed weight per batch size, reused"


def test_packed_linear_follows_updates(generator):
    lin = _linear(generator)
    x = torch.randn(4, 64, generator=generator)
    with torch.no_grad():
        lin(x)
        lin.weight.mul_(-2.0)
        lin.bias.add_(1.0)
        y = lin(x)
        lin.weight.data.mul_(3.0)  # bypasses the version counter: refresh() is the remedy
        lin.refresh()
        y3 = lin(x)
    ref = F.linear(x.double(), lin.weight.double() / 3.0, lin.bias.double())
    assert relative_error(y, ref) <= tolerance(torch.float32, "op")
    ref3 = F.linear(x.double(), lin.weight.double(), lin.bias.double())
    assert relative_error(y3, ref3) <= tolerance(torch.float32, "op")


def test_packed_linear_many_batch_sizes_and_fallbacks(generator):
    lin = _linear(generator)
    with torch.no_grad():
        for n in range(1, pooling.PackedLinear.MAX_SHAPES + 4):
            x = torch.randn(n, 64, generator=generator)
            ref = F.linear(x.double(), lin.weight.double(), lin.bias.double())
            assert relative_error(lin(x), ref) <= tolerance(torch.float32, "op")
        assert len(lin._packed) == pooling.PackedLinear.MAX_SHAPES
        assert lin(torch.randn(0, 64)).shape == (0, 30)
        x3 = torch.randn(2, 5, 64, generator=generator)  # not 2-D: F.linear
        assert relative_error(lin(x3), F.linear(x3, lin.weight, lin.bias)) == 0.0
    with pytest.raises(RuntimeError):
        lin(torch.randn(2, 63))


def test_packed_linear_copies_and_pickles(generator):
    lin = _linear(generator)
    x = torch.randn(2, 64, generator=generator)
    with torch.no_grad():
        y = lin(x)
        for other in (copy.deepcopy(lin), pickle.loads(pickle.dumps(lin))):
            assert torch.equal(other(x), y)


# --- in fused models ---------------------------------------------------------------------------


def test_fused_model_uses_them_and_aten_does_not(generator):
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    fast, ref_path = fuse(model, backend="cpu"), fuse(model, backend="aten")
    assert isinstance(fast.maxpool, pooling.MaxPool)
    assert isinstance(fast.pool, pooling.GlobalAvgPool)
    assert isinstance(fast.fc, pooling.PackedLinear)
    assert type(ref_path.maxpool) is nn.MaxPool2d and type(ref_path.fc) is nn.Linear
    x = torch.randn(2, 3, 40, 36, generator=generator)
    with torch.no_grad():
        y = fast(x)
        ref = copy.deepcopy(model).double()(x.double())
    assert relative_error(y, ref) <= tolerance(torch.float32, "model")
    # Same numbers as the reference path's modules: identical state_dict keys and values.
    fast_state, ref_state = fast.state_dict(), ref_path.state_dict()
    assert list(fast_state) == list(ref_state)
    assert all(torch.equal(fast_state[k], ref_state[k]) for k in ref_state)


def test_unusual_pools_are_kept(generator):
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    model.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    model.fc = nn.Linear(512 * 4, 10)
    fused = fuse(model, backend="cpu")
    assert type(fused.maxpool) is nn.MaxPool2d and type(fused.pool) is nn.AdaptiveAvgPool2d
    x = torch.randn(1, 3, 65, 65, generator=generator)
    with torch.no_grad():
        y = fused(x)
        ref = copy.deepcopy(model).double()(x.double())
    assert relative_error(y, ref) <= tolerance(torch.float32, "model")
