"""Every op's backward: right, or refused with a reason; never missing, never recorded behind
autograd's back.

* ``opcheck`` with inputs that require grad, for every op and every backend that runs here: the
  autograd registration, the fake impl and the AOT-autograd trace of forward and backward;
* gradients against the reference composition in higher precision (float64 for float32, float32
  for bfloat16/float16), with the per-op bounds: for ``conv_bn_act`` (the C++ op, the ``aten``
  backend and the Triton op under the interpreter) every gradient (input, weight, scale, shift,
  residual) over strides, kernel sizes, residual and ReLU; for the CPU fast path's own ops
  (``conv1x1``, ``winograd_conv3x3``, the pooling ops) theirs. Where a ReLU is applied, the
  reference takes the op's own output mask: in low precision a value next to 0 may land on the
  other side of it, and the test is about the formula, not that rounding;
* the in-place op ``conv1x1_residual_``: refuses arguments that require grad while gradients
  are recorded (it has no backward), follows torch's in-place rules for leaves and inference
  tensors, refuses overlapping memory, and bumps the residual's version counter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import resnet_fused  # noqa: F401  (registers the ops and their backward formulas)
from resnet_fused import ops
from resnet_fused.cpu import conv1x1, winograd
from resnet_fused.testing import (
    dtype_name,
    random_bn_params,
    reference_dtype,
    relative_error,
    tolerance,
    try_import,
)

CL = torch.channels_last
CONV = torch.ops.resnet_fused.conv_bn_act.default
GRAD_NAMES = ("input", "weight", "scale", "shift", "residual")


def _triton_interpreted() -> bool:
    module, _ = try_import("resnet_fused.triton.conv_bn_act")
    if module is None or torch.cuda.is_available():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(module._conv_bn_act_kernel, InterpretedFunction)


TRITON = _triton_interpreted()
needs_triton = pytest.mark.skipif(not TRITON, reason="needs Triton's interpreter (no GPU here)")


def assert_grad_close(got, want, dtype, what):
    assert got is not None, f"{what}: no gradient"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = relative_error(got, want)
    bound = tolerance(dtype, "op")
    assert err <= bound, f"{what}: relative error {err:.3g} > {bound:g} ({dtype})"


# --- conv_bn_act ---------------------------------------------------------------------------------


CONV_CASES = {
    "3x3-s1-relu": dict(c=6, k=10, r=3, stride=(1, 1), padding=(1, 1), residual=False, relu=True),
    "3x3-s2-residual": dict(c=5, k=8, r=3, stride=(2, 2), padding=(1, 1), residual=True,
                            relu=True),
    "1x1-s2-norelu": dict(c=8, k=12, r=1, stride=(2, 2), padding=(0, 0), residual=False,
                          relu=False),
    "7x7-stem": dict(c=3, k=8, r=7, stride=(2, 2), padding=(3, 3), residual=False, relu=True),
    "1x1-residual-norelu": dict(c=7, k=9, r=1, stride=(1, 1), padding=(0, 0), residual=True,
                                relu=False),
}


def conv_tensors(generator, dtype, c, k, r, stride, padding, residual, n=2, h=11, w=9,
                 channels_last=False, **_):
    x = torch.randn(n, c, h, w, generator=generator).to(dtype)
    weight = (torch.randn(k, c, r, r, generator=generator) / (c * r * r) ** 0.5).to(dtype)
    scale, shift = random_bn_params(k, generator)
    ho = (h + 2 * padding[0] - r) // stride[0] + 1
    wo = (w + 2 * padding[1] - r) // stride[1] + 1
    res = torch.randn(n, k, ho, wo, generator=generator).to(dtype) if residual else None
    if channels_last:
        x, weight = x.contiguous(memory_format=CL), weight.contiguous(memory_format=CL)
    return {"input": x, "weight": weight, "scale": scale, "shift": shift, "residual": res}


def conv_reference(t, stride, padding, relu_mask):
    """The op's definition in the reference precision; ReLU as the op's own output mask."""
    rd = reference_dtype(t["input"].dtype)
    z = F.conv2d(t["input"].to(rd), t["weight"].to(rd), None, stride, padding)
    z = z * t["scale"].to(rd).view(1, -1, 1, 1) + t["shift"].to(rd).view(1, -1, 1, 1)
    if t["residual"] is not None:
        z = z + t["residual"].to(rd)
    return z if relu_mask is None else z * relu_mask


def check_conv_grads(call, tensors, stride, padding, relu, wanted, generator):
    """Runs ``call(**tensors)`` with ``wanted`` requiring grad, then the reference, and compares
    every wanted gradient."""
    dtype = tensors["input"].dtype
    mine = {name: (t.detach().clone().requires_grad_(name in wanted) if t is not None else None)
            for name, t in tensors.items()}
    out = call(**mine)
    grad = torch.randn(out.shape, generator=generator).to(dtype)
    out.backward(grad)
    rd = reference_dtype(dtype)
    theirs = {name: (t.detach().to(rd).requires_grad_(name in wanted) if t is not None else None)
              for name, t in tensors.items()}
    mask = (out.detach() > 0).to(rd) if relu else None
    ref = conv_reference(theirs, stride, padding, mask)
    ref.backward(grad.to(rd))
    for name in GRAD_NAMES:
        if mine[name] is None:
            continue
        if name in wanted:
            assert mine[name].grad is not None, f"{name}: no gradient"
            assert mine[name].grad.dtype == mine[name].dtype, f"{name}: gradient dtype"
            assert_grad_close(mine[name].grad, theirs[name].grad, dtype, name)
        else:
            assert mine[name].grad is None


def _conv_call(backend):
    def call(input, weight, scale, shift, residual, stride, padding, relu):
        if backend == "raw":
            return CONV(input, weight, scale, shift, residual, list(stride), list(padding), relu)
        return ops.conv_bn_act(input, weight, scale, shift, residual, stride, padding, relu,
                               backend=backend)

    return call


BACKENDS = ["raw", "cpu", "aten", pytest.param("triton", marks=needs_triton)]


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_bn_act_gradients_fp32(backend, case, generator):
    spec = CONV_CASES[case]
    tensors = conv_tensors(generator, torch.float32, **spec)
    call = _conv_call(backend)
    wanted = set(GRAD_NAMES) - ({"residual"} if not spec["residual"] else set())

    def run(**t):
        return call(**t, stride=spec["stride"], padding=spec["padding"], relu=spec["relu"])

    check_conv_grads(run, tensors, spec["stride"], spec["padding"], spec["relu"], wanted,
                     generator)


@pytest.mark.parametrize("wanted", [("input",), ("weight",), ("residual",), ("scale", "shift"),
                                    ("input", "residual")], ids="+".join)
def test_conv_bn_act_gradients_only_where_asked(wanted, generator):
    spec = CONV_CASES["3x3-s2-residual"]
    tensors = conv_tensors(generator, torch.float32, channels_last=True, **spec)

    def run(**t):
        return CONV(*t.values(), list(spec["stride"]), list(spec["padding"]), True)

    check_conv_grads(run, tensors, spec["stride"], spec["padding"], True, set(wanted), generator)


@pytest.mark.parametrize("case", ["3x3-s2-residual", "1x1-s2-norelu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_name)
def test_conv_bn_act_gradients_low_precision(dtype, case, generator):
    spec = CONV_CASES[case]
    tensors = conv_tensors(generator, dtype, channels_last=True, **spec)
    wanted = {"input", "weight", "shift"} | ({"residual"} if spec["residual"] else set())

    def run(**t):
        return CONV(*t.values(), list(spec["stride"]), list(spec["padding"]), spec["relu"])

    check_conv_grads(run, tensors, spec["stride"], spec["padding"], spec["relu"], wanted,
                     generator)


def test_relu_gradient_is_zero_where_the_output_is(generator):
    """The mask is the op's output > 0: no gradient flows through a clipped value."""
    t = conv_tensors(generator, torch.float32, **CONV_CASES["3x3-s1-relu"])
    x = t["input"].requires_grad_()
    out = CONV(x, t["weight"], t["scale"], t["shift"], None, [1, 1], [1, 1], True)
    (grad_input,) = torch.autograd.grad(out.sum(), x)
    clipped = out.detach() == 0
    assert clipped.any() and (~clipped).any()
    # d out / d x through only the unclipped outputs, by the reference:
    xr = x.detach().double().requires_grad_()
    z = conv_reference({**t, "input": xr}, (1, 1), (1, 1), (~clipped).double())
    (expected,) = torch.autograd.grad(z.sum(), xr)
    assert relative_error(grad_input, expected) <= tolerance(torch.float32, "op")


OPCHECK_SAMPLES = {
    "x": ("3x3-s1-relu", ("input",)),
    "x-w-res": ("3x3-s2-residual", ("input", "weight", "residual")),
    "all": ("1x1-residual-norelu", GRAD_NAMES),
    "stem-w": ("7x7-stem", ("weight",)),
}


@pytest.mark.parametrize("name", list(OPCHECK_SAMPLES))
def test_opcheck_conv_bn_act_requires_grad(name, generator):
    case, wanted = OPCHECK_SAMPLES[name]
    spec = CONV_CASES[case]
    t = conv_tensors(generator, torch.float32, **spec)
    for key in wanted:
        t[key].requires_grad_()
    torch.library.opcheck(CONV, (*t.values(), list(spec["stride"]), list(spec["padding"]),
                                 spec["relu"]))


@needs_triton
@pytest.mark.interpreter
def test_opcheck_triton_requires_grad(generator):
    # Under the interpreter the AOT tests cannot trace through wrap_triton (test_triton.py).
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    spec = CONV_CASES["3x3-s2-residual"]
    t = conv_tensors(generator, torch.float32, **spec)
    for key in ("input", "weight", "residual"):
        t[key].requires_grad_()
    torch.library.opcheck(torch.ops.resnet_fused.triton_conv_bn_act.default,
                          (*t.values(), [2, 2], [1, 1], True), test_utils=utils)
    x = torch.randn(2, 4, 5, 3, generator=generator, requires_grad=True)
    r = torch.randn(2, 4, 5, 3, generator=generator, requires_grad=True)
    torch.library.opcheck(torch.ops.resnet_fused.triton_add_relu.default, (x, r),
                          test_utils=utils)


# --- add_relu ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["raw", "cpu", "aten", pytest.param("triton",
                                                                        marks=needs_triton)])
def test_add_relu_gradients(backend, generator):
    x = torch.randn(2, 6, 5, 7, generator=generator).contiguous(memory_format=CL)
    r = torch.randn(2, 6, 5, 7, generator=generator)
    xa, ra = x.clone().requires_grad_(), r.clone().requires_grad_()
    if backend == "raw":
        out = torch.ops.resnet_fused.add_relu(xa, ra)
    else:
        out = ops.add_relu(xa, ra, backend=backend)
    grad = torch.randn(out.shape, generator=generator)
    out.backward(grad)
    xb, rb = x.double().requires_grad_(), r.double().requires_grad_()
    torch.relu(xb + rb).backward(grad.double())
    assert torch.equal(xa.grad, xb.grad.float()) and torch.equal(ra.grad, rb.grad.float())


def test_opcheck_add_relu_requires_grad(generator):
    x = torch.randn(2, 6, 5, 7, generator=generator, requires_grad=True)
    r = torch.randn(2, 6, 5, 7, generator=generator).contiguous(memory_format=CL)
    torch.library.opcheck(torch.ops.resnet_fused.add_relu.default, (x, r.requires_grad_()))


# --- pooling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_pooling_gradients_equal_eager(dtype, generator):
    x = torch.randn(2, 8, 11, 9, generator=generator).to(dtype).contiguous(memory_format=CL)
    for op, eager in ((lambda t: torch.ops.resnet_fused.max_pool2d(t, [3, 3], [2, 2], [1, 1]),
                       lambda t: F.max_pool2d(t, 3, 2, 1)),
                      (torch.ops.resnet_fused.global_avg_pool, lambda t: t.mean((2, 3)))):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = op(a)
        grad = torch.randn(out.shape, generator=generator).to(dtype)
        out.backward(grad)
        eager(b).backward(grad)
        assert torch.equal(a.grad, b.grad)


def test_opcheck_pooling_requires_grad(generator):
    x = torch.randn(2, 8, 11, 9, generator=generator).contiguous(memory_format=CL)
    x.requires_grad_()
    torch.library.opcheck(torch.ops.resnet_fused.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1]))
    torch.library.opcheck(torch.ops.resnet_fused.global_avg_pool.default, (x,))


# --- conv1x1 (packed, folded weight) -------------------------------------------------------------

CONV1X1_DTYPES = [d for d in (torch.float32, torch.bfloat16) if conv1x1.available(d)]
needs_conv1x1 = pytest.mark.skipif(not CONV1X1_DTYPES,
                                   reason="this CPU lacks the AVX-512 the 1x1 kernels need")


def conv1x1_tensors(generator, dtype, c=32, k=80, stride=(2, 1)):
    x = torch.randn(2, c, 7, 6, generator=generator).to(dtype)
    weight = torch.randn(k, c, 1, 1, generator=generator) / c ** 0.5
    scale, shift = random_bn_params(k, generator)
    return x, conv1x1.pack_weight(weight.to(dtype), scale, dtype), shift, list(stride)


@needs_conv1x1
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
@pytest.mark.parametrize("dtype", CONV1X1_DTYPES, ids=dtype_name)
def test_conv1x1_gradients(dtype, relu, generator):
    x, packed, bias, stride = conv1x1_tensors(generator, dtype)
    xa, pa, ba = (t.clone().requires_grad_() for t in (x, packed, bias))
    out = torch.ops.resnet_fused.conv1x1(xa, pa, ba, stride, relu)
    grad = torch.randn(out.shape, generator=generator).to(dtype)
    out.backward(grad)
    rd = reference_dtype(dtype)
    xb = x.to(rd).requires_grad_()
    wb = conv1x1.unpack_weight(packed, x.shape[1], bias.shape[0]).to(rd).requires_grad_()
    bb = bias.to(rd).requires_grad_()
    z = F.conv2d(xb, wb, bb, stride)
    if relu:
        z = z * (out.detach() > 0).to(rd)
    z.backward(grad.to(rd))
    assert_grad_close(xa.grad, xb.grad, dtype, "input")
    d_weight = conv1x1.unpack_weight(pa.grad, x.shape[1], bias.shape[0])
    assert_grad_close(d_weight, wb.grad, dtype, "weight")
    assert_grad_close(ba.grad, bb.grad, torch.float32, "bias")
    # The padded columns of the last panel are no weights: their gradient is zero.
    assert pa.grad.shape == packed.shape
    assert torch.count_nonzero(pa.grad) == torch.count_nonzero(conv1x1.pack_weight(
        d_weight.to(dtype), torch.ones(bias.shape[0]), dtype))


@needs_conv1x1
@pytest.mark.parametrize("dtype", CONV1X1_DTYPES, ids=dtype_name)
def test_opcheck_conv1x1_requires_grad(dtype, generator):
    x, packed, bias, stride = conv1x1_tensors(generator, dtype, c=6, k=32)
    torch.library.opcheck(torch.ops.resnet_fused.conv1x1.default,
                          (x.requires_grad_(), packed.requires_grad_(), bias, stride, True))


def _residual_args(generator, c=128, k=128):
    x = torch.randn(1, c, 4, 5, generator=generator)
    weight = torch.randn(k, c, 1, 1, generator=generator) / c ** 0.5
    packed = conv1x1.pack_weight(weight, torch.ones(k), torch.float32)
    residual = torch.randn(1, k, 4, 5, generator=generator).contiguous(memory_format=CL)
    return residual, x, packed, torch.randn(k, generator=generator)


@needs_conv1x1
@pytest.mark.parametrize("which", ["residual", "input", "weight", "bias"])
def test_conv1x1_residual_refuses_grad(which, generator):
    residual, x, packed, bias = _residual_args(generator)
    args = {"residual": residual, "input": x, "weight": packed, "bias": bias}
    if which == "residual":  # not a leaf: the "no backward" refusal, not the leaf rule
        args["residual"] = (residual.clone().requires_grad_() * 1.0).contiguous(
            memory_format=CL)
    else:
        args[which].requires_grad_()
    with pytest.raises(RuntimeError, match="conv1x1_residual_ has no backward"):
        torch.ops.resnet_fused.conv1x1_residual_(*args.values(), [1, 1], True)
    with torch.no_grad():  # no graph is recorded: allowed, as for torch's own in-place ops
        torch.ops.resnet_fused.conv1x1_residual_(*args.values(), [1, 1], True)


@needs_conv1x1
def test_conv1x1_residual_follows_torch_inplace_rules(generator):
    residual, x, packed, bias = _residual_args(generator)
    leaf = residual.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        torch.ops.resnet_fused.conv1x1_residual_(leaf, x, packed, bias, [1, 1], True)
    with torch.inference_mode():
        inference = residual.clone()
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        torch.ops.resnet_fused.conv1x1_residual_(inference, x, packed, bias, [1, 1], True)
    before = inference.clone()
    with torch.inference_mode():  # where inference tensors may be updated
        torch.ops.resnet_fused.conv1x1_residual_(inference, x, packed, bias, [1, 1], True)
    assert not torch.equal(inference, before)
    version = residual._version
    torch.ops.resnet_fused.conv1x1_residual_(residual, x, packed, bias, [1, 1], True)
    assert residual._version > version, "an in-place update must bump the version counter"


@needs_conv1x1
def test_conv1x1_residual_version_bump_is_seen_by_autograd(generator):
    """A tensor saved for another op's backward and then overwritten is caught at backward."""
    residual, x, packed, bias = _residual_args(generator)
    w = torch.randn(3, generator=generator, requires_grad=True)
    saved = residual.clone()
    y = (saved * w.view(1, -1, 1, 1)[:, :1]).sum()  # mul saves `saved` for w's gradient
    with torch.no_grad():
        torch.ops.resnet_fused.conv1x1_residual_(saved, x, packed, bias, [1, 1], True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@needs_conv1x1
@pytest.mark.parametrize("overlap", ["same", "partial", "weight"])
def test_conv1x1_residual_refuses_overlap(overlap, generator):
    """With C = K = 128 (two weight panels) an aliased input would be read after the first
    panel's stores overwrote it: refused, not silently wrong."""
    residual, x, packed, bias = _residual_args(generator)
    if overlap == "same":
        x = residual
    elif overlap == "partial":
        big = torch.randn(1, 4 * 5 * 128 + 128, generator=generator)
        residual = big[:, : 4 * 5 * 128].view(1, 4, 5, 128).permute(0, 3, 1, 2)
        x = big[:, 128:].view(1, 4, 5, 128).permute(0, 3, 1, 2)
    else:
        residual = packed.view(-1)[: 128 * 20].view(1, 4, 5, 128).permute(0, 3, 1, 2)
    with pytest.raises(RuntimeError, match="refer to a single memory location"):
        torch.ops.resnet_fused.conv1x1_residual_(residual, x, packed, bias, [1, 1], True)


# --- winograd_conv3x3 (transformed filter) ------------------------------------------------------


def _g(m):
    return torch.tensor(winograd._G[m], dtype=torch.float64)


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize(("dtype", "packed"), [(torch.float32, False), (torch.bfloat16, False),
                                               (torch.bfloat16, True)],
                         ids=["float32", "bfloat16", "bfloat16-pair-packed"])
def test_winograd_gradients(dtype, packed, residual, generator):
    """Input, bias and residual gradients against the direct convolution the op computes; the
    filter's against the chain rule: G^T dU G is the gradient of the 3x3 weight."""
    c, k = 6, 16
    x = torch.randn(2, c, 9, 7, generator=generator).to(dtype)
    weight = torch.randn(k, c, 3, 3, generator=generator) / (9 * c) ** 0.5
    scale, shift = random_bn_params(k, generator)
    u = winograd.transform_filter(weight, scale, dtype)
    if packed:
        u = winograd.pack_filter(u)
    res = torch.randn(2, k, 9, 7, generator=generator).to(dtype) if residual else None
    xa, ua, ba = x.clone().requires_grad_(), u.clone().requires_grad_(), shift.clone()
    ba.requires_grad_()
    ra = res.clone().requires_grad_() if residual else None
    out = torch.ops.resnet_fused.winograd_conv3x3(xa, ua, ba, ra, True)
    grad = torch.randn(out.shape, generator=generator).to(dtype)
    out.backward(grad)

    rd = reference_dtype(dtype)
    folded = (weight.double() * scale.double().view(-1, 1, 1, 1)).to(rd).requires_grad_()
    xb, bb = x.to(rd).requires_grad_(), shift.to(rd).requires_grad_()
    rb = res.to(rd).requires_grad_() if residual else None
    z = F.conv2d(xb, folded, bb, padding=1) + (0 if rb is None else rb)
    (z * (out.detach() > 0).to(rd)).backward(grad.to(rd))

    assert_grad_close(xa.grad, xb.grad, dtype, "input")
    assert_grad_close(ba.grad, bb.grad, torch.float32, "bias")
    if residual:
        assert_grad_close(ra.grad, rb.grad, dtype, "residual")
    assert ua.grad.shape == u.shape and ua.grad.dtype == u.dtype
    d_u = winograd.unpack_filter(ua.grad, c).double()  # ((m+2)^2, C, K)
    g = _g(winograd.tile_size(dtype))
    a = g.shape[0]
    d_weight = torch.einsum("ji,jlck,lm->kcim", g, d_u.view(a, a, c, k), g)
    assert_grad_close(d_weight, folded.grad, dtype, "filter (through G)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_opcheck_winograd_requires_grad(dtype, generator):
    x = torch.randn(2, 5, 6, 7, generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(16, 5, 3, 3, generator=generator) / 7
    scale, shift = random_bn_params(16, generator)
    u = winograd.transform_filter(weight, scale, dtype).requires_grad_()
    res = torch.randn(2, 16, 6, 7, generator=generator).to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.resnet_fused.winograd_conv3x3.default,
                          (x, u, shift, res, True))


# --- the CPU backward's one-pass epilogue ------------------------------------------------------

GRAD_EPILOGUE = torch.ops.resnet_fused.conv_bn_act_grad_epilogue.default


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "sliced"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
def test_grad_epilogue_matches_the_composition(dtype, relu, layout, generator):
    """(dz * scale, dz) with dz = grad, 0 where out <= 0: the composition's numbers, rounded
    once."""
    out = torch.randn(2, 24, 7, 5, generator=generator).to(dtype).contiguous(memory_format=CL)
    out[0, 3, 2, 2] = float("nan")  # not <= 0: its gradient passes, as in torch.relu's backward
    grad = torch.randn(2, 24, 7, 5, generator=generator).to(dtype)
    if layout == "channels_last":
        grad = grad.contiguous(memory_format=CL)
    elif layout == "sliced":
        grad = torch.randn(2, 24, 7, 10, generator=generator).to(dtype)[..., ::2]
    scale, _ = random_bn_params(24, generator)
    d_conv, dz = GRAD_EPILOGUE(grad, out, scale, relu, True)
    want_dz = torch.ops.aten.threshold_backward(grad, out, 0) if relu else grad
    assert torch.equal(dz, want_dz)
    assert torch.equal(d_conv, (want_dz.float() * scale.view(1, -1, 1, 1)).to(dtype))
    assert d_conv.is_contiguous(memory_format=CL) and dz.is_contiguous(memory_format=CL)
    d_conv_only, empty = GRAD_EPILOGUE(grad, out, scale, relu, False)
    assert torch.equal(d_conv_only, d_conv) and empty.numel() == 0


def test_grad_epilogue_opcheck_and_errors(generator):
    out = torch.randn(2, 8, 3, 3, generator=generator)
    grad = torch.randn(2, 8, 3, 3, generator=generator)
    scale, _ = random_bn_params(8, generator)
    torch.library.opcheck(GRAD_EPILOGUE, (grad, out, scale, True, True))
    with pytest.raises(RuntimeError, match="same sizes"):
        GRAD_EPILOGUE(grad, out[:1], scale, True, False)
    with pytest.raises(RuntimeError, match="scale must be 1-D float32 with C = 8"):
        GRAD_EPILOGUE(grad, out, scale[:4], True, False)
    with pytest.raises(RuntimeError, match="share a float32/float16/bfloat16 dtype"):
        GRAD_EPILOGUE(grad, out.double(), scale, True, False)


def test_double_backward_through_conv_bn_act(generator):
    """create_graph=True takes the differentiable composition: a second derivative exists."""
    t = conv_tensors(generator, torch.float32, **CONV_CASES["3x3-s1-relu"])
    x, w = t["input"].requires_grad_(), t["weight"].requires_grad_()
    out = CONV(x, w, t["scale"], t["shift"], None, [1, 1], [1, 1], True)
    (d_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (d_w,) = torch.autograd.grad(d_x.sum(), w)
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    z = conv_reference({**t, "input": xr, "weight": wr}, (1, 1), (1, 1),
                       (out.detach() > 0).double())
    (d_xr,) = torch.autograd.grad(z.square().sum(), xr, create_graph=True)
    (d_wr,) = torch.autograd.grad(d_xr.sum(), wr)
    assert_grad_close(d_w, d_wr, torch.float32, "second derivative")
