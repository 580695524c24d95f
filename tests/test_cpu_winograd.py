"""Winograd 3x3 convolutions on the CPU: ``resnet_fused::winograd_conv3x3`` and the fast path.

The op (csrc/cpu/winograd_cpu.cpp) computes ``act(conv3x3(x, w * scale) + shift (+ residual))``,
stride 1, padding 1, from a filter already transformed by ``winograd.transform_filter``: F(4,3)
(36 planes) in float32, F(2,3) (16 planes) in any of float32/bfloat16/float16. Covered here:

* numerics against the higher-precision reference composition with the project's per-op bounds
  (fp32 vs float64, bf16/fp16 vs fp32), with random data and non-trivial BatchNorm: sizes that are
  not multiples of the tile, channel counts that are not multiples of the 64-channel chunk,
  residual/ReLU on and off, contiguous and channels_last inputs and residuals;
* both execution paths of the C++ (float32 blocks of tiles, each transform -> GEMM -> transform
  on its own; or one GEMM over all tiles), shown to run through the GEMM shapes the profiler
  records, and the last, partial block checked on its own pixels;
* the AVX-512 pipelines (CPUs with AVX512_BF16; fp32 and bf16): taken (no ATen GEMM) exactly
  where ``winograd.pipeline_path`` says, the pair-packed bf16 filter (``pack_filter``) giving the
  same bits as the plain one, channel and column tails of their vector steps;
* NaN/inf propagation (ReLU must not turn a NaN into 0), bad arguments named in the error,
  empty and zero-channel tensors, ``opcheck`` and the fake impl;
* ``transform_filter``, ``policy`` (``RESNET_FUSED_WINOGRAD``) and ``eligible``;
* the CPU fast path (``OneDNNConv``) under each policy, single convs and whole ResNets, with
  proof of which algorithm ran, and prepared Winograd filters that follow weight updates.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from resnet_fused import fuse
from resnet_fused.cpu import capability, onednn, winograd
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.reference import conv_bn_act_reference
from resnet_fused.testing import (
    assert_within_bound,
    dtype_name,
    random_bn_params,
    reference_dtype,
    relative_error,
)

CL = torch.channels_last
OP = torch.ops.resnet_fused.winograd_conv3x3.default
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FAST = sorted(capability.fast_dtypes(), key=str)
FAST_IDS = [str(d).removeprefix("torch.") for d in FAST]




# --- building the op's arguments -----------------------------------------------------------------


def f23_filter_fp32(weight, scale):
    """An F(2,3) filter in float32 (transform_filter picks F(4,3) for float32; the op accepts
    both), written as the per-pair product G g G^T, independently of transform_filter's einsum."""
    g = torch.tensor(winograd._G[2], dtype=torch.float64)
    folded = weight.double() * scale.double().view(-1, 1, 1, 1)
    u = g @ folded @ g.T  # (K, C, 4, 4)
    return u.permute(2, 3, 1, 0).reshape(16, weight.shape[1], weight.shape[0]).float().contiguous()


def make_args(generator, n, c, k, h, w, dtype, residual):
    """Random input, weight (rounded to dtype: the reference uses the same rounded weight),
    BatchNorm scale/shift and residual."""
    weight = (torch.randn(k, c, 3, 3, generator=generator) * (2.0 / (9 * max(c, 1))) ** 0.5)
    scale, shift = random_bn_params(k, generator)
    x = torch.randn(n, c, h, w, generator=generator).to(dtype)
    res = torch.randn(n, k, h, w, generator=generator).to(dtype) if residual else None
    return x, weight.to(dtype), scale, shift, res


def reference(x, weight, scale, shift, res, relu):
    rd = reference_dtype(x.dtype)
    return conv_bn_act_reference(x.to(rd), weight.to(rd), scale, shift,
                                 None if res is None else res.to(rd), (1, 1), (1, 1), relu)


def layout(t, name):
    if t is None:
        return None
    return t.contiguous(memory_format=CL) if name == "channels_last" else t.contiguous()


# --- numerics ------------------------------------------------------------------------------------

# (n, c, k, h, w, residual, relu): H and W not multiples of 4 (or 2) and down to 1, C and K not
# multiples of the 64-channel chunk (3, 70, 130: one tail, one chunk plus a tail, two plus a tail).
CASES = [
    (2, 3, 16, 1, 1, False, True),
    (2, 5, 7, 2, 3, True, True),
    (3, 3, 70, 5, 7, True, False),
    (1, 70, 3, 13, 6, False, False),
    (2, 130, 130, 7, 7, True, True),
    (1, 16, 64, 3, 13, False, True),
    (2, 64, 65, 9, 4, True, True),
    (3, 24, 40, 6, 11, False, True),
]


def case_id(c) -> str:
    n, ci, k, h, w, res, relu = c
    return f"n{n}c{ci}k{k}_{h}x{w}{'_res' if res else ''}{'' if relu else '_norelu'}"


@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_op_matches_reference(case, dtype, x_layout, generator):
    n, c, k, h, w, residual, relu = case
    x, weight, scale, shift, res = make_args(generator, n, c, k, h, w, dtype, residual)
    ref = reference(x, weight, scale, shift, res, relu)
    # The residual in the other layout than the input: the op must take any pairing.
    res_layout = "contiguous" if x_layout == "channels_last" else "channels_last"
    u = winograd.transform_filter(weight, scale, dtype)
    y = OP(layout(x, x_layout), u, shift, layout(res, res_layout), relu)
    assert y.shape == (n, k, h, w) and y.dtype == dtype
    assert y.is_contiguous(memory_format=CL)
    assert_within_bound(y, ref, dtype)


@pytest.mark.parametrize("case", CASES[:5], ids=case_id)
def test_f23_in_float32(case, generator):
    """The op takes a 16-plane (F(2,3)) filter with float32 inputs too; F(2,3) is the smaller
    transform, so it meets the fp32 bound as well."""
    n, c, k, h, w, residual, relu = case
    x, weight, scale, shift, res = make_args(generator, n, c, k, h, w, torch.float32, residual)
    y = OP(x, f23_filter_fp32(weight, scale), shift, res, relu)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    assert_within_bound(y, reference(x, weight, scale, shift, res, relu), torch.float32)


def test_sliced_input_and_residual(generator):
    """Neither contiguous nor channels_last: the op makes its own channels_last copy."""
    x, weight, scale, shift, res = make_args(generator, 2, 6, 10, 7, 9, torch.float32, True)
    xv = torch.randn(2, 8, 7, 18, generator=generator)[:, 1:7, :, ::2]
    xv.copy_(x)
    rv = torch.randn(2, 10, 9, 9, generator=generator).transpose(2, 3)[:, :, :7]
    rv.copy_(res)
    kept_x, kept_r = xv.clone(), rv.clone()
    y = OP(xv, winograd.transform_filter(weight, scale, torch.float32), shift, rv, True)
    assert torch.equal(xv, kept_x) and torch.equal(rv, kept_r), "inputs must not be written"
    assert_within_bound(y, reference(x, weight, scale, shift, res, True), torch.float32)


# --- the two C++ execution paths -----------------------------------------------------------------

_BLOCK_BYTES = 512 * 1024  # kBlockBytes in winograd_cpu.cpp
_MAX_BLOCKED_FILTER_BYTES = 4 * 1024 * 1024  # kMaxBlockedFilterBytes


def plan(n, c, k, h, w, dtype, tile):
    """The C++'s choice, mirrored: (blocked, tiles per block, tiles)."""
    a = tile + 2
    item = torch.empty((), dtype=dtype).element_size()
    tiles = n * math.ceil(h / tile) * math.ceil(w / tile)
    block = max(1, _BLOCK_BYTES // (a * a * max(c, k) * item))
    blocks = math.ceil(tiles / block)
    blocked = (dtype == torch.float32 and a * a * c * k * item <= _MAX_BLOCKED_FILTER_BYTES
               and blocks >= 2 * torch.get_num_threads())
    return blocked, block, tiles


def batch_for_blocks(c, k, h, w):
    """The smallest batch >= 2 that takes the float32 F(4,3) blocked path on this machine's thread
    count with a last block that is partial."""
    for n in range(2, 65):
        blocked, block, tiles = plan(n, c, k, h, w, torch.float32, 4)
        if blocked and tiles % block:
            return n
    raise AssertionError(f"no batch <= 64 gives C={c} K={k} {h}x{w} a partial last block")


# C_out not a multiple of 16 keeps every case on the portable path on any CPU (the AVX-512
# pipelines take the others where the CPU has them: see test_avx512_pipelines).
PATHS = {
    # blocked: float32, filter <= 4 MiB, >= 2 blocks per thread
    "blocked-c64k72": (None, 64, 72, 42, 42, torch.float32, True),
    "blocked-c32k84-odd": (None, 32, 84, 37, 30, torch.float32, False),
    "blocked-c130k130": (None, 130, 130, 20, 21, torch.float32, True),
    # unblocked: few tiles; a filter over 4 MiB (C = 192, K = 200: 5.5 MiB); not float32
    "unblocked-few-tiles": (1, 64, 72, 8, 8, torch.float32, True),
    "unblocked-big-filter": (2, 192, 200, 24, 24, torch.float32, True),
    "unblocked-bf16": (2, 64, 72, 40, 40, torch.bfloat16, True),
    "unblocked-fp16": (2, 64, 64, 40, 40, torch.float16, False),
}


def bmm_shapes(fn):
    """The (V, U[, out]) shapes of every aten::bmm the profiler sees while fn() runs (calls made on
    ATen's worker threads are not recorded; the calling thread's are)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        y = fn()
    return y, [e.input_shapes for e in prof.events() if e.name == "aten::bmm"]


@pytest.mark.parametrize("name", list(PATHS))
def test_blocked_and_unblocked_paths(name, generator):
    n, c, k, h, w, dtype, residual = PATHS[name]
    if n is None:
        n = batch_for_blocks(c, k, h, w)
    tile = winograd.tile_size(dtype)
    blocked, block, tiles = plan(n, c, k, h, w, dtype, tile)
    assert blocked == name.startswith("blocked"), "the case does not exercise the path it names"
    x, weight, scale, shift, res = make_args(generator, n, c, k, h, w, dtype, residual)
    ref = reference(x, weight, scale, shift, res, True)
    u = winograd.transform_filter(weight, scale, dtype)
    y, shapes = bmm_shapes(lambda: OP(x, u, shift, res, True))
    a2 = (tile + 2) ** 2
    assert shapes, "no aten::bmm recorded"
    if blocked:
        # bmm_out per block of `block` tiles (the partial one may run on a worker thread)
        assert all(len(s) == 3 and s[0][0] == a2 and s[0][1] in (block, tiles % block)
                   for s in shapes), shapes
    else:
        # one bmm_out over all tiles, into the kept M buffer
        assert shapes == [[[a2, tiles, c], [a2, c, k], [a2, tiles, k]]], shapes
    assert_within_bound(y, ref, dtype)
    if blocked:
        # The last, partial block's pixels on their own: an error there would be diluted in the
        # whole tensor's norm. Tile t of an output pixel: b * th * tw + (y // m) * tw + x // m.
        th, tw = math.ceil(h / tile), math.ceil(w / tile)
        b = torch.arange(n).view(-1, 1, 1)
        yy = torch.arange(h).view(1, -1, 1) // tile
        xx = torch.arange(w).view(1, 1, -1) // tile
        last = (b * th * tw + yy * tw + xx) >= tiles - tiles % block
        assert last.any() and not last.all()
        pick = last.unsqueeze(1).expand_as(y)
        assert_within_bound(y[pick], ref[pick], dtype, what="partial last block: ")


# --- the AVX-512 pipelines: the op's own transforms and GEMM, blocks kept in cache --------------

# (n, c, k, h, w): pipeline shapes (where the CPU has them) and the shapes next to them that
# are not (C_out not a multiple of 16; bf16: odd C_in), with channel tails of the 16-channel
# transform steps (c = 2, 5, 70, 130), column tails of the GEMM's 64-column blocks (k = 16, 48,
# 80, 208), tiles per block not multiples of its 6 rows, several blocks with a partial last one
# (n = 3 at 40x40), and filters over 4 MiB, which run each step over all tiles instead of in
# blocks (c = k = 192 in fp32: 5.3 MiB; c = k = 400: 5.1 MiB in bf16, 20.6 MiB in fp32).
PIPELINE_CASES = [
    (2, 5, 16, 6, 7),
    (2, 8, 24, 6, 6),
    (1, 2, 16, 3, 3),
    (2, 16, 48, 17, 17),
    (3, 70, 80, 9, 7),
    (1, 130, 208, 6, 6),
    (3, 64, 64, 40, 40),
    (1, 192, 192, 8, 8),
    (2, 400, 400, 7, 9),
]


def pipeline_case_id(case) -> str:
    n, c, k, h, w = case
    return f"n{n}c{c}k{k}_{h}x{w}"


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
@pytest.mark.parametrize("case", PIPELINE_CASES, ids=pipeline_case_id)
def test_avx512_pipelines(case, dtype, residual, generator):
    """The op takes an AVX-512 pipeline exactly where ``winograd.pipeline_path`` says (no ATen
    GEMM runs; elsewhere the portable path's bmm does), within the dtype's bound; in bf16 a
    pair-packed filter gives the same bits as the plain one on either path (packed per call /
    unpacked per call)."""
    n, c, k, h, w = case
    x, weight, scale, shift, res = make_args(generator, n, c, k, h, w, dtype, residual)
    u = winograd.transform_filter(weight, scale, dtype)
    y, shapes = bmm_shapes(lambda: OP(x, u, shift, res, True))
    if winograd.pipeline_path(dtype, c, k):
        assert shapes == [], "an AVX-512 pipeline must not call ATen's bmm"
    else:
        assert shapes, "off the pipelines, the portable path's bmm must run"
    assert_within_bound(y, reference(x, weight, scale, shift, res, True), dtype)
    if dtype == torch.bfloat16:
        packed = winograd.pack_filter(u)
        assert packed.shape == (16, (c + 1) // 2, k, 2)
        assert torch.equal(OP(x, packed, shift, res, True), y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_avx512_pipeline_relu_and_nan(dtype, generator):
    """The pipelines' epilogue: without ReLU negative outputs survive; with ReLU none is < 0
    and a NaN input stays NaN in its tile's outputs (ReLU must not clear it)."""
    n, c, k, h, w = 1, 16, 32, 8, 8
    x, weight, scale, shift, _ = make_args(generator, n, c, k, h, w, dtype, False)
    u = winograd.transform_filter(weight, scale, dtype)
    plain = OP(x, u, shift, None, False)
    assert (plain < 0).any()
    assert_within_bound(plain, reference(x, weight, scale, shift, None, False), dtype)
    x[0, 3, 2, 2] = float("nan")
    y = OP(x, u, shift, None, True)
    assert y[0, :, 2, 2].isnan().all(), "NaN must reach its own pixel in every channel"
    assert not (y[~y.isnan()] < 0).any()


def test_pack_filter_layout(generator):
    """pack_filter puts U[p, ci, ko] at [p, ci // 2, ko, ci % 2], an odd C_in padded with zeros;
    only bf16 F(2,3) filters are accepted."""
    for c in (6, 7):
        u = torch.randn(16, c, 5, generator=generator).bfloat16()
        packed = winograd.pack_filter(u)
        assert packed.shape == (16, (c + 1) // 2, 5, 2) and packed.is_contiguous()
        ci = torch.arange(c)
        assert torch.equal(packed[:, ci // 2, :, ci % 2].permute(1, 0, 2), u)
        if c % 2:
            assert (packed[:, -1, :, 1] == 0).all()
    for bad in (torch.randn(16, 4, 5), torch.randn(36, 4, 5).bfloat16(),
                torch.randn(4, 5).bfloat16()):
        with pytest.raises(ValueError, match="pack_filter: u must be a bfloat16 F"):
            winograd.pack_filter(bad)


def test_kept_buffers_across_calls(generator):
    """V and M live in per-thread buffers reused from call to call (grown on demand): calls of
    growing, shrinking and mixed shapes and dtypes stay right, and an earlier call's output is
    not touched by later calls."""
    outputs = []
    for n, c, k, hw, dtype in [(1, 8, 16, 6, torch.float32), (2, 64, 64, 40, torch.float32),
                               (1, 8, 16, 6, torch.bfloat16), (3, 70, 20, 17, torch.float32),
                               (2, 64, 64, 40, torch.bfloat16), (1, 8, 16, 6, torch.float32)]:
        x, weight, scale, shift, _ = make_args(generator, n, c, k, hw, hw, dtype, False)
        y = OP(x, winograd.transform_filter(weight, scale, dtype), shift, None, True)
        assert_within_bound(y, reference(x, weight, scale, shift, None, True), dtype)
        outputs.append((y, y.clone()))
    for y, copy_right_after in outputs:
        assert torch.equal(y, copy_right_after)


def test_request_larger_than_the_kept_buffers(generator):
    """A V of more than 64 MiB (kMaxKeptBytes) is allocated for the call instead of kept."""
    n, c, k, hw = 4, 160, 24, 128  # bf16 F(2,3): 16 x 16384 tiles x 160 x 2 B = 80 MiB
    x, weight, scale, shift, _ = make_args(generator, n, c, k, hw, hw, torch.bfloat16, False)
    assert 16 * winograd.tiles(n, hw, hw, torch.bfloat16) * c * 2 > 64 << 20
    y = OP(x, winograd.transform_filter(weight, scale, torch.bfloat16), shift, None, True)
    assert_within_bound(y, reference(x, weight, scale, shift, None, True), torch.bfloat16)


# --- NaN and inf -----------------------------------------------------------------------------


def far_mask(h, w, at, dist):
    yy = torch.arange(h).view(-1, 1)
    xx = torch.arange(w).view(1, -1)
    return torch.maximum((yy - at[0]).abs(), (xx - at[1]).abs()) >= dist


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_nan_propagates(dtype, relu, generator):
    x, weight, scale, shift, res = make_args(generator, 2, 8, 6, 16, 16, dtype, True)
    at = (6, 9)
    x[1, 3, at[0], at[1]] = float("nan")
    res[0, 2, 0, 0] = float("nan")
    y = OP(x, winograd.transform_filter(weight, scale, dtype), shift, res, relu)
    ref = reference(x, weight, scale, shift, res, relu)
    # Every output whose 3x3 window holds the NaN, in every output channel: NaN (ReLU keeps it).
    assert torch.isnan(y[1, :, at[0] - 1:at[0] + 2, at[1] - 1:at[1] + 2]).all()
    assert torch.isnan(y[0, 2, 0, 0]), "a NaN residual must survive the epilogue"
    assert torch.isnan(ref).logical_and(~torch.isnan(y)).sum() == 0
    # A NaN reaches at most the tiles whose (m+2)^2 patch holds it: outputs more than m away
    # (4 for F(4,3), 2 for F(2,3)) stay finite, and so does the other image.
    far = far_mask(16, 16, at, 5)
    assert torch.isfinite(y[1][:, far]).all()
    ok = torch.ones_like(y[0], dtype=torch.bool)
    ok[2, 0, 0] = False
    assert torch.isfinite(y[0][ok]).all()
    # The finite outputs are still right.
    keep = ~torch.isnan(y)  # a superset of the reference's NaNs (checked above)
    assert_within_bound(y[keep], ref[keep], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_inf_propagates(dtype, generator):
    """An inf input makes its neighbours non-finite (Winograd's transforms may make it NaN where
    the direct convolution has +-inf, both are "not a number you can use"); without ReLU, which
    may legitimately turn -inf into 0."""
    x, weight, scale, shift, _ = make_args(generator, 1, 8, 6, 13, 14, dtype, False)
    at = (5, 7)
    x[0, 1, at[0], at[1]] = float("inf")
    y = OP(x, winograd.transform_filter(weight, scale, dtype), shift, None, False)
    assert not torch.isfinite(y[0, :, at[0] - 1:at[0] + 2, at[1] - 1:at[1] + 2]).any()
    assert torch.isfinite(y[0][:, far_mask(13, 14, at, 5)]).all()


# --- bad arguments ---------------------------------------------------------------------------


def _bad_cases():
    def f(changes):
        def build(x, u, b, r):
            args = {"x": x, "u": u, "b": b, "r": r}
            args.update(changes(x, u, b, r))
            return args["x"], args["u"], args["b"], args["r"]
        return build

    return {
        "input-3d": (f(lambda x, u, b, r: {"x": x[0]}), "input must be 4-D"),
        "input-float64": (f(lambda x, u, b, r: {"x": x.double(), "u": u.double()}),
                          "input must be float32, bfloat16 or float16"),
        "input-int": (f(lambda x, u, b, r: {"x": x.int()}),
                      "input must be float32, bfloat16 or float16"),
        "weight-25-planes": (f(lambda x, u, b, r: {"u": u[:25]}),
                             "weight must be a transformed filter"),
        "weight-2d": (f(lambda x, u, b, r: {"u": u[0]}), "weight must be a transformed filter"),
        "weight-dtype": (f(lambda x, u, b, r: {"u": u[:16].bfloat16()}),
                         "weight must be a CPU tensor of input's dtype"),
        "weight-c_in": (f(lambda x, u, b, r: {"u": u[:, :5]}), "input channels"),
        "bias-bf16": (f(lambda x, u, b, r: {"b": b.bfloat16()}), "bias must be a float32"),
        "bias-shape": (f(lambda x, u, b, r: {"b": b[:-1]}), "bias must be a float32"),
        "bias-2d": (f(lambda x, u, b, r: {"b": b.view(1, -1)}), "bias must be a float32"),
        "residual-shape": (f(lambda x, u, b, r: {"r": r[:, :, :-1]}),
                           "residual must have the output's sizes"),
        "residual-channels": (f(lambda x, u, b, r: {"r": r[:, :-1]}),
                              "residual must have the output's sizes"),
        "residual-dtype": (f(lambda x, u, b, r: {"r": r.bfloat16()}),
                           "residual must be a CPU tensor of input's dtype"),
        "f43-bf16": (f(lambda x, u, b, r: {"x": x.bfloat16(), "u": u.bfloat16(),
                                           "r": r.bfloat16()}),
                     r"F\(4,3\) \(a 36-plane weight\) is for float32 only"),
        "f43-fp16": (f(lambda x, u, b, r: {"x": x.half(), "u": u.half(), "r": r.half()}),
                     r"F\(4,3\) \(a 36-plane weight\) is for float32 only"),
        "packed-fp32": (f(lambda x, u, b, r: {"u": u[:16].reshape(16, 4, 16, 2)}),
                        "a pair-packed weight \\(4-D\\) is for bfloat16 only"),
        "packed-fp16": (f(lambda x, u, b, r: {"x": x.half(), "r": r.half(),
                                              "u": u[:16].reshape(16, 4, 16, 2).half()}),
                        "a pair-packed weight \\(4-D\\) is for bfloat16 only"),
        "packed-pairs": (f(lambda x, u, b, r: {"x": x.bfloat16(), "r": r.bfloat16(),
                                               "u": u[:16, :6].reshape(16, 3, 16, 2).bfloat16()}),
                         "channel pairs .* needs \\(C_in \\+ 1\\) / 2 pairs"),
        "packed-last-dim": (f(lambda x, u, b, r: {"x": x.bfloat16(), "r": r.bfloat16(),
                                                  "u": u[:16].reshape(16, 4, 8, 4).bfloat16()}),
                            "weight must be a transformed filter"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_arguments_are_named(name, generator):
    x, weight, scale, shift, res = make_args(generator, 2, 8, 16, 9, 9, torch.float32, True)
    u = winograd.transform_filter(weight, scale, torch.float32)
    build, match = BAD[name]
    args = build(x, u, shift, res)
    # The unchanged arguments run (so each case fails for the one thing it changes).
    OP(x, u, shift, res, True)
    with pytest.raises(RuntimeError, match=match):
        OP(*args, True)


# --- empty tensors -------------------------------------------------------------------------------


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("shape", [(0, 8, 6, 5, 7), (2, 8, 6, 0, 7), (2, 8, 6, 5, 0),
                                   (2, 8, 0, 5, 7)],
                         ids=["n0", "h0", "w0", "k0"])
def test_empty_outputs(shape, dtype, residual, generator):
    n, c, k, h, w = shape
    x, weight, scale, shift, res = make_args(generator, n, c, k, h, w, dtype, residual)
    y = OP(x, winograd.transform_filter(weight, scale, dtype), shift, res, True)
    assert y.shape == (n, k, h, w) and y.dtype == dtype and y.numel() == 0
    assert y.stride() == torch.empty(n, k, h, w, memory_format=CL).stride()


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_no_input_channels_is_the_epilogue(dtype, residual, generator):
    """C_in = 0: the convolution is 0, the output act(shift (+ residual))."""
    x, weight, scale, shift, res = make_args(generator, 2, 0, 5, 3, 4, dtype, residual)
    y = OP(x, winograd.transform_filter(weight, scale, dtype), shift, res, True)
    expected = shift.view(1, -1, 1, 1).expand(2, 5, 3, 4).double()
    if res is not None:
        expected = expected + res.double()
    assert y.shape == (2, 5, 3, 4) and y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert_within_bound(y, expected.relu(), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("k", [1, 2])
def test_few_output_channels(k, dtype, generator):
    x, weight, scale, shift, res = make_args(generator, 3, 9, k, 6, 5, dtype, True)
    y = OP(x, winograd.transform_filter(weight, scale, dtype), shift, res, True)
    assert y.stride() == torch.empty(3, k, 6, 5, memory_format=CL).stride()
    assert_within_bound(y, reference(x, weight, scale, shift, res, True), dtype)


# --- op contract: opcheck and the fake impl ------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_opcheck(dtype, residual, channels_last, generator):
    x, weight, scale, shift, res = make_args(generator, 2, 5, 6, 9, 7, dtype, residual)
    if channels_last:
        x, res = layout(x, "channels_last"), layout(res, "channels_last")
    torch.library.opcheck(OP, (x, winograd.transform_filter(weight, scale, dtype), shift, res,
                               True))


@pytest.mark.parametrize("shape", [(2, 5, 6, 9, 7), (1, 8, 3, 1, 1), (1, 4, 1, 5, 6),
                                   (0, 4, 6, 5, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_fake_impl_matches_real(shape, dtype, generator):
    from torch._subclasses.fake_tensor import FakeTensorMode

    n, c, k, h, w = shape
    x, weight, scale, shift, res = make_args(generator, n, c, k, h, w, dtype, True)
    u = winograd.transform_filter(weight, scale, dtype)
    real = OP(x, u, shift, res, False)
    with FakeTensorMode() as mode:
        fake = OP(*(mode.from_tensor(t) for t in (x, u, shift, res)), False)
    assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype)


# --- transform_filter ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize(("c", "k"), [(3, 8), (70, 5)])
def test_transform_filter(c, k, dtype, generator):
    weight = torch.randn(k, c, 3, 3, generator=generator).to(dtype)
    scale, _ = random_bn_params(k, generator)
    # A channels_last weight, as FusedConvBNAct keeps it: same result as a contiguous one.
    weight_cl = weight.contiguous(memory_format=CL)
    kept = (weight.clone(), scale.clone())
    u = winograd.transform_filter(weight_cl, scale, dtype)
    m = winograd.tile_size(dtype)
    assert m == (4 if dtype == torch.float32 else 2)
    assert u.shape == ((m + 2) ** 2, c, k) and u.dtype == dtype and u.is_contiguous()
    assert torch.equal(weight_cl, kept[0]) and torch.equal(scale, kept[1]), "inputs modified"
    assert torch.equal(winograd.transform_filter(weight, scale, dtype), u)
    # Against G (w * scale) G^T per pair, computed in float64 independently of the einsum.
    g = torch.tensor(winograd._G[m], dtype=torch.float64)
    expected = g @ (weight.double() * scale.double().view(-1, 1, 1, 1)) @ g.T
    expected = expected.permute(2, 3, 1, 0).reshape(-1, c, k)
    torch.testing.assert_close(u.double(), expected.to(dtype).double())
    # U's corner planes are exact: U[0] = w[:, :, 0, 0] * scale (G's first row is (1/4, 0, 0)
    # for F(4,3): 1/16 of it).
    corner = (weight.double()[:, :, 0, 0] * scale.double().view(-1, 1)).T
    torch.testing.assert_close(u[0].double(), (corner / (16 if m == 4 else 1)).to(dtype).double())


# --- policy and eligibility ----------------------------------------------------------------------


def test_policy_default_and_env(monkeypatch):
    monkeypatch.delenv("RESNET_FUSED_WINOGRAD", raising=False)
    assert winograd.policy() == "auto"
    for value, expected in [("always", "always"), ("never", "never"), ("auto", "auto"),
                            (" Always ", "always"), ("NEVER", "never"), ("", "auto")]:
        monkeypatch.setenv("RESNET_FUSED_WINOGRAD", value)
        assert winograd.policy() == expected, value


@pytest.mark.parametrize("value", ["sometimes", "1", "on", "winograd"])
def test_policy_rejects_bad_values(value, monkeypatch):
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", value)
    with pytest.raises(ValueError, match="RESNET_FUSED_WINOGRAD") as info:
        winograd.policy()
    assert value in str(info.value)


@pytest.mark.parametrize(("kernel", "stride", "padding", "dtype", "expected"), [
    ((3, 3), (1, 1), (1, 1), torch.float32, True),
    ((3, 3), (1, 1), (1, 1), torch.bfloat16, True),
    ((3, 3), (1, 1), (1, 1), torch.float16, True),
    ([3, 3], [1, 1], [1, 1], torch.float32, True),
    ((3, 3), (1, 1), (1, 1), torch.float64, False),
    ((3, 3), (2, 2), (1, 1), torch.float32, False),
    ((3, 3), (1, 2), (1, 1), torch.float32, False),
    ((3, 3), (1, 1), (0, 0), torch.float32, False),
    ((3, 3), (1, 1), (1, 0), torch.float32, False),
    ((1, 1), (1, 1), (0, 0), torch.float32, False),
    ((1, 1), (1, 1), (1, 1), torch.float32, False),
    ((3, 1), (1, 1), (1, 1), torch.float32, False),
    ((7, 7), (1, 1), (1, 1), torch.float32, False),
])
def test_eligible(kernel, stride, padding, dtype, expected):
    assert winograd.eligible(kernel, stride, padding, dtype) is expected


# --- the CPU fast path ---------------------------------------------------------------------------


def _refuse(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} ran where it was not expected")
    return refuse


def forbid_direct(monkeypatch):
    for name in ("_CONV", "_CONV_BINARY", "_CONV_SUM_"):
        monkeypatch.setattr(onednn, name, _refuse(f"oneDNN's direct convolution ({name})"))


def forbid_winograd(monkeypatch):
    monkeypatch.setattr(onednn, "_WINOGRAD", _refuse("the Winograd op"))


def make_conv(generator, c, k, r, stride, padding, dtype, relu=True) -> FusedConvBNAct:
    weight = torch.randn(k, c, r, r, generator=generator) * (2.0 / (c * r * r)) ** 0.5
    scale, shift = random_bn_params(k, generator)
    return FusedConvBNAct(weight.to(dtype), scale, shift, stride, padding, relu, backend="cpu")


def conv_reference(conv, x, residual=None):
    rd = reference_dtype(x.dtype)
    return conv_bn_act_reference(x.to(rd), conv.weight.to(rd), conv.scale, conv.shift,
                                 None if residual is None else residual.to(rd), conv.stride,
                                 conv.padding, conv.relu)


@pytest.mark.parametrize("res_mode", ["nores", "res", "res-scratch"])
@pytest.mark.parametrize("dtype", FAST, ids=dtype_name)
@pytest.mark.parametrize("rule", ["always", "never", "auto"])
def test_fast_path_policy(rule, dtype, res_mode, generator, monkeypatch, no_raw_op):
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", rule)
    # 2 x 11 x 9 is 18 tiles of F(4,3) (fp32): below MIN_TILES (C_out = 20 keeps it off the
    # AVX-512 pipeline and its lower floor), "auto" runs it direct; 60 tiles of F(2,3) (bf16):
    # "auto" runs Winograd.
    by_rule = "winograd" if winograd.by_rule(2, 11, 9, dtype, 12, 20) else "direct"
    assert by_rule == ("direct" if dtype == torch.float32 else "winograd")
    if rule == "always" or (rule == "auto" and by_rule == "winograd"):
        forbid_direct(monkeypatch)
    else:
        forbid_winograd(monkeypatch)
    conv = make_conv(generator, 12, 20, 3, (1, 1), (1, 1), dtype)
    x = torch.randn(2, 12, 11, 9, generator=generator).to(dtype)
    res = (torch.randn(2, 20, 11, 9, generator=generator).to(dtype).contiguous(memory_format=CL)
           if res_mode != "nores" else None)
    ref = conv_reference(conv, x, res)
    kept = None if res is None else res.clone()
    with torch.no_grad():
        y = conv(x, res, residual_is_scratch=res_mode == "res-scratch")
        y2 = conv(x.contiguous(memory_format=CL), None if kept is None else kept.clone())
    algorithms = conv._onednn.algorithms
    if rule == "always":
        assert algorithms == {(2, 11, 9): "winograd"}
    elif rule == "never":
        assert algorithms == {}
    else:
        assert algorithms == {(2, 11, 9): by_rule}
    if res_mode == "res":
        assert torch.equal(res, kept), "a residual that is not scratch must not be written"
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert_within_bound(y, ref, dtype)
    assert_within_bound(y2, ref, dtype)


PIPE = winograd.pipelines_available()


# expected: (on a CPU with the AVX-512 pipelines, without them)
@pytest.mark.parametrize(("n", "hw", "dtype", "c", "k", "expected"), [
    (1, 7, torch.float32, 512, 512, (False, False)),  # 4 tiles: the F(4,3) filter's bytes
    (8, 7, torch.float32, 512, 512, (True, True)),    # 32 tiles
    (1, 14, torch.float32, 256, 256, (True, False)),  # 16: the fp32 pipeline's floor
    (1, 14, torch.float32, 256, 250, (False, False)),  # 16, but C_out % 16: portable path
    (1, 12, torch.float32, 256, 256, (False, False)),  # 9
    (1, 56, torch.float32, 64, 64, (True, True)),
    (1, 7, torch.bfloat16, 512, 512, (False, False)),  # 16 tiles of F(2,3)
    (2, 7, torch.bfloat16, 512, 512, (True, True)),    # 32
    (1, 14, torch.bfloat16, 256, 256, (True, True)),   # 49
])
def test_rule(n, hw, dtype, c, k, expected):
    assert winograd.by_rule(n, hw, hw, dtype, c, k) is expected[0 if PIPE else 1]
    assert winograd.tiles(n, hw, hw, dtype) == n * (-(-hw // winograd.tile_size(dtype))) ** 2
    floor = winograd.min_tiles(dtype, c, k)
    assert floor == (winograd.MIN_TILES_F32_PIPELINE if PIPE and dtype == torch.float32
                     and k % 16 == 0 else winograd.MIN_TILES)


def test_auto_is_reproducible(random_models, generator, monkeypatch):
    """``auto`` is a rule, not a timing: two separately fused models compute the same bits."""
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "auto")
    model = random_models("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        a, b = fuse(model, backend="cpu"), fuse(model, backend="cpu")
        assert torch.equal(a(x), b(x))
    chosen = [v for m in a.modules() if isinstance(m, FusedConvBNAct) and m._onednn
              for v in m._onednn.algorithms.values()]
    # 64x64 at batch 2: layer1 (16x16, 32 F(4,3) tiles) by Winograd, the later stages direct
    assert "winograd" in chosen and "direct" in chosen


def test_fast_path_records_each_shape(generator, monkeypatch, no_raw_op):
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "always")
    forbid_direct(monkeypatch)
    conv = make_conv(generator, 8, 8, 3, (1, 1), (1, 1), torch.float32)
    with torch.no_grad():
        for n, h, w in [(1, 8, 8), (2, 5, 7), (1, 8, 8), (3, 4, 6)]:
            x = torch.randn(n, 8, h, w, generator=generator)
            assert_within_bound(conv(x), conv_reference(conv, x), torch.float32)
    assert conv._onednn.algorithms == {(1, 8, 8): "winograd", (2, 5, 7): "winograd",
                                       (3, 4, 6): "winograd"}


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
def test_images_smaller_than_a_tile_stay_direct(dtype, generator, monkeypatch, no_raw_op):
    """Below one output tile (4x4 in fp32, 2x2 otherwise) Winograd saves nothing and its rounding
    no longer averages out: even under "always" such shapes run oneDNN's direct conv."""
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "always")
    forbid_winograd(monkeypatch)
    m = winograd.tile_size(dtype)
    conv = make_conv(generator, 8, 16, 3, (1, 1), (1, 1), dtype)
    with torch.no_grad():
        for h, w in [(1, 1), (m - 1, 9), (9, m - 1)]:
            x = torch.randn(2, 8, h, w, generator=generator).to(dtype)
            assert_within_bound(conv(x), conv_reference(conv, x), dtype)
    assert conv._onednn.algorithms == {}
    assert not winograd.worthwhile(m - 1, m, dtype) and winograd.worthwhile(m, m, dtype)


@pytest.mark.parametrize(("r", "stride", "padding"), [(1, (1, 1), (0, 0)), (3, (2, 2), (1, 1)),
                                                      (3, (1, 1), (0, 0)), (1, (2, 2), (0, 0))],
                         ids=["1x1", "3x3-s2", "3x3-p0", "1x1-s2"])
def test_ineligible_convs_never_use_winograd(r, stride, padding, generator, monkeypatch,
                                             no_raw_op):
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "always")
    forbid_winograd(monkeypatch)
    conv = make_conv(generator, 8, 16, r, stride, padding, torch.float32)
    x = torch.randn(2, 8, 10, 9, generator=generator)
    with torch.no_grad():
        y = conv(x)
    assert conv._onednn.algorithms == {}
    assert_within_bound(y, conv_reference(conv, x), torch.float32)


def _in_place_weight(conv, g):
    conv.weight.mul_(-1.5)


def _in_place_scale(conv, g):
    conv.scale.copy_(torch.rand(conv.scale.shape, generator=g) + 0.5)


def _in_place_shift(conv, g):
    conv.shift.add_(1.0)


UPDATES = {f.__name__.lstrip("_"): f for f in (_in_place_weight, _in_place_scale,
                                                _in_place_shift)}


@pytest.mark.parametrize("dtype", FAST, ids=dtype_name)
@pytest.mark.parametrize("update", list(UPDATES))
def test_winograd_filter_follows_updates(update, dtype, generator, monkeypatch, no_raw_op):
    """The transformed filter (and its bias) are derived state: an in-place update of the
    module's weight, scale or shift is seen by the next call."""
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "always")
    forbid_direct(monkeypatch)
    conv = make_conv(generator, 8, 16, 3, (1, 1), (1, 1), dtype, relu=False)
    x = torch.randn(2, 8, 10, 10, generator=generator).to(dtype)
    with torch.no_grad():
        before = conv(x)
        assert_within_bound(before, conv_reference(conv, x), dtype)
        UPDATES[update](conv, generator)
        after = conv(x)
    ref = conv_reference(conv, x)
    assert conv._onednn.algorithms == {(2, 10, 10): "winograd"}
    assert_within_bound(after, ref, dtype)
    assert relative_error(before, ref) > 5e-2, "the update must change the output"


# --- whole models --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FAST, ids=dtype_name)
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_models_with_winograd(name, dtype, random_models, generator, monkeypatch, no_raw_op):
    """resnet18's BasicBlock conv2 takes the residual in a Winograd conv; resnet50's conv2s
    are 3x3 stride 1 except each stage's first from layer2 on (stride 2)."""
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "always")
    model = random_models(name)
    fused = fuse(model, backend="cpu", dtype=dtype)
    x = torch.randn(2, 3, 128, 128, generator=generator)  # layer4 at 4x4: one F(4,3) tile
    with torch.no_grad():
        y = fused(x)
        if dtype == torch.float32:
            ref = copy.deepcopy(model).double()(x.double())
        else:
            ref = model(x)  # the fp32 composition
    convs = [m for m in fused.modules() if isinstance(m, FusedConvBNAct)]
    eligible = [m for m in convs if tuple(m.weight.shape[2:]) == (3, 3)
                and m.stride == (1, 1) and m.padding == (1, 1)]
    assert eligible
    for m in convs:
        chosen = set(m._onednn.algorithms.values())
        assert chosen == ({"winograd"} if m in eligible else set()), (m, chosen)
    assert y.dtype == dtype
    assert_within_bound(y, ref, dtype, "model")
