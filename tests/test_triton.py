"""Triton backend: ``resnet_fused::triton_conv_bn_act`` and ``resnet_fused::triton_add_relu``.

Two tiers:

- ``interpreter``: CPU tensors under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it before
  anything imports triton when there is no GPU; the guard below repeats it for a lone run of this
  file). Small shapes; fp32 against a float64 composition, fp16 against fp32 (bf16 ``tl.dot`` is
  wrong in the interpreter, so bf16 is GPU-only).
- ``gpu``: the real compiler on CUDA; skipped cleanly without a GPU.
"""

import contextlib
import os

import torch

if not torch.cuda.is_available():
    # Must happen before triton's first import; harmless if conftest already did it.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

pytest.importorskip("triton")

import resnet_fused
from resnet_fused import ops, tuning
from resnet_fused import triton as rt  # registers the ops
from resnet_fused.poison import poisoned_outputs
from resnet_fused.reference import add_relu_reference, conv_bn_act_reference
from resnet_fused.testing import (
    random_bn_params,
    randomize_batchnorm_,
    reference_dtype,
    relative_error,
    tolerance,
    try_import,
)
from resnet_fused.triton import configs
from resnet_fused.triton.conv_bn_act import _config_name, _conv_bn_act_kernel

pytestmark = pytest.mark.triton


def _kernels_interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return isinstance(_conv_bn_act_kernel, InterpretedFunction)


INTERPRETED = _kernels_interpreted()
HAS_CUDA = torch.cuda.is_available()

interp_only = pytest.mark.skipif(
    not INTERPRETED or HAS_CUDA,
    reason="interpreter tier: needs TRITON_INTERPRET=1 set before triton's import and no GPU "
    "(on a GPU machine the gpu tier covers the kernels)",
)
gpu_only = pytest.mark.skipif(
    not HAS_CUDA or INTERPRETED, reason="needs a CUDA GPU and the real Triton compiler"
)




# ---------------------------------------------------------------------------------------------
# helpers


def _cl_strides(sizes, dtype):
    return torch.empty(sizes, dtype=dtype, memory_format=torch.channels_last).stride()


def _make_case(case, dtype, device, generator):
    """Random input/weight/BN/residual for a case dict, in the requested layouts."""
    n, c, h, w = case["x"]
    k, r, s = case["k"], case["r"], case["r"]
    stride, padding = case["stride"], case["pad"]
    stride = list(stride) if isinstance(stride, tuple) else [stride, stride]
    padding = list(padding) if isinstance(padding, tuple) else [padding, padding]
    ho = (h + 2 * padding[0] - r) // stride[0] + 1
    wo = (w + 2 * padding[1] - s) // stride[1] + 1
    layout = case["layout"]

    def rand(*sizes):
        return torch.randn(*sizes, generator=generator).to(device=device, dtype=dtype)

    if layout == "strided":
        # Neither NCHW nor NHWC: permuted storage and a sliced (non-dense) tensor.
        x = rand(n, h, c, w).permute(0, 2, 1, 3)
        wt = rand(k, s, r, c).permute(0, 3, 2, 1) / (c * r * s) ** 0.5
        res = rand(n, k, ho, 2 * wo)[..., ::2] if case["res"] else None
    else:
        x, wt = rand(n, c, h, w), rand(k, c, r, s) / (c * r * s) ** 0.5
        res = rand(n, k, ho, wo) if case["res"] else None
        if layout in ("cl", "mixed"):
            x = x.contiguous(memory_format=torch.channels_last)
        if layout == "cl":
            wt = wt.contiguous(memory_format=torch.channels_last)
            if res is not None:
                res = res.contiguous(memory_format=torch.channels_last)
    scale, shift = random_bn_params(k, generator)
    return x, wt, scale.to(device), shift.to(device), res, stride, padding


def _reference(x, wt, scale, shift, res, stride, padding, relu, dtype):
    up = reference_dtype(dtype)
    return conv_bn_act_reference(
        x.to(up), wt.to(up), scale, shift, None if res is None else res.to(up), stride, padding,
        relu,
    )


def _check_case(case, dtype, device, generator, scope="op"):
    x, wt, scale, shift, res, stride, padding = _make_case(case, dtype, device, generator)
    y = ops.conv_bn_act(x, wt, scale, shift, res, stride, padding, case["relu"], backend="triton")
    ref = _reference(x, wt, scale, shift, res, stride, padding, case["relu"], dtype)
    assert y.dtype == dtype
    assert y.shape == ref.shape
    assert y.stride() == _cl_strides(ref.shape, dtype), "output must be channels_last"
    err = relative_error(y, ref)
    assert err <= tolerance(dtype, scope, device), f"{case}: rel err {err:.3g}"
    return y


def _case(x, k, r, stride, pad, res, relu, layout):
    return {"x": x, "k": k, "r": r, "stride": stride, "pad": pad, "res": res, "relu": relu,
            "layout": layout}


# Every ResNet conv family, odd sizes, C not a multiple of 8, N = 1..3, all layouts.
CASES = [
    _case((2, 3, 19, 17), 16, 7, 2, 3, False, True, "cl"),        # stem: C_in=3 masked in K
    _case((1, 3, 15, 16), 8, 7, 2, 3, False, True, "contig"),     # stem, NCHW input
    _case((2, 20, 9, 7), 24, 3, 1, 1, True, True, "cl"),          # 3x3 s1 + residual
    _case((1, 12, 7, 9), 10, 3, 1, 1, True, False, "contig"),     # 3x3 s1, no ReLU
    _case((3, 20, 11, 9), 36, 3, 2, 1, False, True, "cl"),        # 3x3 s2 odd H/W
    _case((2, 17, 9, 9), 20, 3, 2, 1, True, True, "mixed"),       # 3x3 s2, NHWC x, KCRS w
    _case((2, 40, 7, 5), 36, 1, 1, 0, True, True, "cl"),          # 1x1 s1: GEMM fast path
    _case((3, 33, 5, 5), 20, 1, 1, 0, False, False, "contig"),    # 1x1 s1, NCHW (no GEMM path)
    _case((2, 40, 9, 7), 72, 1, 2, 0, False, False, "cl"),        # 1x1 s2 downsample
    _case((1, 24, 8, 8), 40, 1, 2, 0, True, True, "mixed"),       # 1x1 s2 + residual
    _case((2, 18, 8, 7), 12, 3, 1, 1, True, True, "strided"),     # arbitrary strides everywhere
    _case((1, 40, 5, 6), 24, 1, 1, 0, True, False, "strided"),    # 1x1 s1, strided residual
    _case((2, 16, 10, 9), 16, 3, (2, 1), (1, 0), True, True, "cl"),  # per-dim stride/padding
]

FP16_CASES = [CASES[i] for i in (0, 4, 6, 8, 10)]


# ---------------------------------------------------------------------------------------------
# interpreter tier


@pytest.mark.interpreter
@interp_only
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['x']}-k{c['k']}-r{c['r']}-{c['layout']}")
def test_conv_fp32_vs_fp64(case, generator):
    _check_case(case, torch.float32, "cpu", generator)


@pytest.mark.interpreter
@interp_only
@pytest.mark.parametrize("case", FP16_CASES,
                         ids=lambda c: f"{c['x']}-k{c['k']}-r{c['r']}-{c['layout']}")
def test_conv_fp16_vs_fp32(case, generator):
    _check_case(case, torch.float16, "cpu", generator)


@pytest.mark.interpreter
@interp_only
@pytest.mark.parametrize("residual", [False, True])
def test_conv_batch_zero(residual, generator):
    case = _case((0, 8, 9, 9), 16, 3, 2, 1, residual, True, "cl")
    x, wt, scale, shift, res, stride, padding = _make_case(case, torch.float32, "cpu", generator)
    y = ops.conv_bn_act(x, wt, scale, shift, res, stride, padding, True, backend="triton")
    assert y.shape == (0, 16, 5, 5)
    assert y.stride() == _cl_strides((0, 16, 5, 5), torch.float32)


@pytest.mark.interpreter
@interp_only
@pytest.mark.parametrize("cfg", [*configs.all_conv_configs(), configs.SMALL_TILES], ids=str)
def test_every_table_config(cfg, generator):
    """Each tile config in the table computes the same thing (several M/N tiles, K blocks)."""
    case = _case((2, 40, 9, 8), 72, 3, 1, 1, True, True, "cl")
    x, wt, scale, shift, res, stride, padding = _make_case(case, torch.float32, "cpu", generator)
    ref = _reference(x, wt, scale, shift, res, stride, padding, True, torch.float32)
    out = torch.full(ref.shape, float("nan")).contiguous(memory_format=torch.channels_last)
    rt.conv_bn_act_launch(x, wt, scale, shift, res, stride, padding, True, out, cfg)
    assert relative_error(out, ref) <= 1e-5  # NaN left anywhere -> inf


@pytest.mark.interpreter
@interp_only
@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[10]], ids=["3x3", "1x1", "strided"])
def test_int64_offsets_path(case, generator):
    """The 64-bit index path (taken when a tensor spans >= 2^31 elements), forced on a small
    shape: same results. (A real > 2^31 tensor is exercised in the gpu tier.)"""
    x, wt, scale, shift, res, stride, padding = _make_case(case, torch.float32, "cpu", generator)
    ref = _reference(x, wt, scale, shift, res, stride, padding, case["relu"], torch.float32)
    out = torch.full(ref.shape, float("nan")).contiguous(memory_format=torch.channels_last)
    cfg = configs.SMALL_TILES
    rt.conv_bn_act_launch(x, wt, scale, shift, res, stride, padding, case["relu"], out, cfg,
                          force_int64=True)
    assert relative_error(out, ref) <= 1e-5


ADD_RELU_LAYOUTS = ["contig", "cl", "cl_x_contig_res", "contig_x_cl_res", "sliced", "expanded",
                    "3d", "1d", "empty"]


def _add_relu_inputs(layout, dtype, device, generator):
    def rand(*sizes):
        return torch.randn(*sizes, generator=generator).to(device=device, dtype=dtype)

    cl = torch.channels_last
    if layout == "contig":
        return rand(2, 5, 3, 7), rand(2, 5, 3, 7)
    if layout == "cl":
        return rand(2, 5, 3, 7).contiguous(memory_format=cl), rand(2, 5, 3, 7).contiguous(
            memory_format=cl)
    if layout == "cl_x_contig_res":
        return rand(3, 6, 4, 5).contiguous(memory_format=cl), rand(3, 6, 4, 5)
    if layout == "contig_x_cl_res":
        return rand(3, 6, 4, 5), rand(3, 6, 4, 5).contiguous(memory_format=cl)
    if layout == "sliced":
        return rand(2, 6, 5, 8)[:, ::2, :, 1:6], rand(2, 3, 5, 5).transpose(2, 3)
    if layout == "expanded":  # stride-0 dims on both sides: not dense, copied first
        return rand(2, 5, 1, 7).expand(2, 5, 3, 7), rand(1, 5, 3, 1).expand(2, 5, 3, 7)
    if layout == "3d":
        return rand(4, 33, 17), rand(4, 33, 17)
    if layout == "1d":
        return rand(3001), rand(3001)
    return rand(0, 4, 3, 3), rand(0, 4, 3, 3)


@pytest.mark.interpreter
@interp_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ADD_RELU_LAYOUTS)
def test_add_relu(layout, dtype, generator):
    x, res = _add_relu_inputs(layout, dtype, "cpu", generator)
    y = ops.add_relu(x, res, backend="triton")
    ref = add_relu_reference(x, res)
    assert y.dtype == dtype
    assert y.shape == x.shape
    assert y.stride() == torch.empty_like(x).stride()
    # Same fp32 add and one rounding as the reference: bit-identical.
    assert torch.equal(y, ref)
    if x.numel():
        assert (y == 0).any() and (y > 0).any()  # both ReLU branches were exercised


@pytest.mark.interpreter
@interp_only
def test_add_relu_propagates_nan(generator):
    x = torch.randn(64, generator=generator)
    x[3] = float("nan")
    y = ops.add_relu(x, torch.randn(64, generator=generator), backend="triton")
    assert torch.isnan(y[3]) and torch.isfinite(y[torch.arange(64) != 3]).all()


def _good_args(generator):
    x = torch.randn(1, 8, 6, 6, generator=generator)
    w = torch.randn(4, 8, 3, 3, generator=generator)
    scale, shift = random_bn_params(4, generator)
    return x, w, scale, shift


BAD_CONV = {
    "3-D input": (lambda x, w, sc, sh: (x[0], w, sc, sh, None), ValueError, "input must be 4-D"),
    "weight dtype": (lambda x, w, sc, sh: (x, w.half(), sc, sh, None), TypeError, "weight dtype"),
    "C_in mismatch": (lambda x, w, sc, sh: (x, w[:, :5], sc, sh, None), ValueError, "C_in"),
    "fp16 scale": (lambda x, w, sc, sh: (x, w, sc.half(), sh, None), TypeError, "scale"),
    "shift size": (lambda x, w, sc, sh: (x, w, sc, sh[:3], None), ValueError, "shift"),
    "residual shape": (lambda x, w, sc, sh: (x, w, sc, sh, torch.randn(1, 4, 5, 5)), ValueError,
                       "residual"),
    "int input": (lambda x, w, sc, sh: (x.int(), w.int(), sc, sh, None), TypeError, "float32"),
}


@pytest.mark.interpreter
@interp_only
@pytest.mark.parametrize("name", list(BAD_CONV))
@pytest.mark.parametrize("entry", ["ops", "torch.ops"])
def test_conv_bad_input_raises(name, entry, generator):
    make, exc, match = BAD_CONV[name]
    x, w, sc, sh, res = make(*_good_args(generator))
    with pytest.raises(exc, match=match):
        if entry == "ops":
            ops.conv_bn_act(x, w, sc, sh, res, 1, 1, True, backend="triton")
        else:
            torch.ops.resnet_fused.triton_conv_bn_act(x, w, sc, sh, res, [1, 1], [1, 1], True)


@pytest.mark.interpreter
@interp_only
def test_conv_bad_stride_and_small_input_raise(generator):
    x, w, sc, sh = _good_args(generator)
    with pytest.raises(ValueError, match="stride"):
        ops.conv_bn_act(x, w, sc, sh, None, 0, 1, True, backend="triton")
    with pytest.raises(ValueError, match="smaller than the kernel"):
        ops.conv_bn_act(x[..., :2, :2], w, sc, sh, None, 1, 0, True, backend="triton")


@pytest.mark.interpreter
@interp_only
def test_add_relu_bad_input_raises(generator):
    x = torch.randn(2, 3, 4, 4, generator=generator)
    with pytest.raises(ValueError, match="sizes"):
        ops.add_relu(x, x[:, :2], backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        torch.ops.resnet_fused.triton_add_relu(x, x.half())
    with pytest.raises(TypeError, match="float32"):
        torch.ops.resnet_fused.triton_add_relu(x.int(), x.int())


@pytest.mark.interpreter
@interp_only
def test_ops_share_namespace_with_cpp_library(generator):
    """triton_op defines its ops through a FRAGMENT of the C++-owned ``resnet_fused`` library:
    both families resolve and run side by side, with the expected schemas."""
    schema = str(torch.ops.resnet_fused.triton_conv_bn_act.default._schema)
    assert schema.startswith("resnet_fused::triton_conv_bn_act(Tensor input, Tensor weight, "
                             "Tensor scale, Tensor shift, Tensor? residual, SymInt[] stride, "
                             "SymInt[] padding, bool relu) -> Tensor"), schema
    assert str(torch.ops.resnet_fused.triton_add_relu.default._schema) == (
        "resnet_fused::triton_add_relu(Tensor x, Tensor residual) -> Tensor")
    x, w, sc, sh = _good_args(generator)
    a = torch.ops.resnet_fused.conv_bn_act(x, w, sc, sh, None, [1, 1], [1, 1], True)
    b = torch.ops.resnet_fused.triton_conv_bn_act(x, w, sc, sh, None, [1, 1], [1, 1], True)
    assert relative_error(b, a) <= 1e-5


# opcheck under the interpreter: test_schema, test_autograd_registration and test_faketensor.
# test_aot_dispatch_{static,dynamic} trace the op with fake tensors *through* wrap_triton, which
# cannot wrap an interpreted kernel (there is no compiled kernel to put in the graph), so they
# only run in the gpu tier (test_opcheck_gpu).
INTERP_OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


def _opcheck_samples(device, dtype, generator):
    samples = []
    for case in (CASES[2], CASES[6], CASES[8]):
        x, wt, scale, shift, res, stride, padding = _make_case(case, dtype, device, generator)
        samples.append((x, wt, scale, shift, res, stride, padding, case["relu"]))
    return samples


@pytest.mark.interpreter
@interp_only
def test_opcheck_interpreter(generator):
    for args in _opcheck_samples("cpu", torch.float32, generator):
        torch.library.opcheck(torch.ops.resnet_fused.triton_conv_bn_act.default, args,
                              test_utils=INTERP_OPCHECK_UTILS)
    for layout in ("contig", "cl_x_contig_res", "sliced"):
        x, res = _add_relu_inputs(layout, torch.float32, "cpu", generator)
        torch.library.opcheck(torch.ops.resnet_fused.triton_add_relu.default, (x, res),
                              test_utils=INTERP_OPCHECK_UTILS)


@pytest.mark.interpreter
@interp_only
def test_fuse_resnet18_triton_vs_float64(generator):
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    fused = resnet_fused.fuse(model, backend="triton")
    x = torch.randn(2, 3, 32, 32, generator=generator)
    with torch.no_grad():
        y = fused(x)
        ref = model.double()(x.double())
    err = relative_error(y, ref)
    assert err <= tolerance(torch.float32, "model"), err


@pytest.mark.interpreter
@interp_only
@pytest.mark.parametrize("dynamic", [False, True])
def test_ops_trace_fullgraph_dynamo(dynamic, generator):
    """Dynamo traces both ops without a graph break (their fake impl is the op body on fake
    tensors). backend="eager" runs the captured graph with the real interpreted kernels; AOT
    backends cannot capture an interpreted kernel and must say so, not return garbage."""
    case = CASES[2]
    x, wt, scale, shift, res, stride, padding = _make_case(case, torch.float32, "cpu", generator)

    def f(x, wt, scale, shift, res):
        y = torch.ops.resnet_fused.triton_conv_bn_act(x, wt, scale, shift, None, stride, padding,
                                                      False)
        return torch.ops.resnet_fused.triton_add_relu(y, res)

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="eager", dynamic=dynamic)(x, wt, scale, shift,
                                                                          res)
    conv = _reference(x, wt, scale, shift, None, stride, padding, False, torch.float32)
    ref = torch.relu(conv + res.double())
    assert relative_error(got, ref) <= 1e-5
    torch._dynamo.reset()
    with pytest.raises(Exception, match="real Triton compiler"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(x, wt, scale, shift, res)
    torch._dynamo.reset()


@pytest.mark.interpreter
@interp_only
def test_fused_model_compiles_fullgraph(generator):
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    fused = resnet_fused.fuse(model, backend="triton")
    x = torch.randn(1, 3, 32, 32, generator=generator)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(fused, fullgraph=True, backend="eager")(x)
        assert relative_error(got, fused(x)) <= 1e-6
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# gpu tier


def _random_gpu_cases(seed, count):
    """A seeded sweep over ResNet-like conv families, sizes, layouts and epilogue flags."""
    g = torch.Generator().manual_seed(seed)

    def pick(seq):
        return seq[int(torch.randint(len(seq), (1,), generator=g))]

    def randint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    fams = [(7, 2, 3), (3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)]
    cases = []
    for _ in range(count):
        r, stride, pad = pick(fams)
        c = 3 if r == 7 else pick([randint(4, 40), 64, 128, randint(100, 300), 256])
        h, w = randint(r, 40), randint(r, 40)
        cases.append(_case((randint(1, 4), c, h, w), pick([randint(8, 80), 64, 256, 200]), r,
                           stride, pad, bool(randint(0, 1)), bool(randint(0, 1)),
                           pick(["cl", "cl", "cl", "contig", "mixed", "strided"])))
    return cases


GPU_CASES = CASES + _random_gpu_cases(seed=1234, count=24)


@pytest.fixture
def no_autotune(monkeypatch):
    # The sweep compiles many kernel variants; benchmarking each shape's candidates too would
    # multiply the compile time. Autotuning has its own test.
    monkeypatch.setenv("RESNET_FUSED_TRITON_AUTOTUNE", "0")


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_conv_sweep(dtype, no_autotune, generator):
    for case in GPU_CASES:
        x, wt, scale, shift, res, stride, padding = _make_case(case, dtype, "cuda", generator)
        ref = _reference(x, wt, scale, shift, res, stride, padding, case["relu"], dtype)
        with poisoned_outputs():  # an element the kernel skips stays NaN
            y = ops.conv_bn_act(x, wt, scale, shift, res, stride, padding, case["relu"],
                                backend="triton")
        assert y.stride() == _cl_strides(ref.shape, dtype)
        assert torch.isfinite(y).all(), f"{case}: unwritten (NaN) elements"
        err = relative_error(y, ref)
        assert err <= tolerance(dtype, "op", "cuda"), f"{case} {dtype}: rel err {err:.3g}"


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_every_table_config_writes_everything(dtype, generator):
    case = _case((3, 72, 15, 13), 136, 3, 1, 1, True, True, "cl")
    x, wt, scale, shift, res, stride, padding = _make_case(case, dtype, "cuda", generator)
    ref = _reference(x, wt, scale, shift, res, stride, padding, True, dtype)
    for cfg in configs.all_conv_configs(dtype):  # fp32 tiles are sized for fp32's smem
        out = torch.full(ref.shape, float("nan"), dtype=dtype, device="cuda").contiguous(
            memory_format=torch.channels_last)
        rt.conv_bn_act_launch(x, wt, scale, shift, res, stride, padding, True, out, cfg)
        err = relative_error(out, ref)
        assert err <= tolerance(dtype, "op", "cuda"), f"{cfg}: rel err {err:.3g}"


@pytest.mark.gpu
@gpu_only
def test_gpu_autotune_caches_a_table_config(monkeypatch, tmp_path, generator):
    monkeypatch.setenv("RESNET_FUSED_TRITON_AUTOTUNE", "1")
    monkeypatch.setenv("RESNET_FUSED_CACHE_DIR", str(tmp_path))  # no choice from an earlier run
    tuning.clear()
    case = _case((4, 64, 28, 28), 64, 3, 1, 1, True, True, "cl")
    x, wt, scale, shift, res, stride, padding = _make_case(case, torch.float16, "cuda", generator)
    y = ops.conv_bn_act(x, wt, scale, shift, res, stride, padding, True, backend="triton")
    chosen = [v for (namespace, _), v in tuning._CHOSEN.items()
              if namespace == "triton.conv_bn_act"]
    assert len(chosen) == 1
    assert chosen[0] in {_config_name(c) for c in configs.all_conv_configs()}
    assert (tmp_path / "tuning.json").exists()  # and kept on disk for the next process
    ref = _reference(x, wt, scale, shift, res, stride, padding, True, torch.float16)
    assert relative_error(y, ref) <= tolerance(torch.float16, "op", "cuda")


@pytest.mark.gpu
@gpu_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_tensors_on_another_device(generator):
    """Tensors on cuda:1 while cuda:0 is current: the ops launch on the tensors' device."""
    case = _case((2, 32, 14, 14), 48, 3, 1, 1, True, True, "cl")
    x, wt, scale, shift, res, stride, padding = _make_case(case, torch.float16, "cuda:1",
                                                           generator)
    with torch.cuda.device(0):
        y = torch.ops.resnet_fused.triton_conv_bn_act(x, wt, scale, shift, res, stride, padding,
                                                      True)
        z = torch.ops.resnet_fused.triton_add_relu(y, y)
    torch.cuda.synchronize(1)
    ref = _reference(x, wt, scale, shift, res, stride, padding, True, torch.float16)
    assert y.device == x.device and relative_error(y, ref) <= tolerance(torch.float16, "op",
                                                                         "cuda")
    assert torch.equal(z, torch.relu(y.float() * 2).to(y.dtype))


def test_launch_guard_switches_to_the_tensors_device(monkeypatch):
    """On any machine: the guard the ops launch under makes the tensor's CUDA device current
    (the GPU tier above checks the launch itself on two devices)."""
    from resnet_fused.triton.launch import on_device_of

    class OnDevice:
        def __init__(self, device):
            self.device = torch.device(device)

    entered = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device",
                        lambda d: entered.append(d) or contextlib.nullcontext())
    with on_device_of(OnDevice("cuda:1")):
        pass
    with on_device_of(OnDevice("cuda:0")), on_device_of(OnDevice("cpu")):
        pass
    assert entered == [torch.device("cuda:1")]


@pytest.mark.gpu
@gpu_only
@pytest.mark.slow
def test_gpu_int64_offsets(no_autotune, generator):
    """Input and output of > 2^31 elements: the kernel switches to 64-bit offsets. Checked on
    the last image, whose addresses are beyond 2^31."""
    free, _ = torch.cuda.mem_get_info()
    n, c, h, w = 33, 64, 1024, 1024  # 2.2e9 elements per tensor, 4.4 GB each in fp16
    # Bytes per element at the peak: input and output (2 + 2), the shape's first-call
    # verification (its own input and output copies 2 + 2, a second run's output 2, the fp32
    # reference's input, output and epilogue temporaries 4 + 4 + 4), with headroom: ~53 GB.
    if free < 24 * n * c * h * w:
        pytest.skip(f"needs ~{24 * n * c * h * w / 1e9:.0f} GB of free GPU memory for a "
                    f"> 2^31-element tensor and its verification, {free / 1e9:.0f} GB free")
    x = torch.empty((n, c, h, w), dtype=torch.float16, device="cuda",
                    memory_format=torch.channels_last).normal_(generator=None)
    wt = (torch.randn(c, c, 1, 1, generator=generator) / 8).half().cuda().contiguous(
        memory_format=torch.channels_last)
    scale, shift = (t.cuda() for t in random_bn_params(c, generator))
    y = ops.conv_bn_act(x, wt, scale, shift, None, 1, 0, True, backend="triton")
    last = x[-1:]
    ref = _reference(last, wt, scale, shift, None, [1, 1], [0, 0], True, torch.float16)
    assert relative_error(y[-1:], ref) <= tolerance(torch.float16, "op", "cuda")
    del x, y


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ADD_RELU_LAYOUTS)
def test_gpu_add_relu(layout, dtype, generator):
    x, res = _add_relu_inputs(layout, dtype, "cuda", generator)
    with poisoned_outputs():
        y = ops.add_relu(x, res, backend="triton")
    assert y.stride() == torch.empty_like(x).stride()
    assert torch.equal(y, add_relu_reference(x, res))


@pytest.mark.gpu
@gpu_only
def test_opcheck_gpu(no_autotune, generator):
    for dtype in (torch.float32, torch.bfloat16):
        for args in _opcheck_samples("cuda", dtype, generator):
            torch.library.opcheck(torch.ops.resnet_fused.triton_conv_bn_act.default, args)
    for layout in ("contig", "cl_x_contig_res", "sliced"):
        x, res = _add_relu_inputs(layout, torch.float16, "cuda", generator)
        torch.library.opcheck(torch.ops.resnet_fused.triton_add_relu.default, (x, res))


def _resnet50():
    torchvision, _ = try_import("torchvision")  # any import failure: this package's model
    return (torchvision.models if torchvision else resnet_fused).resnet50()


@pytest.mark.gpu
@gpu_only
@pytest.mark.slow
def test_gpu_resnet50_bf16_vs_fp32(no_autotune, generator):
    model = randomize_batchnorm_(_resnet50(), generator).eval().cuda()
    fused = resnet_fused.fuse(model, backend="triton", dtype=torch.bfloat16)
    x = torch.randn(4, 3, 160, 160, generator=generator).cuda()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model(x)
        y = fused(x)
    err = relative_error(y.float(), ref)
    assert err <= tolerance(torch.bfloat16, "model"), err


def _graph_replay(fn, static_args, new_args):
    """Captures ``fn(*static_args)`` in a CUDA graph (after a side-stream warm-up), copies
    ``new_args`` into the static inputs, poisons the static output, replays, returns it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*static_args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(*static_args)
    for dst, src in zip(static_args, new_args, strict=True):
        dst.copy_(src)
    static_out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    return static_out


@pytest.mark.gpu
@gpu_only
def test_gpu_ops_compile_fullgraph_and_cuda_graph(no_autotune, generator):
    """The op chain of a bottleneck tail (conv, conv + residual, add_relu) under
    torch.compile(fullgraph=True) (inductor sees the Triton kernels), then a CUDA graph of the
    compiled function replayed on new data: both match eager."""
    a = _make_case(_case((2, 64, 14, 14), 64, 3, 1, 1, False, True, "cl"), torch.float16, "cuda",
                   generator)
    x, w1, s1, b1, _, stride, padding = a
    w2 = (torch.randn(64, 64, 1, 1, generator=generator) / 8).half().cuda().contiguous(
        memory_format=torch.channels_last)
    s2, b2 = (t.cuda() for t in random_bn_params(64, generator))
    skip = torch.randn(2, 64, 14, 14, generator=generator).half().cuda().contiguous(
        memory_format=torch.channels_last)

    def f(x, skip):
        y = torch.ops.resnet_fused.triton_conv_bn_act(x, w1, s1, b1, None, stride, padding, True)
        y = torch.ops.resnet_fused.triton_conv_bn_act(y, w2, s2, b2, skip, [1, 1], [0, 0], False)
        return torch.ops.resnet_fused.triton_add_relu(y, skip)

    eager = f(x, skip)
    compiled = torch.compile(f, fullgraph=True)
    assert relative_error(compiled(x, skip), eager) <= 1e-3
    new_x, new_skip = torch.randn_like(x), torch.randn_like(skip)
    replayed = _graph_replay(compiled, (x.clone(), skip.clone()), (new_x, new_skip))
    expected = f(new_x, new_skip)
    assert relative_error(replayed, expected) <= 1e-3
    assert relative_error(expected, eager) > 1e-1  # the replay really used the new inputs


@pytest.mark.gpu
@gpu_only
def test_gpu_fused_model_cuda_graph(no_autotune, generator):
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval().cuda()
    fused = resnet_fused.fuse(model, backend="triton", dtype=torch.float16)
    x = torch.randn(2, 3, 64, 64, generator=generator).cuda().half()
    new_x = torch.randn(2, 3, 64, 64, generator=generator).cuda().half()
    with torch.no_grad():
        eager, expected = fused(x), fused(new_x)
        replayed = _graph_replay(fused, (x.clone(),), (new_x,))
    assert relative_error(replayed, expected) <= 1e-3
    assert relative_error(expected, eager) > 1e-2


@pytest.mark.gpu
@gpu_only
def test_gpu_fused_model_compile_fullgraph(no_autotune, generator):
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval().cuda()
    fused = resnet_fused.fuse(model, backend="triton", dtype=torch.float16)
    x = torch.randn(2, 3, 64, 64, generator=generator).cuda().half()
    with torch.no_grad():
        eager = fused(x)
        compiled = torch.compile(fused, fullgraph=True)
        assert relative_error(compiled(x), eager) <= tolerance(torch.float16, "op")
        new_x = torch.randn_like(x)
        replayed = _graph_replay(compiled, (x.clone(),), (new_x,))
        assert relative_error(replayed, fused(new_x)) <= tolerance(torch.float16, "op")
