"""The host-side plan of the sm_90a CUTLASS conv (csrc/sm90/conv_plan.h), checked on any machine.

The CUTLASS kernels build their arguments from this plan, so checking it here checks what they are
given: shapes, strides and padding of CUTLASS's conv problem, the GEMM view and grid, the TMA
descriptors' arguments and limits, the stem's channel padding, the epilogue's parameters and the
configuration choice. Every expectation is computed independently below from the convolution's
definition and the hardware's documented limits, for every conv shape of the ResNet family at
224x224 (batch 1 and 256) and for edge shapes.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from sm90_cases import SM90_EDGE_CASES

import resnet_fused
from resnet_fused.testing import resnet_conv_shapes

PLAN = torch.ops.resnet_fused._sm90_conv_plan

# The configurations (name -> tile M, N, K, cluster M, N, residual variant built) and the shape
# families' candidates, default first: the table in csrc/sm90/conv_plan.h, restated.
CONFIGS = {
    "128x128x64_c2x1": (128, 128, 64, 2, 1, True),
    "128x128x64_c1x1": (128, 128, 64, 1, 1, True),
    "128x64x64_c1x1": (128, 64, 64, 1, 1, True),
    "128x64x16_c1x1": (128, 64, 16, 1, 1, True),
    "gemm_128x128x64_pingpong": (128, 128, 64, 1, 1, True),
    "gemm_256x128x64_c1x2_coop": (256, 128, 64, 1, 2, True),
    "gemm_128x128x64_streamk": (128, 128, 64, 1, 1, True),
}
# The configurations that are CUTLASS's persistent GEMM (1x1 stride-1 convs only), and among
# them the stream-K one, for GEMMs of at most STREAM_K_MAX_TILES output tiles.
GEMMS = {"gemm_128x128x64_pingpong", "gemm_256x128x64_c1x2_coop", "gemm_128x128x64_streamk"}
STREAM_K = {"gemm_128x128x64_streamk"}
STREAM_K_MAX_TILES = 512
CANDIDATES = {
    "1x1": ["128x128x64_c1x1", "128x128x64_c2x1", "128x64x64_c1x1", "gemm_128x128x64_pingpong",
            "gemm_256x128x64_c1x2_coop", "gemm_128x128x64_streamk"],
    "1x1_strided": ["128x128x64_c1x1", "128x64x64_c1x1"],
    "3x3": ["128x128x64_c1x1", "128x128x64_c2x1", "128x64x64_c1x1"],
    "stem": ["128x64x16_c1x1"],
}


def plan(input_size, weight_size, stride, padding, dtype=torch.bfloat16, residual=False,
         relu=True, sm=90, config=""):
    lines = PLAN(list(input_size), list(weight_size), list(stride), list(padding), dtype,
                 residual, relu, sm, config)
    out = dict(line.split("=", 1) for line in lines)
    for key, value in out.items():
        if key not in ("why", "family", "config"):
            out[key] = tuple(int(v) for v in value.split(","))
            if len(out[key]) == 1:
                out[key] = out[key][0]
    return out


def cdiv(a, b):
    return -(-a // b)


def family(c, r, s, stride):
    if cdiv(c, 8) * 8 <= 16:
        return "stem"
    if (r, s) == (1, 1):
        return "1x1" if tuple(stride) == (1, 1) else "1x1_strided"
    return "3x3"


def expected_plan(input_size, weight_size, stride, padding, residual, relu, config=""):
    """The plan, from the convolution's definition (NHWC / KRSC / NPQK, 2-byte elements)."""
    n, c, h, w = input_size
    k, _, r, s = weight_size
    (sh, sw), (ph, pw) = stride, padding
    fam = family(c, r, s, stride)
    name = config or CANDIDATES[fam][0]
    tm, tn, tk, cm, cn, _ = CONFIGS[name]
    cp = cdiv(c, 8) * 8
    p, q = (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1
    eb = 2
    return {
        "ok": 1, "family": fam, "config": name, "gemm": int(name in GEMMS),
        "stream_k": int(name in STREAM_K), "tile": (tm, tn, tk),
        "cluster": (cm, cn),
        "residual": int(residual), "relu": int(relu), "element_bytes": eb,
        "c_padded": cp, "pad_channels": int(cp != c),
        "act_shape": (n, h, w, cp), "act_stride": (h * w * cp, w * cp, cp, 1),
        "flt_shape": (k, r, s, cp), "flt_stride": (r * s * cp, s * cp, cp, 1),
        "out_shape": (n, p, q, k), "out_stride": (p * q * k, q * k, k, 1),
        "lower_padding": (ph, pw), "upper_padding": (ph, pw), "traversal_stride": (sh, sw),
        "dilation": (1, 1),
        "gemm_mnk": (n * p * q, k, r * s * cp),
        "k_tiles": r * s * cdiv(cp, tk),
        "grid": (cdiv(cdiv(n * p * q, tm), cm) * cm, cdiv(cdiv(k, tn), cn) * cn),
        "output_tiles": cdiv(n * p * q, tm) * cdiv(k, tn),
        # im2col: dims innermost first, byte strides of W/H/N, corners (w, h) of the box the
        # filter's top-left tap sweeps, traversal strides per dim, box = tile K x tile M.
        "tma_a_dims": (cp, w, h, n),
        "tma_a_strides_bytes": (cp * eb, w * cp * eb, h * w * cp * eb),
        "tma_a_lower_corner": (-pw, -ph),
        "tma_a_upper_corner": (pw - (s - 1), ph - (r - 1)),
        "tma_a_element_strides": (1, sw, sh, 1),
        "tma_a_channels_per_pixel": tk, "tma_a_pixels_per_column": tm,
        "tma_b_dims": (cp, s, r, k),
        "tma_b_strides_bytes": (cp * eb, s * cp * eb, r * s * cp * eb),
        "tma_b_box": (tk, tn),
        "epi_stride_qpn": (k, q * k, p * q * k), "epi_vector_len": k,
    }


def im2col_box_rows(size, pad, filt, stride):
    """Output positions TMA im2col produces along one dim: the filter's first tap walks from the
    lower corner to (size - 1 + upper corner) in steps of the traversal stride."""
    lower, upper = -pad, pad - (filt - 1)
    return len(range(lower, size - 1 + upper + 1, stride))


RESNET_SHAPES = resnet_conv_shapes(batch=1) + resnet_conv_shapes(batch=256)  # cached


def test_resnet_shape_list_is_complete():
    """The hook walk found the convs it should: the stem, 1x1 and 3x3 of every stage, strided."""
    kinds = {(w[2], s) for _, w, s, _, _ in RESNET_SHAPES}
    assert {(7, (2, 2)), (1, (1, 1)), (1, (2, 2)), (3, (1, 1)), (3, (2, 2))} <= kinds
    assert {x[0] for x, *_ in RESNET_SHAPES} == {1, 256}
    # ResNet-50: the stem; layer1: 1x1 64->64 and 256->64, 3x3, 1x1 64->256, downsample; layers
    # 2-4: 1x1 in (first block and the others), strided 3x3, 3x3, 1x1 out, strided downsample.
    assert len(resnet_conv_shapes(("resnet50",))) == 1 + 5 + 3 * 6
    residual = [(x, w) for x, w, _, _, res in resnet_conv_shapes(("resnet50",)) if res]
    assert len(residual) == 4 and all(w[1:] == (w[1], 1, 1) for _, w in residual)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", RESNET_SHAPES,
                         ids=lambda s: f"n{s[0][0]}c{s[0][1]}h{s[0][2]}-k{s[1][0]}r{s[1][2]}"
                                       f"s{s[2][0]}{'-res' if s[4] else ''}")
def test_resnet_conv_plans(shape, dtype):
    x, w, stride, padding, residual = shape
    got = plan(x, w, stride, padding, dtype=dtype, residual=residual, relu=True)
    assert got == expected_plan(x, w, stride, padding, residual, True)
    # CUTLASS's output extent (its formula with lower + upper padding) and TMA im2col's sweep
    # agree with conv2d's.
    n, p, q, k = got["out_shape"]
    ref = torch.nn.functional.conv2d(torch.empty(x, device="meta"), torch.empty(w, device="meta"),
                                     stride=stride, padding=padding).shape
    assert (n, k, p, q) == tuple(ref)
    assert p == im2col_box_rows(x[2], padding[0], w[2], stride[0])
    assert q == im2col_box_rows(x[3], padding[1], w[3], stride[1])


@pytest.mark.parametrize("fam_shape", [
    ("1x1", (8, 256, 14, 14), (512, 256, 1, 1), (1, 1), (0, 0)),
    ("1x1_strided", (8, 512, 28, 28), (1024, 512, 1, 1), (2, 2), (0, 0)),
    ("3x3", (8, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1)),
    ("stem", (8, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3)),
], ids=lambda f: f[0])
def test_every_candidate_config_of_each_family(fam_shape):
    fam, x, w, stride, padding = fam_shape
    for name in CANDIDATES[fam]:
        got = plan(x, w, stride, padding, config=name)
        assert got == expected_plan(x, w, stride, padding, False, True, config=name), name
    for name in set(CONFIGS) - set(CANDIDATES[fam]):  # outside the family: refused, with why
        got = plan(x, w, stride, padding, config=name)
        assert got["ok"] == 0 and "not a candidate" in got["why"] and fam in got["why"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_resnet_1x1_conv_plans_as_a_persistent_gemm(dtype):
    """The GEMM path's host plan on every 1x1 stride-1 conv of the ResNet family (batch 1 and
    256, with and without the residual): M = pixels, N = C_out, K = C_in, dense row-major
    operands; the strided 1x1 convs and padded ones stay on the conv kernel."""
    ones = [s for s in RESNET_SHAPES if s[1][2:] == (1, 1) and tuple(s[2]) == (1, 1)]
    assert len({(x, w) for x, w, *_ in ones}) >= 10
    for x, w, stride, padding, residual in ones:
        for name in sorted(GEMMS):
            got = plan(x, w, stride, padding, dtype=dtype, residual=residual, config=name)
            n, c, h, wd = x
            tiles = cdiv(n * h * wd, 128) * cdiv(w[0], 128)
            if name in STREAM_K and tiles > STREAM_K_MAX_TILES:
                assert got["ok"] == 0 and "stream-K" in got["why"] and str(tiles) in got["why"]
                continue
            assert got == expected_plan(x, w, stride, padding, residual, True, config=name)
            assert got["gemm"] == 1 and got["gemm_mnk"] == (n * h * wd, w[0], c)
    for x, w, stride, padding in (((8, 512, 28, 28), (1024, 512, 1, 1), (2, 2), (0, 0)),
                                  ((2, 64, 9, 9), (64, 64, 1, 1), (1, 1), (1, 1))):
        for name in sorted(GEMMS):
            got = plan(x, w, stride, padding, config=name)
            assert got["ok"] == 0 and ("not a candidate" in got["why"]
                                       or "1x1 filters with stride 1 and no padding" in got["why"])


def test_stream_k_takes_every_batch_1_resnet_1x1_conv():
    """Stream-K is for small GEMMs: every 1x1 stride-1 conv of the ResNet family at batch 1
    plans on it (layer4's 49 pixels are one M tile); at batch 256 only layer4's narrower ones
    (7x7 into 512 channels: 392 tiles, three uneven waves on 132 SMs), not the thousands of
    tiles of the others; the boundary is exactly STREAM_K_MAX_TILES output tiles."""
    name = "gemm_128x128x64_streamk"
    taken = set()
    for x, w, stride, padding, residual in RESNET_SHAPES:
        if w[2:] != (1, 1) or tuple(stride) != (1, 1):
            continue
        got = plan(x, w, stride, padding, residual=residual, config=name)
        tiles = cdiv(x[0] * x[2] * x[3], 128) * cdiv(w[0], 128)
        assert got["ok"] == int(tiles <= STREAM_K_MAX_TILES), (x, w, got.get("why"))
        if x[0] == 1:
            assert got["ok"] == 1, (x, w, got.get("why"))
        if got["ok"]:
            assert got["stream_k"] == 1 and got["output_tiles"] == tiles
            taken.add(x[0])
    assert taken == {1, 256}
    # M = 128 * 256 pixels x N = 256 channels: 256 * 2 = 512 tiles, the limit; one more pixel
    # makes 257 M tiles, 514 tiles.
    at_limit = plan((128, 64, 16, 16), (256, 64, 1, 1), (1, 1), (0, 0), config=name)
    assert at_limit["ok"] == 1 and at_limit["output_tiles"] == STREAM_K_MAX_TILES
    past = plan((1, 64, 1, 128 * 256 + 1), (256, 64, 1, 1), (1, 1), (0, 0), config=name)
    assert past["ok"] == 0 and "514 output tiles" in past["why"]


# Edge shapes: (input, weight, stride, padding, residual, relu)
EDGE_SHAPES = [
    ((1, 64, 56, 56), (256, 64, 1, 1), (1, 1), (0, 0), True, False),  # N = 1, no ReLU
    ((3, 64, 15, 13), (64, 64, 3, 3), (1, 1), (1, 1), True, True),  # odd H, W
    ((2, 128, 15, 17), (128, 128, 3, 3), (2, 2), (1, 1), False, True),  # odd, strided
    ((2, 20, 9, 11), (24, 20, 3, 3), (1, 1), (1, 1), True, True),  # C = 20 -> 24, 3x3 family
    ((2, 3, 31, 29), (64, 3, 7, 7), (2, 2), (3, 3), False, True),  # stem, odd H/W
    ((1, 5, 7, 7), (8, 5, 3, 3), (1, 1), (1, 1), False, False),  # C = 5 -> 8: stem family
    ((2, 16, 10, 9), (32, 16, 3, 1), (1, 2), (0, 1), False, True),  # R != S, mixed stride/pad
    ((1, 8, 1, 1), (16, 8, 3, 3), (1, 1), (1, 1), False, True),  # 1x1 image, all padding
    ((2, 256, 13, 13), (512, 256, 1, 1), (2, 2), (0, 0), False, False),  # odd 1x1 strided
    ((1, 24, 5, 5), (40, 24, 5, 5), (3, 3), (2, 2), False, True),  # 5x5, stride 3
    ((2, 1000, 3, 3), (8, 1000, 1, 1), (1, 1), (0, 0), True, True),  # C = 1000 (mult. of 8)
    ((1, 33, 7, 7), (16, 33, 3, 3), (1, 1), (1, 1), False, True),  # C = 33 -> 40
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", SM90_EDGE_CASES, ids=lambda c: "x".join(map(str, c[0] + c[1]))
                         + f"-res{int(c[4])}")
def test_gpu_edge_cases_all_plan(case, dtype):
    """Every edge case the GPU tier runs through sm90_cutlass (tests/test_cuda_sm90.py) has a
    plan here: a shape the plan refuses would only fail there, on the GPU's time."""
    x, w, stride, padding, residual, relu, _layout = case
    got = plan(x, w, stride, padding, dtype=dtype, residual=residual, relu=relu)
    assert got["ok"] == 1, got.get("why")
    assert got == expected_plan(x, w, stride, padding, residual, relu)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("edge", EDGE_SHAPES, ids=lambda e: "x".join(map(str, e[0] + e[1])))
def test_edge_shape_plans(edge, dtype):
    x, w, stride, padding, residual, relu = edge
    got = plan(x, w, stride, padding, dtype=dtype, residual=residual, relu=relu)
    assert got == expected_plan(x, w, stride, padding, residual, relu)


def test_stem_channels_are_padded_to_16_bytes():
    got = plan((2, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3))
    assert got["c_padded"] == 8 and got["pad_channels"] == 1
    assert got["tma_a_strides_bytes"][0] == 16 and got["tma_b_strides_bytes"][0] == 16
    assert plan((2, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1))["pad_channels"] == 0


# Refusals: (input, weight, stride, padding, kwargs, words the reason must contain)
REFUSALS = [
    ((2, 64, 8, 8), (13, 64, 1, 1), (1, 1), (0, 0), {}, ["C_out = 13", "multiple of 8"]),
    ((2, 64, 8, 8), (64, 64, 3, 3), (1, 1), (1, 1), {"dtype": torch.float32},
     ["float32", "mma_sync"]),
    ((2, 64, 8, 8), (64, 64, 3, 3), (1, 1), (1, 1), {"sm": 80}, ["sm_90", "8.0"]),
    ((2, 64, 8, 8), (64, 64, 3, 3), (1, 1), (1, 1), {"sm": 100}, ["sm_90", "10.0"]),
    ((2, 64, 40, 40), (64, 64, 3, 3), (9, 9), (1, 1), {}, ["stride", "at most 8"]),
    ((1, 16, 8, 8), (16, 16, 3, 3), (1, 1), (300, 300), {}, ["padding", "256"]),
    ((1, 16, 8, 8), (16, 16, 3, 3), (1, 1), (200, 200), {}, ["corner", "-128"]),
    ((1, 16, 4, 4), (16, 16, 257, 257), (1, 1), (128, 128), {}, ["filter offsets"]),
    ((4096, 64, 1024, 1024), (64, 64, 1, 1), (1, 1), (0, 0), {}, ["32-bit", "M = N*P*Q"]),
    ((0, 64, 8, 8), (64, 64, 3, 3), (1, 1), (1, 1), {}, ["empty problem", "N=0"]),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: "-".join(r[5][:1]))
def test_refusals_say_why(refusal):
    x, w, stride, padding, kwargs, words = refusal
    got = plan(x, w, stride, padding, **kwargs)
    assert got["ok"] == 0, got
    for word in words:
        assert word in got["why"], (word, got["why"])


def test_tma_corner_limits_are_exactly_the_hardwares():
    """Corners are signed 8-bit on a 4-D im2col tensor: padding 128 passes (-128), 129 fails."""
    ok = plan((1, 16, 4, 4), (16, 16, 129, 129), (1, 1), (128, 128))
    assert ok["ok"] == 1 and ok["tma_a_lower_corner"] == (-128, -128)
    assert ok["tma_a_upper_corner"] == (0, 0)
    bad = plan((1, 16, 4, 4), (16, 16, 3, 3), (1, 1), (129, 129))
    assert bad["ok"] == 0 and "corner" in bad["why"]


def test_unknown_config_name_raises():
    with pytest.raises(RuntimeError, match="unknown configuration 'nope'"):
        plan((1, 16, 8, 8), (16, 16, 3, 3), (1, 1), (1, 1), config="nope")


def test_cuda_impl_names_and_status():
    """cuda_impls()/cuda_impl_status() answer on any machine; unknown names raise, naming the
    known ones; a build without the sm90 kernels says why."""
    names = torch.ops.resnet_fused.cuda_impls()
    status = {impl: torch.ops.resnet_fused.cuda_impl_status(impl)
              for impl in ("mma_sync", "sm90_cutlass")}
    for impl, s in status.items():
        assert s == "built" or (s.startswith("absent: ") and len(s) > len("absent: ") + 10), impl
    assert ("mma_sync" in names) == (status["mma_sync"] == "built")
    sm90_names = [n for n in names if n.startswith("sm90_cutlass:")]
    if status["sm90_cutlass"] == "built":
        assert sorted(n.split(":", 1)[1] for n in sm90_names) == sorted(CONFIGS)
    else:
        assert sm90_names == []
    with pytest.raises(RuntimeError, match=r"unknown CUDA implementation 'cudnn'.*mma_sync"):
        torch.ops.resnet_fused.cuda_impl_status("cudnn")
    impls = resnet_fused.backends.cuda_implementations()
    assert set(impls) == {"mma_sync", "sm90_cutlass"}
    if status["sm90_cutlass"] == "built":
        assert "not run on a GPU" in impls["sm90_cutlass"]
    else:
        assert impls["sm90_cutlass"] == status["sm90_cutlass"]


def test_info_lists_cuda_implementations(capsys):
    from resnet_fused import info

    info.run()
    out = capsys.readouterr().out
    assert "cuda implementations" in out and "sm90_cutlass" in out and "mma_sync" in out


def test_grid_rounds_up_to_the_cluster():
    # 3 M tiles of 128 with a 2x1 cluster launch 4 CTAs along M.
    got = plan((1, 64, 16, 24), (128, 64, 1, 1), (1, 1), (0, 0), config="128x128x64_c2x1")
    assert got["gemm_mnk"][0] == 384 and got["grid"] == (4, 1)
    assert math.prod(got["out_shape"]) == 384 * 128


def test_fake_impl_of_the_named_impl_op():
    """conv_bn_act_cuda_impl's fake (for torch.compile) gives conv_bn_act's sizes and strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w = torch.empty(2, 16, 9, 7, dtype=torch.bfloat16), torch.empty(24, 16, 3, 3)
        w = w.to(torch.bfloat16)
        scale, shift = torch.empty(24), torch.empty(24)
        y = torch.ops.resnet_fused.conv_bn_act_cuda_impl(x, w, scale, shift, None, [2, 2],
                                                          [1, 1], True, "sm90_cutlass")
        ref = torch.ops.resnet_fused.conv_bn_act(x, w, scale, shift, None, [2, 2], [1, 1], True)
    assert y.shape == ref.shape == (2, 24, 5, 4) and y.dtype == torch.bfloat16
    cl = torch.empty(2, 24, 5, 4, memory_format=torch.channels_last).stride()
    assert y.stride() == ref.stride() == cl


def test_sanitizer_script_runs_only_planned_cases(monkeypatch):
    """benchmarks/cuda_paths.py (the compute-sanitizer script) runs each sm90 configuration only
    on the cases its plan takes: a refusal there is not a memory error, and used to fail the run."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_paths.py"
    spec = importlib.util.spec_from_file_location("cuda_paths", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "cuda_paths", module)  # its dataclasses look it up there
    spec.loader.exec_module(module)
    names = ["mma_sync", "sm90_cutlass"] + [f"sm90_cutlass:{c}" for c in CONFIGS]
    keep, dropped = module.runnable(module.cases(names))
    assert dropped, "some configuration/case pairs are not candidates: they must be skipped"
    for case, why in dropped:
        assert case.impl.startswith("sm90_cutlass:") and why, case
    for case in keep:
        assert module.plan_refusal(case) == "", case
    # Every configuration still runs somewhere, and the default op runs every default case.
    for config in CONFIGS:
        assert any(c.impl == f"sm90_cutlass:{config}" for c in keep), config
    assert sum(1 for c in keep if not c.impl) == sum(1 for c in module.cases([]) if not c.impl)
