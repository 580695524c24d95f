"""The C++/CUDA backend (csrc/cuda/): numerics, layouts, op contracts, models, graphs, streams.

Every check compares with the reference composition (``resnet_fused.reference``) run on float64
copies (fp32 results) or float32 copies (fp16/bf16 results) of the very tensors the op got, within
``resnet_fused.testing.tolerance``. Outputs are poisoned (the caching allocator hands the op a
NaN-filled block) so an element the kernel never writes cannot pass.

The whole module needs a CUDA GPU and an install built with the CUDA kernels; elsewhere it skips.
"""

from __future__ import annotations

import random

import pytest
import torch

import resnet_fused
from resnet_fused import ops
from resnet_fused.cuda import channels
from resnet_fused.poison import poisoned_outputs
from resnet_fused.reference import add_relu_reference, conv_bn_act_reference
from resnet_fused.testing import (
    TOLERANCES,
    random_bn_params,
    randomize_batchnorm_,
    reference_dtype,
    relative_error,
    round_to_tf32,
    tolerance,
    try_import,
)

if not torch.cuda.is_available():
    pytest.skip("CUDA backend tests need a CUDA GPU (none is visible)", allow_module_level=True)
if resnet_fused.backend_status()["cuda"] != "available":
    pytest.skip(f"CUDA backend unavailable: {resnet_fused.backend_status()['cuda']}",
                allow_module_level=True)

pytestmark = pytest.mark.gpu

CL = torch.channels_last
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
CONV = torch.ops.resnet_fused.conv_bn_act.default
ADD_RELU = torch.ops.resnet_fused.add_relu.default
PATH_ENV = "RESNET_FUSED_CUDA_CONV_PATH"  # read by csrc/cuda/conv_bn_act_cuda.cpp (debug knob)


# --- helpers -------------------------------------------------------------------------------------


def cl_strides(shape) -> tuple[int, ...]:
    return torch.empty(tuple(shape), memory_format=CL).stride()


def out_hw(h, w, r, s, stride, padding):
    return (h + 2 * padding[0] - r) // stride[0] + 1, (w + 2 * padding[1] - s) // stride[1] + 1


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: contiguous, channels_last, a non-dense view,
    or channels_last at a storage offset that leaves the data pointer unaligned."""
    if layout == "contig":
        return t.contiguous()
    if layout == "cl":
        return t.contiguous(memory_format=CL)
    if layout == "sliced":  # every other W column of a 2x wider tensor: not dense
        n, c, h, w = t.shape
        big = torch.zeros(n, c, h, 2 * w, dtype=t.dtype, device=t.device)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "offset":  # dense channels_last, but data_ptr is one element past an aligned one
        n, c, h, w = t.shape
        flat = torch.empty(n * c * h * w + 1, dtype=t.dtype, device=t.device)
        view = flat[1:].view(n, h, w, c).permute(0, 3, 1, 2)
        view.copy_(t)
        return view
    raise ValueError(layout)


# (n, c, h, w, k, r, s, stride, padding, residual, relu, layout)
CASES = [
    (2, 3, 31, 29, 64, 7, 7, (2, 2), (3, 3), False, True, "contig"),  # stem, C_in = 3 (padded)
    (1, 3, 32, 32, 64, 7, 7, (2, 2), (3, 3), False, True, "cl"),  # stem, channels_last
    (3, 64, 15, 13, 64, 3, 3, (1, 1), (1, 1), True, True, "cl"),  # 3x3 s1, odd H/W, residual
    (2, 128, 15, 17, 128, 3, 3, (2, 2), (1, 1), False, True, "cl"),  # 3x3 s2, odd H/W
    (2, 64, 14, 14, 256, 1, 1, (1, 1), (0, 0), True, True, "cl"),  # 1x1 s1 (plain GEMM)
    (2, 256, 13, 13, 512, 1, 1, (2, 2), (0, 0), False, False, "contig"),  # 1x1 s2 downsample
    (2, 20, 9, 11, 24, 3, 3, (1, 1), (1, 1), True, True, "cl"),  # C_in not a multiple of 8
    (1, 5, 7, 7, 7, 3, 3, (1, 1), (1, 1), True, True, "contig"),  # odd C_in and C_out
    (2, 16, 8, 8, 13, 1, 1, (1, 1), (0, 0), True, False, "cl"),  # odd C_out, no ReLU
    (1, 64, 9, 9, 200, 3, 3, (1, 1), (1, 1), False, True, "cl"),  # partial column tile
    (2, 16, 10, 9, 32, 3, 1, (1, 2), (0, 1), True, True, "contig"),  # R != S, mixed stride/pad
    (2, 40, 12, 10, 48, 3, 3, (1, 1), (1, 1), True, True, "sliced"),  # non-dense input
    (2, 32, 11, 9, 40, 3, 3, (2, 2), (1, 1), True, True, "offset"),  # unaligned data pointer
    (1, 8, 1, 1, 16, 3, 3, (1, 1), (1, 1), False, True, "cl"),  # 1x1 image, all padding but centre
    (8, 64, 56, 56, 256, 1, 1, (1, 1), (0, 0), True, True, "cl"),  # big: the 128x128 tile
    (8, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1), False, True, "cl"),  # K = 64: the 128x64 tile
    (2, 512, 7, 7, 512, 3, 3, (1, 1), (1, 1), True, True, "cl"),  # late stage: the 64x64 tile
    # The big tiles with partial row and column tiles (the cases above fill them exactly):
    (6, 64, 47, 45, 200, 3, 3, (1, 1), (1, 1), True, True, "cl"),  # 128x128, M and C_out tails
    (10, 32, 47, 45, 99, 1, 1, (1, 1), (0, 0), True, True, "cl"),  # 128x128, odd C_out
    (10, 32, 47, 45, 40, 1, 1, (1, 1), (0, 0), True, False, "cl"),  # 128x64, M and C_out tails
    (4, 3, 224, 224, 64, 7, 7, (2, 2), (3, 3), False, True, "contig"),  # real stem: 128x64 tile
]


def random_cases(seed: int, count: int):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        r = rng.choice([1, 3, 5, 7])
        stride = rng.choice([1, 2])
        pad = rng.randint(0, r // 2)
        h, w = rng.randint(r, 23), rng.randint(r, 23)
        cases.append((rng.randint(1, 3), rng.randint(1, 72), h, w, rng.randint(1, 150), r, r,
                      (stride, stride), (pad, pad), rng.random() < 0.5, rng.random() < 0.7,
                      rng.choice(["contig", "cl", "sliced"])))
    return cases


ALL_CASES = CASES + random_cases(seed=4, count=20)


def make_case(case, dtype, generator):
    n, c, h, w, k, r, s, stride, padding, residual, relu, layout = case
    ho, wo = out_hw(h, w, r, s, stride, padding)
    x = torch.randn(n, c, h, w, generator=generator).to(dtype)
    # Kaiming-like scale keeps outputs O(1) whatever C*R*S is.
    wt = (torch.randn(k, c, r, s, generator=generator) * (2.0 / (c * r * s)) ** 0.5).to(dtype)
    scale, shift = random_bn_params(k, generator)
    res = torch.randn(n, k, ho, wo, generator=generator).to(dtype) if residual else None
    x = relayout(x.cuda(), layout)
    wt = relayout(wt.cuda(), "cl" if layout == "sliced" else layout)
    res = None if res is None else relayout(res.cuda(), layout)
    return x, wt, scale.cuda(), shift.cuda(), res, list(stride), list(padding), relu


def reference(x, wt, scale, shift, res, stride, padding, relu):
    rd = reference_dtype(x.dtype)
    # TF32 off: the fp32 reference for fp16/bf16 results must itself be fp32-accurate.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        return conv_bn_act_reference(x.to(rd), wt.to(rd), scale, shift,
                                     None if res is None else res.to(rd), stride, padding, relu)


def poisoned(fn):
    """fn() with the package's GPU ops NaN-filling their outputs before they launch
    (resnet_fused.poison): an element a kernel fails to write stays NaN."""
    with poisoned_outputs():
        return fn()


def run_and_check(args, dtype, bound=None, call=None):
    """``call(*args)`` (default: the cuda backend, which picks an implementation per shape)
    against the reference, its output poisoned first."""
    call = call or (lambda *a: ops.conv_bn_act(*a, backend="cuda"))
    ref = reference(*args)
    y = poisoned(lambda: call(*args))
    assert y.shape == ref.shape and y.dtype == dtype and y.is_cuda
    assert y.stride() == cl_strides(ref.shape), f"not channels_last: {y.stride()}"
    assert torch.isfinite(y).all(), "unwritten (NaN) or non-finite elements"
    err = relative_error(y, ref)
    bound = tolerance(dtype, "op", "cuda") if bound is None else bound
    assert err <= bound, f"relative error {err:.3g} > {bound:.3g}"
    return y


# --- conv_bn_act ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: "x".join(map(str, c[:7])) + f"-{c[11]}")
def test_conv_bn_act_vs_reference(case, dtype, generator):
    run_and_check(make_case(case, dtype, generator), dtype)


@pytest.mark.parametrize("case", CASES[:9], ids=lambda c: "x".join(map(str, c[:7])))
def test_conv_fp32_without_tf32_is_ieee_accurate(case, generator):
    """With TF32 off (PyTorch's cuDNN conv flag) fp32 takes the FMA kernel: fp32-exact bounds."""
    args = make_case(case, torch.float32, generator)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        run_and_check(args, torch.float32, bound=TOLERANCES[(torch.float32, "op")])


def test_fp32_with_tf32_takes_the_tensor_core_path(generator):
    """With PyTorch's cuDNN TF32 flag on, fp32 runs the TF32 mma kernel, whose error is TF32-sized:
    far above fp32 rounding. An fp32-exact result means the tensor-core path was not selected
    (a wrong arch/alignment check or a misread TF32 flag), which every other check would miss."""
    args = make_case(CASES[15], torch.float32, generator)  # 3x3, C_in = 64: a 576-deep sum
    ref = reference(*args)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        y = run_and_check(args, torch.float32)
    err = relative_error(y, ref)
    assert err > 1e-5, f"relative error {err:.3g}: fp32-exact, so TF32 tensor cores did not run"
    # Against the same operands rounded to TF32 first (cvt.rna, tests/test_tf32_bound.py), the
    # kernel's only error is its fp32 accumulation: truncating instead of rounding, or rounding
    # the accumulator, would show here as TF32-sized error.
    x, wt, *rest = args
    emulated = reference(round_to_tf32(x), round_to_tf32(wt), *rest)
    err_emulated = relative_error(y, emulated)
    assert err_emulated <= 1e-5, (f"relative error {err_emulated:.3g} against TF32-rounded "
                                  "operands: the kernel does not round them as cvt.rna does")


@pytest.mark.parametrize("path", ["direct", "simt"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forced_kernel_paths(path, dtype, monkeypatch, generator):
    """The fallback kernels (normally reached only on old GPUs or odd inputs) are correct too."""
    monkeypatch.setenv(PATH_ENV, path)  # "simt" is fp32-only: other dtypes ignore it
    # With TF32 off, both paths accumulate plain fp32 products: fp32-exact bounds for fp32.
    bound = TOLERANCES[(torch.float32, "op")] if dtype == torch.float32 else None
    # The raw op is the mma.sync implementation, which reads the variable on every call; the cuda
    # backend would run whatever it chose for the shape before (a memo the variable is not in).
    for case in CASES[:8]:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            run_and_check(make_case(case, dtype, generator), dtype, bound, call=CONV)


@pytest.mark.parametrize("residual", [False, True])
def test_conv_batch_zero(residual, generator):
    args = list(make_case((1, 16, 9, 9, 24, 3, 3, (2, 2), (1, 1), residual, True, "cl"),
                          torch.float16, generator))
    args[0] = args[0][:0]
    if residual:
        args[4] = args[4][:0]
    y = ops.conv_bn_act(*args, backend="cuda")
    assert y.shape == (0, 24, 5, 5) and y.dtype == torch.float16 and y.is_cuda
    assert y.stride() == cl_strides(y.shape)


def test_conv_propagates_nan(generator):
    args = list(make_case((1, 8, 6, 6, 8, 1, 1, (1, 1), (0, 0), False, True, "cl"),
                          torch.float16, generator))
    args[0] = args[0].clone()
    args[0][0, :, 2, 3] = float("nan")
    y = ops.conv_bn_act(*args, backend="cuda")
    assert torch.isnan(y[0, :, 2, 3]).all()  # ReLU must not turn NaN into 0
    assert torch.isfinite(y[0, :, 0, 0]).all()


def test_conv_does_not_modify_inputs(generator):
    args = make_case((2, 3, 17, 17, 16, 7, 7, (2, 2), (3, 3), True, True, "contig"),
                     torch.bfloat16, generator)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    ops.conv_bn_act(*args, backend="cuda")
    for a, b in zip(args, before, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_conv_on_second_device(generator):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    args = make_case(CASES[2], torch.float16, generator)
    args = [a.to("cuda:1") if isinstance(a, torch.Tensor) else a for a in args]
    with torch.cuda.device(0):
        y = ops.conv_bn_act(*args, backend="cuda")
    assert y.device == torch.device("cuda:1")
    assert relative_error(y, reference(*args)) <= tolerance(torch.float16, "op", "cuda")


def test_conv_never_syncs_the_host(generator):
    args = make_case(CASES[0], torch.float16, generator)  # stem: includes the channel padding
    ops.conv_bn_act(*args, backend="cuda")  # warm-up (one-time attribute setup)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.conv_bn_act(*args, backend="cuda")
        x, res = torch.randn(2, 8, 5, 5, device="cuda"), torch.randn(2, 8, 5, 5, device="cuda")
        ops.add_relu(x, res, backend="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.slow
def test_conv_int64_offsets(generator):
    """Input and output of > 2^31 elements: offsets must be 64-bit. The last image, whose
    addresses are all beyond 2^31 elements, is checked against the reference."""
    n, c, h, w = 33, 64, 1024, 1024  # 2.2e9 elements per tensor, 4.4 GB each in fp16
    free, _ = torch.cuda.mem_get_info()
    # Bytes per element at the peak: input and output (2 + 2), the shape's first-call
    # verification (its own input and output copies 2 + 2, a second run's output 2, the fp32
    # reference's input, output and epilogue temporaries 4 + 4 + 4), with headroom: ~53 GB.
    if free < 24 * n * c * h * w:
        pytest.skip(f"needs ~{24 * n * c * h * w / 1e9:.0f} GB of free GPU memory for a "
                    f"> 2^31-element tensor and its verification, {free / 1e9:.0f} GB free")
    x = torch.empty((n, c, h, w), dtype=torch.float16, device="cuda", memory_format=CL)
    x.normal_()
    wt = (torch.randn(c, c, 1, 1, generator=generator) / 8).half().cuda().contiguous(
        memory_format=CL)
    scale, shift = (t.cuda() for t in random_bn_params(c, generator))
    y = ops.conv_bn_act(x, wt, scale, shift, None, 1, 0, True, backend="cuda")
    ref = reference(x[-1:], wt, scale, shift, None, [1, 1], [0, 0], True)
    assert relative_error(y[-1:], ref) <= tolerance(torch.float16, "op", "cuda")


# --- add_relu ------------------------------------------------------------------------------------


def add_relu_inputs(layout: str, dtype, generator):
    shape = (2, 24, 7, 9)
    x = torch.randn(*shape, generator=generator).to(dtype).cuda()
    res = torch.randn(*shape, generator=generator).to(dtype).cuda()
    if layout == "contig":
        return x, res
    if layout == "cl":
        return x.contiguous(memory_format=CL), res.contiguous(memory_format=CL)
    if layout == "cl_x_contig_res":
        return x.contiguous(memory_format=CL), res
    if layout == "contig_x_cl_res":
        return x, res.contiguous(memory_format=CL)
    if layout == "sliced":
        return relayout(x, "sliced"), res
    if layout == "offset":
        return relayout(x, "offset"), relayout(res, "offset")
    if layout == "odd_numel":  # not a multiple of the 16-byte vector: the scalar tail runs
        return (torch.randn(3, 5, 7, generator=generator).to(dtype).cuda(),
                torch.randn(3, 5, 7, generator=generator).to(dtype).cuda())
    if layout == "transposed":  # dense, same non-standard strides for both
        return x.transpose(1, 3), res.transpose(1, 3)
    raise ValueError(layout)


ADD_RELU_LAYOUTS = ["contig", "cl", "cl_x_contig_res", "contig_x_cl_res", "sliced", "offset",
                    "odd_numel", "transposed"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ADD_RELU_LAYOUTS)
def test_add_relu(layout, dtype, generator):
    x, res = add_relu_inputs(layout, dtype, generator)
    y = poisoned(lambda: ops.add_relu(x, res, backend="cuda"))
    assert y.shape == x.shape and y.dtype == dtype
    assert y.stride() == torch.empty_like(x).stride()
    assert torch.equal(y, add_relu_reference(x, res))


def test_add_relu_large_and_nan(generator):
    x = torch.randn(3, 256, 56, 57, generator=generator).half().cuda().contiguous(memory_format=CL)
    res = torch.randn(3, 256, 56, 57, generator=generator).half().cuda()
    x[0, 0, 0, 0] = float("nan")
    y = ops.add_relu(x, res, backend="cuda")
    assert torch.isnan(y[0, 0, 0, 0])
    y[0, 0, 0, 0] = 0
    ref = add_relu_reference(x, res)
    ref[0, 0, 0, 0] = 0
    assert torch.equal(y, ref)


def test_add_relu_empty():
    x = torch.empty(0, 4, 3, 3, device="cuda")
    assert ops.add_relu(x, x, backend="cuda").shape == x.shape


# --- op contracts --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_opcheck_conv_bn_act(dtype, generator):
    samples = [
        (2, 5, 9, 7, 6, 3, 3, (1, 1), (1, 1), False, True, "contig"),
        (2, 5, 9, 7, 6, 3, 3, (1, 1), (1, 1), True, True, "cl"),
        (1, 3, 15, 13, 8, 7, 7, (2, 2), (3, 3), False, False, "contig"),
        (2, 16, 6, 6, 24, 1, 1, (2, 2), (0, 0), True, True, "cl"),
    ]
    for case in samples:
        torch.library.opcheck(CONV, tuple(make_case(case, dtype, generator)))
    args = list(make_case(samples[1], dtype, generator))
    args[0], args[4] = args[0][:0], args[4][:0]  # N = 0
    torch.library.opcheck(CONV, tuple(args))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_opcheck_requires_grad(dtype, generator):
    """The registered backward (resnet_fused/autograd.py) under opcheck's autograd and AOT tests,
    for the CUDA op and the op that names its implementation."""
    case = (2, 5, 9, 7, 6, 3, 3, (2, 2), (1, 1), True, True, "cl")
    x, wt, scale, shift, res, stride, padding, relu = make_case(case, dtype, generator)
    args = (x.requires_grad_(), wt.requires_grad_(), scale, shift, res.requires_grad_(), stride,
            padding, relu)
    torch.library.opcheck(CONV, args)
    torch.library.opcheck(torch.ops.resnet_fused.conv_bn_act_cuda_impl.default,
                          (*args, "mma_sync"))
    r2 = res.detach().clone().requires_grad_()
    torch.library.opcheck(ADD_RELU, (torch.randn_like(r2).requires_grad_(), r2))


@pytest.mark.parametrize("layout", ["contig", "cl", "cl_x_contig_res", "sliced"])
def test_opcheck_add_relu(layout, generator):
    torch.library.opcheck(ADD_RELU, add_relu_inputs(layout, torch.float16, generator))


# --- whole models, torch.compile, CUDA graphs, streams -------------------------------------------


def _resnet50():
    torchvision, _ = try_import("torchvision")  # any import failure: this package's model
    return (torchvision.models if torchvision else resnet_fused).resnet50()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_resnet50_fused_cuda_vs_fp32_model(dtype, generator):
    model = randomize_batchnorm_(_resnet50(), generator).eval()
    ours = resnet_fused.resnet50()
    ours.load_state_dict(model.state_dict())  # same weights through this package's model too
    model = model.cuda()
    fused = resnet_fused.fuse(ours.cuda(), backend="cuda", dtype=dtype)
    x = torch.randn(4, 3, 160, 160, generator=generator).cuda()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model(x)  # fp32 reference, TF32 off
        y = fused(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    err = relative_error(y.float(), ref)
    assert err <= tolerance(dtype, "model", "cuda"), f"{dtype}: relative error {err:.3g}"


def _fused_resnet18(dtype, generator):
    model = randomize_batchnorm_(resnet_fused.resnet18(), generator).eval().cuda()
    return resnet_fused.fuse(model, backend="cuda", dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_fused_stem_pads_its_weight_once(dtype, generator):
    """The fused stem (3 input channels) hands the op operands padded to the kernels' 16-byte
    rows, the weight padded once and reused; its result is the op's on the unpadded tensors."""
    stem = _fused_resnet18(dtype, generator).stem
    x = torch.randn(2, 3, 64, 64, generator=generator).cuda().to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        first = stem(x)
        padded = stem._padded_weight._padded
        again = stem(x)
        expected = ops.conv_bn_act(x, stem.weight, stem.scale, stem.shift, None, stem.stride,
                                   stem.padding, stem.relu, backend="cuda")
    assert padded is not None and padded.shape[1] == channels.aligned_channels(3, dtype)
    assert stem._padded_weight._padded is padded, "the padded weight was made again"
    assert torch.equal(first, again)
    assert relative_error(first.float(), expected.float()) <= tolerance(dtype, "op", "cuda")


def test_torch_compile_fullgraph(generator):
    fused = _fused_resnet18(torch.float16, generator)
    x = torch.randn(2, 3, 96, 96, generator=generator).cuda()
    with torch.no_grad():
        eager = fused(x)
        compiled = torch.compile(fused, fullgraph=True)(x)
    assert compiled.shape == eager.shape and torch.isfinite(compiled).all()
    assert relative_error(compiled.float(), eager.float()) <= tolerance(torch.float16, "op")


def test_cuda_graph_capture_and_replay(generator):
    fused = _fused_resnet18(torch.bfloat16, generator)
    static_x = torch.randn(2, 3, 64, 64, generator=generator).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad():
        with torch.cuda.stream(side):  # warm-up off the capture, as the CUDA-graph docs advise
            for _ in range(2):
                fused(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = fused(static_x)
        for _ in range(2):  # replay on fresh inputs: results must track the input
            new_x = torch.randn(2, 3, 64, 64, generator=generator).cuda()
            static_x.copy_(new_x)
            graph.replay()
            torch.cuda.synchronize()
            eager = fused(new_x)
            assert torch.isfinite(static_y).all()
            assert relative_error(static_y.float(), eager.float()) <= 1e-3

    # A single op captured alone replays bit-exactly.
    args = make_case(CASES[2], torch.float16, generator)
    ops.conv_bn_act(*args, backend="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = ops.conv_bn_act(*args, backend="cuda")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, ops.conv_bn_act(*args, backend="cuda"))


def test_non_default_stream(generator):
    args = make_case(CASES[14], torch.float16, generator)  # big enough to race if mis-streamed
    expected = ops.conv_bn_act(*args, backend="cuda")
    x0 = args[0]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # Produce the input on the side stream too, so a kernel launched on another stream
        # would read it before it is written.
        x = torch.empty_like(x0)
        x.copy_(x0)
        y = ops.conv_bn_act(x, *args[1:], backend="cuda")
        z = ops.add_relu(y, y, backend="cuda")
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(y, expected)
    assert torch.equal(z, add_relu_reference(expected, expected))
