"""The sm_90a CUTLASS path (csrc/sm90/) through ``conv_bn_act_cuda_impl(..., "sm90_cutlass")``.

Needs a CUDA GPU; the numerics tests need an sm_90 GPU (H100/H200) and a build with the sm90
kernels. On an sm_90 GPU a build WITHOUT them fails ``test_sm90_kernels_are_built_on_sm90``
rather than skipping, so a GPU session cannot silently validate nothing. The implementation op
never falls back: a call it cannot take raises, so a passing call ran the CUTLASS kernel (and
``test_the_cutlass_kernel_really_runs`` also finds it in the profiler's kernel list).

Checks follow tests/test_cuda.py: the reference composition on fp32 copies, bounds from
``resnet_fused.testing``, outputs poisoned with NaN so an unwritten element cannot pass.
"""

from __future__ import annotations

import pytest
import torch
from sm90_cases import SM90_EDGE_CASES

from resnet_fused.poison import poisoned_outputs
from resnet_fused.reference import conv_bn_act_reference
from resnet_fused.testing import (
    random_bn_params,
    relative_error,
    resnet_conv_shapes,
    tolerance,
)

if not torch.cuda.is_available():
    pytest.skip("sm90 CUTLASS tests need a CUDA GPU (none is visible)", allow_module_level=True)

pytestmark = pytest.mark.gpu

IMPL = torch.ops.resnet_fused.conv_bn_act_cuda_impl.default
SUPPORTS = torch.ops.resnet_fused.cuda_impl_supports
CL = torch.channels_last
SM90 = torch.cuda.get_device_capability() == (9, 0)
BUILT = torch.ops.resnet_fused.cuda_impl_status("sm90_cutlass") == "built"
CONFIGS = [n.split(":", 1)[1] for n in torch.ops.resnet_fused.cuda_impls()
           if n.startswith("sm90_cutlass:")]
DTYPES = [torch.bfloat16, torch.float16]
DTYPE_IDS = ["bf16", "fp16"]

needs_sm90 = pytest.mark.skipif(not (SM90 and BUILT),
                                reason="needs an sm_90 GPU and a build with the sm90 kernels")


def test_sm90_kernels_are_built_on_sm90():
    if not SM90:
        pytest.skip("not an sm_90 GPU")
    status = torch.ops.resnet_fused.cuda_impl_status("sm90_cutlass")
    assert status == "built", f"sm_90 GPU, but this build lacks the sm90 kernels: {status}"


def make_args(x_size, w_size, stride, padding, residual, relu, dtype, generator, layout="cl"):
    n, c, h, w = x_size
    k, _, r, s = w_size
    ho = (h + 2 * padding[0] - r) // stride[0] + 1
    wo = (w + 2 * padding[1] - s) // stride[1] + 1
    x = torch.randn(n, c, h, w, generator=generator).to(dtype).cuda()
    wt = (torch.randn(k, c, r, s, generator=generator) * (2.0 / (c * r * s)) ** 0.5).to(dtype)
    wt = wt.cuda()
    scale, shift = (t.cuda() for t in random_bn_params(k, generator))
    res = torch.randn(n, k, ho, wo, generator=generator).to(dtype).cuda() if residual else None
    if layout == "cl":
        x, wt = x.contiguous(memory_format=CL), wt.contiguous(memory_format=CL)
        res = None if res is None else res.contiguous(memory_format=CL)
    elif layout == "sliced":  # every other W column of a 2x wider tensor: not dense
        big = torch.zeros(n, c, h, 2 * w, dtype=dtype, device="cuda")
        big[..., ::2] = x
        x = big[..., ::2]
        res = None if res is None else res.transpose(2, 3).contiguous().transpose(2, 3)
    elif layout == "offset":  # dense channels_last, data pointer one element past aligned
        flat = torch.empty(x.numel() + 1, dtype=dtype, device="cuda")
        view = flat[1:].view(n, h, w, c).permute(0, 3, 1, 2)
        view.copy_(x)
        x = view
    return x, wt, scale, shift, res, list(stride), list(padding), relu


def check(args, impl="sm90_cutlass"):
    x, wt, scale, shift, res, stride, padding, relu = args
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = conv_bn_act_reference(x.float(), wt.float(), scale, shift,
                                    None if res is None else res.float(), stride, padding, relu)
    with poisoned_outputs():  # an element the kernel does not write stays NaN
        y = IMPL(*args, impl)
    assert y.shape == ref.shape and y.dtype == x.dtype and y.is_contiguous(memory_format=CL)
    assert torch.isfinite(y).all(), "unwritten (NaN) or non-finite elements"
    err = relative_error(y, ref)
    bound = tolerance(x.dtype, "op", "cuda")
    assert err <= bound, f"relative error {err:.3g} > {bound:.3g}"
    return y


RESNET50 = resnet_conv_shapes(("resnet50",), batch=1)


def shape_id(s):
    (_, c, h, _), (k, _, r, _), stride, _, res = s
    return f"c{c}h{h}-k{k}r{r}s{stride[0]}{'-res' if res else ''}"


@needs_sm90
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("shape", RESNET50, ids=shape_id)
def test_resnet50_shapes(shape, batch, dtype, generator):
    x_size, w_size, stride, padding, residual = shape
    x_size = (batch, *x_size[1:])
    for relu in (True, False):
        check(make_args(x_size, w_size, stride, padding, residual, relu, dtype, generator))


@needs_sm90
@pytest.mark.slow
@pytest.mark.parametrize("shape", RESNET50, ids=shape_id)
def test_resnet50_shapes_batch256(shape, generator):
    x_size, w_size, stride, padding, residual = shape
    check(make_args((256, *x_size[1:]), w_size, stride, padding, residual, True,
                    torch.bfloat16, generator))


# (input, weight, stride, padding, residual, relu, layout)


@needs_sm90
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", SM90_EDGE_CASES, ids=lambda c: "x".join(map(str, c[0] + c[1]))
                         + f"-{c[6]}")
def test_edge_shapes(case, dtype, generator):
    check(make_args(*case[:6], dtype, generator, layout=case[6]))


FAMILY_SHAPES = [  # one shape per family, every candidate configuration of it
    ((4, 256, 28, 28), (512, 256, 1, 1), (1, 1), (0, 0), True),
    ((4, 512, 28, 28), (1024, 512, 1, 1), (2, 2), (0, 0), False),
    ((4, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1), True),
    ((4, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3), False),
]


@needs_sm90
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_every_configuration(config, dtype, generator):
    ran = 0
    for x_size, w_size, stride, padding, residual in FAMILY_SHAPES:
        args = make_args(x_size, w_size, stride, padding, residual, True, dtype, generator)
        impl = f"sm90_cutlass:{config}"
        if SUPPORTS(args[0], args[1], args[4], stride, padding, impl) == "":
            check(args, impl)
            ran += 1
        else:
            with pytest.raises(RuntimeError, match="cannot take this call"):
                IMPL(*args, impl)
    assert ran >= 1, f"{config} is a candidate for none of the family shapes"


STREAM_K = "sm90_cutlass:gemm_128x128x64_streamk"


@needs_sm90
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_stream_k_on_batch_1_1x1_convs_is_right_and_deterministic(dtype, generator):
    """Stream-K on every ResNet-50 1x1 stride-1 conv at batch 1 (where its k-tiles spread over
    SMs whole tiles would leave idle): within the bound, with and without the residual, and the
    same bits on every run (the partial sums are reduced in a fixed order through the
    workspace, which is fresh from the allocator on each call)."""
    ones = [s for s in RESNET50 if s[1][2:] == (1, 1) and tuple(s[2]) == (1, 1)]
    assert ones
    for x_size, w_size, stride, padding, residual in ones:
        args = make_args(x_size, w_size, stride, padding, residual, True, dtype, generator)
        first = check(args, STREAM_K)
        for _ in range(3):
            assert torch.equal(IMPL(*args, STREAM_K), first), (x_size, w_size)


@needs_sm90
def test_the_cutlass_kernel_really_runs(generator):
    """The profiler sees a CUTLASS conv kernel (not the mma.sync one) for the sm90 impl."""
    args = make_args((2, 64, 28, 28), (128, 64, 3, 3), (1, 1), (1, 1), True, True,
                     torch.bfloat16, generator)
    IMPL(*args, "sm90_cutlass")  # warm-up
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        IMPL(*args, "sm90_cutlass")
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert any("cutlass" in n and "ConvUniversal" in n for n in names), names


@needs_sm90
def test_refusals_raise_with_the_reason(generator):
    args = make_args((2, 64, 8, 8), (13, 64, 1, 1), (1, 1), (0, 0), False, True,
                     torch.float16, generator)
    assert "multiple of 8" in SUPPORTS(args[0], args[1], None, [1, 1], [0, 0], "sm90_cutlass")
    with pytest.raises(RuntimeError, match="C_out = 13 is not a multiple of 8"):
        IMPL(*args, "sm90_cutlass")
    args32 = make_args((2, 64, 8, 8), (64, 64, 3, 3), (1, 1), (1, 1), False, True,
                       torch.float32, generator)
    with pytest.raises(RuntimeError, match="float16 and bfloat16 only"):
        IMPL(*args32, "sm90_cutlass")
    with pytest.raises(RuntimeError, match="unknown CUDA implementation"):
        IMPL(*args32, "sm90")


def test_not_sm90_refuses(generator):
    if SM90 or not BUILT:
        pytest.skip("needs a non-sm_90 GPU and a build with the sm90 kernels")
    args = make_args((2, 64, 8, 8), (64, 64, 3, 3), (1, 1), (1, 1), False, True,
                     torch.bfloat16, generator)
    assert "needs an sm_90 GPU" in SUPPORTS(args[0], args[1], None, [1, 1], [1, 1],
                                            "sm90_cutlass")
    with pytest.raises(RuntimeError, match="needs an sm_90 GPU"):
        IMPL(*args, "sm90_cutlass")


@pytest.mark.parametrize("dtype", [torch.float32, *DTYPES], ids=["fp32", *DTYPE_IDS])
def test_mma_sync_impl_matches_conv_bn_act(dtype, generator):
    """"mma_sync" is exactly the default CUDA op (same kernel, same result bits)."""
    if torch.ops.resnet_fused.cuda_impl_status("mma_sync") != "built":
        pytest.skip("this build has no CUDA kernels")
    args = make_args((2, 24, 9, 11), (32, 24, 3, 3), (1, 1), (1, 1), True, True, dtype,
                     generator)
    y = IMPL(*args, "mma_sync")
    assert torch.equal(y, torch.ops.resnet_fused.conv_bn_act(*args))


@needs_sm90
def test_batch_zero(generator):
    args = list(make_args((1, 16, 9, 9), (24, 16, 3, 3), (2, 2), (1, 1), True, True,
                          torch.float16, generator))
    args[0], args[4] = args[0][:0], args[4][:0]
    y = IMPL(*args, "sm90_cutlass")
    assert y.shape == (0, 24, 5, 5) and y.is_contiguous(memory_format=CL)


@needs_sm90
def test_nan_propagates_through_relu(generator):
    args = list(make_args((1, 16, 6, 6), (16, 16, 1, 1), (1, 1), (0, 0), False, True,
                          torch.bfloat16, generator))
    args[0] = args[0].clone()
    args[0][0, :, 2, 3] = float("nan")
    y = IMPL(*args, "sm90_cutlass")
    assert torch.isnan(y[0, :, 2, 3]).all() and torch.isfinite(y[0, :, 0, 0]).all()


@needs_sm90
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_opcheck(dtype, generator):
    samples = [
        ((2, 16, 9, 7), (24, 16, 3, 3), (1, 1), (1, 1), True, True),
        ((2, 3, 15, 13), (16, 3, 7, 7), (2, 2), (3, 3), False, False),
        ((2, 32, 6, 6), (64, 32, 1, 1), (2, 2), (0, 0), False, True),
    ]
    for case in samples:
        torch.library.opcheck(IMPL, (*make_args(*case, dtype, generator), "sm90_cutlass"))


@needs_sm90
def test_cuda_graph_capture_and_stream(generator):
    args = make_args((4, 64, 28, 28), (256, 64, 1, 1), (1, 1), (0, 0), True, True,
                     torch.bfloat16, generator)
    expected = IMPL(*args, "sm90_cutlass")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = IMPL(*args, "sm90_cutlass")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, expected)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        x = torch.empty_like(args[0])
        x.copy_(args[0])
        z = IMPL(x, *args[1:], "sm90_cutlass")
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(z, expected)
