"""The CPU fast path of fused models: oneDNN convolutions with BN folded and post-ops.

What ``fuse()`` builds on a CPU runs ``resnet_fused.cpu.onednn.OneDNNConv`` for every fused conv:
checked here against the higher-precision reference composition with the project's bounds
(fp32 vs float64, bf16/fp16 vs fp32), for single convs (odd shapes, residual or not, in-place
sum or not, N = 0/1) and whole models of every depth; plus the properties that make it safe:
prepared weights are never stale, callers' tensors are never overwritten, unsupported dtypes and
inputs fall back to the raw op (which names bad arguments), copies and pickles work.
"""

from __future__ import annotations

import copy
import io
import pickle
import random

import pytest
import torch

import resnet_fused
from resnet_fused import fuse, ops
from resnet_fused.cpu import capability, onednn
from resnet_fused.fused import FusedBlock, FusedConvBNAct
from resnet_fused.reference import conv_bn_act_reference
from resnet_fused.testing import (
    assert_within_bound,
    random_bn_params,
    randomize_batchnorm_,
    reference_dtype,
    relative_error,
)

CL = torch.channels_last
FAST = sorted(capability.fast_dtypes(), key=str)
FAST_IDS = [str(d).removeprefix("torch.") for d in FAST]



def make_conv(generator, c, k, r, s, stride, padding, dtype, relu=True) -> FusedConvBNAct:
    weight = torch.randn(k, c, r, s, generator=generator) * (2.0 / (c * r * s)) ** 0.5
    scale, shift = random_bn_params(k, generator)
    return FusedConvBNAct(weight.to(dtype), scale, shift, stride, padding, relu, backend="cpu")


def reference(conv: FusedConvBNAct, x, residual=None, relu=None):
    rd = reference_dtype(x.dtype)
    return conv_bn_act_reference(
        x.to(rd), conv.weight.to(rd), conv.scale, conv.shift,
        None if residual is None else residual.to(rd), conv.stride, conv.padding,
        conv.relu if relu is None else relu)



def out_hw(h, w, r, s, stride, padding):
    return (h + 2 * padding[0] - r) // stride[0] + 1, (w + 2 * padding[1] - s) // stride[1] + 1


# --- single convs ------------------------------------------------------------------------------


def _random_cases(count: int, seed: int):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        r = rng.choice([1, 3, 7])
        s = r if rng.random() < 0.7 else rng.choice([1, 3, 5])
        stride = (rng.choice([1, 2]), rng.choice([1, 2]))
        padding = (rng.randint(0, r // 2 + 1), rng.randint(0, s // 2 + 1))
        h, w = rng.randint(1, 19), rng.randint(1, 19)
        if h + 2 * padding[0] < r or w + 2 * padding[1] < s:
            continue
        cases.append(dict(n=rng.choice([1, 2, 3]), c=rng.choice([3, 5, 16, 24]), h=h, w=w,
                          k=rng.choice([1, 7, 16, 40]), r=r, s=s, stride=stride,
                          padding=padding, residual=rng.random() < 0.5,
                          relu=rng.random() < 0.8))
    return cases


CASES = _random_cases(16, seed=13)


def _case_id(c) -> str:
    return (f"n{c['n']}c{c['c']}_{c['h']}x{c['w']}_k{c['k']}_{c['r']}x{c['s']}"
            f"_s{c['stride'][0]}{c['stride'][1]}_p{c['padding'][0]}{c['padding'][1]}"
            f"{'_res' if c['residual'] else ''}{'' if c['relu'] else '_norelu'}")


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_fast_conv_matches_reference(case, dtype, generator, no_raw_op):
    conv = make_conv(generator, case["c"], case["k"], case["r"], case["s"], case["stride"],
                     case["padding"], dtype, case["relu"])
    x = torch.randn(case["n"], case["c"], case["h"], case["w"], generator=generator).to(dtype)
    ho, wo = out_hw(case["h"], case["w"], case["r"], case["s"], case["stride"], case["padding"])
    res = (torch.randn(case["n"], case["k"], ho, wo, generator=generator).to(dtype)
           if case["residual"] else None)
    ref = reference(conv, x, res)
    with torch.no_grad():
        y = conv(x.contiguous(memory_format=CL), res)
    assert conv._onednn is not None
    assert y.shape == ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=CL)
    assert_within_bound(y, ref, dtype)


@pytest.fixture
def direct_only(monkeypatch):
    """The oneDNN convolution for every conv (no Winograd): for what only that path promises."""
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "never")


@pytest.fixture(params=["never", "always"])
def winograd_policy(request, monkeypatch):
    """Runs a test with the 3x3 stride-1 convs on oneDNN's direct conv, then on Winograd."""
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", request.param)
    return request.param


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
def test_residual_sum_in_place(dtype, relu, generator, no_raw_op, direct_only):
    """A scratch residual is accumulated into (no new output); any other is left untouched."""
    conv = make_conv(generator, 16, 32, 3, 3, (1, 1), (1, 1), dtype, relu)
    x = torch.randn(2, 16, 9, 11, generator=generator).to(dtype).contiguous(memory_format=CL)
    res = torch.randn(2, 32, 9, 11, generator=generator).to(dtype).contiguous(memory_format=CL)
    ref = reference(conv, x, res)
    kept = res.clone()
    with torch.no_grad():
        y = conv(x, res)
        assert torch.equal(res, kept), "residual_is_scratch=False must not write the residual"
        assert y.data_ptr() != res.data_ptr()
        assert_within_bound(y, ref, dtype)
        y2 = conv(x, res, residual_is_scratch=True)
    assert y2.data_ptr() == res.data_ptr(), "the sum post-op writes into the residual's buffer"
    assert_within_bound(y2, ref, dtype)


@pytest.mark.parametrize("layout", ["contiguous", "sliced", "transposed"])
def test_any_input_and_residual_layout(layout, generator, no_raw_op):
    conv = make_conv(generator, 8, 12, 3, 3, (2, 1), (1, 1), torch.float32)
    x = torch.randn(2, 8, 13, 10, generator=generator)
    res = torch.randn(2, 12, 7, 10, generator=generator)
    ref = reference(conv, x, res)
    if layout == "sliced":
        xv = torch.randn(2, 10, 15, 20, generator=generator)[:, 1:9, 1:14, ::2]
        xv.copy_(x)
        rv = torch.randn(2, 12, 7, 20, generator=generator)[..., ::2]
        rv.copy_(res)
    elif layout == "transposed":
        xv = x.transpose(2, 3).contiguous().transpose(2, 3)
        rv = res.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        xv, rv = x, res
    with torch.no_grad():
        y = conv(xv, rv, residual_is_scratch=True)  # not channels_last: summed out of place
    assert torch.equal(rv, res)
    assert y.is_contiguous(memory_format=CL)
    assert_within_bound(y, ref, torch.float32)


@pytest.mark.parametrize("scratch", [False, True], ids=["kept", "scratch"])
@pytest.mark.parametrize("res_layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize(("k", "hw"), [(1, 5), (16, 1), (1, 1), (2, 3)],
                         ids=["k1", "1x1-out", "k1-1x1-out", "k2"])
def test_size_one_dims_with_residual(k, hw, res_layout, scratch, generator, no_raw_op):
    """One output channel or pixel: NHWC strides are ambiguous there; every path stays right."""
    conv = make_conv(generator, 3, k, 1, 1, (1, 1), (0, 0), torch.float32)
    x = torch.randn(2, 3, hw, hw, generator=generator)
    res = torch.randn(2, k, hw, hw, generator=generator)
    ref = reference(conv, x, res)
    res_in = res.contiguous(memory_format=CL) if res_layout == "channels_last" else res.clone()
    with torch.no_grad():
        y = conv(x, res_in, residual_is_scratch=scratch)
    if not scratch:
        assert torch.equal(res_in, res)
    assert_within_bound(y, ref, torch.float32)


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
def test_empty_batch(dtype, residual, generator):
    conv = make_conv(generator, 8, 16, 3, 3, (2, 2), (1, 1), dtype)
    x = torch.randn(0, 8, 9, 9).to(dtype)
    res = torch.randn(0, 16, 5, 5).to(dtype) if residual else None
    with torch.no_grad():
        y = conv(x, res)
    assert y.shape == (0, 16, 5, 5) and y.dtype == dtype


def test_weight_packed_once_per_shape(generator):
    conv = make_conv(generator, 16, 16, 3, 3, (1, 1), (1, 1), torch.float32)
    with torch.no_grad():
        for n, h in [(1, 8), (1, 8), (2, 8), (1, 10), (2, 8)]:
            x = torch.randn(n, 16, h, h, generator=generator)
            assert_within_bound(conv(x), reference(conv, x), torch.float32)
    prepared = conv._onednn
    assert prepared.shapes == [(1, 8, 8), (2, 8, 8), (1, 10, 10)]
    packed = dict(prepared._packed)
    with torch.no_grad():
        conv(torch.randn(2, 16, 8, 8, generator=generator))
    assert conv._onednn is prepared
    assert all(prepared._packed[k] is v for k, v in packed.items()), "reused, not packed again"


def test_more_shapes_than_kept_stay_right(generator):
    conv = make_conv(generator, 8, 8, 3, 3, (1, 1), (1, 1), torch.float32)
    with torch.no_grad():
        for h in range(3, 3 + onednn.OneDNNConv.MAX_SHAPES + 3):
            x = torch.randn(1, 8, h, h + 1, generator=generator)
            assert_within_bound(conv(x), reference(conv, x), torch.float32)
    assert len(conv._onednn.shapes) == onednn.OneDNNConv.MAX_SHAPES


# --- never stale -------------------------------------------------------------------------------


def test_raw_op_has_no_cache(generator):
    """The raw op with new weights (same shapes, same tensor updated in place) is always right."""
    x = torch.randn(2, 8, 10, 10, generator=generator)
    weight = torch.randn(16, 8, 3, 3, generator=generator) * 0.2
    scale, shift = random_bn_params(16, generator)
    for _ in range(3):
        y = ops.conv_bn_act(x, weight, scale, shift, None, 1, 1, True, backend="cpu")
        ref = conv_bn_act_reference(x.double(), weight.double(), scale, shift, None, (1, 1),
                                    (1, 1), True)
        assert_within_bound(y, ref, torch.float32)
        weight.mul_(-1.7)
        scale.add_(0.3)
        shift.mul_(2.0)


def _updates():
    def in_place_weight(conv, g):
        conv.weight.mul_(-1.5)

    def in_place_scale(conv, g):
        conv.scale.copy_(torch.rand(conv.scale.shape, generator=g) + 0.5)

    def in_place_shift(conv, g):
        conv.shift.add_(1.0)

    def new_weight_tensor(conv, g):
        conv.weight = torch.nn.Parameter(
            torch.randn(conv.weight.shape, generator=g).contiguous(memory_format=CL),
            requires_grad=False)

    def load_state_dict(conv, g):
        state = {k: v.clone() for k, v in conv.state_dict().items()}
        state["weight"] = torch.randn(state["weight"].shape, generator=g)
        state["shift"] = torch.randn(state["shift"].shape, generator=g)
        conv.load_state_dict(state)

    return {f.__name__: f for f in (in_place_weight, in_place_scale, in_place_shift,
                                    new_weight_tensor, load_state_dict)}


UPDATES = _updates()


@pytest.mark.parametrize("update", list(UPDATES))
def test_prepared_weights_follow_updates(update, generator, no_raw_op, winograd_policy):
    conv = make_conv(generator, 8, 16, 3, 3, (1, 1), (1, 1), torch.float32)
    x = torch.randn(2, 8, 10, 10, generator=generator)
    with torch.no_grad():
        before = conv(x)
        assert_within_bound(before, reference(conv, x), torch.float32)
        UPDATES[update](conv, generator)
        after = conv(x)
    ref = reference(conv, x)
    assert_within_bound(after, ref, torch.float32)
    assert relative_error(before, ref) > 1e-2, "the update must change the output"


def test_refresh_after_writes_that_bypass_autograd(generator):
    """`.data` writes do not bump the version counter: refresh() is the documented remedy."""
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    fused = fuse(model, backend="cpu")
    x = torch.randn(1, 3, 32, 32, generator=generator)
    with torch.no_grad():
        fused(x)
        fused.stem.weight.data.mul_(-1.0)
        fused.refresh()
        y = fused(x)
        model.conv1.weight.mul_(-1.0)
        ref = copy.deepcopy(model).double()(x.double())
    assert_within_bound(y, ref, torch.float32, "model")


def test_model_load_state_dict_after_use(generator, winograd_policy):
    """A fused model that already ran, given another network's weights, computes that network."""
    a = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    b = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    fused_a, fused_b = fuse(a, backend="cpu"), fuse(b, backend="cpu")
    x = torch.randn(2, 3, 40, 40, generator=generator)
    with torch.no_grad():
        fused_a(x)
        fused_a.load_state_dict(fused_b.state_dict())
        y = fused_a(x)
        ref = copy.deepcopy(b).double()(x.double())
    assert_within_bound(y, ref, torch.float32, "model")


def test_cast_after_use_follows_dtype(generator, winograd_policy):
    if torch.bfloat16 not in capability.fast_dtypes():
        pytest.skip("no oneDNN bf16 on this CPU")
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    fused = fuse(model, backend="cpu")
    x = torch.randn(2, 3, 40, 40, generator=generator)
    with torch.no_grad():
        fused(x)
        fused.to(torch.bfloat16)
        y = fused(x)
        ref = model(x)
    assert y.dtype == torch.bfloat16
    assert fused.stem._onednn.dtype == torch.bfloat16
    assert_within_bound(y, ref, torch.bfloat16, "model")


# --- whole models ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_every_depth_fp32(name, random_models, generator, no_raw_op, winograd_policy):
    model = random_models(name)
    fused = fuse(model, backend="cpu")
    x = torch.randn(2, 3, 48, 40, generator=generator)
    with torch.no_grad():
        y = fused(x)
        f = fused.forward_features(x)
        model64 = copy.deepcopy(model).double()
        ref = model64(x.double())
        ref_f = torch.flatten(model64.avgpool(_features64(model64, x.double())), 1)
    assert all(m._onednn is not None for m in fused.modules() if isinstance(m, FusedConvBNAct))
    assert_within_bound(y, ref, torch.float32, "model")
    assert_within_bound(f, ref_f, torch.float32, "model")


def _features64(m, x):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


@pytest.mark.parametrize("dtype", [d for d in FAST if d != torch.float32],
                         ids=[i for i in FAST_IDS if i != "float32"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("n", [1, 3])
def test_low_precision_models(name, dtype, n, random_models, generator, no_raw_op, winograd_policy):
    model = random_models(name)
    fused = fuse(model, backend="cpu", dtype=dtype)
    x = torch.randn(n, 3, 64, 56, generator=generator)
    with torch.no_grad():
        y = fused(x)
        ref = model(x)  # the fp32 composition
    assert y.dtype == dtype
    assert_within_bound(y, ref, dtype, "model")


def test_model_input_is_not_modified(random_models, generator):
    """In-place residual sums only ever write the model's own activations."""
    fused = fuse(random_models("resnet18"), backend="cpu")
    x = torch.randn(2, 3, 32, 32, generator=generator).contiguous(memory_format=CL)
    kept = x.clone()
    with torch.no_grad():
        fused(x)
        block = fused.stages[0][0]  # identity skip: its input is the residual
        h = torch.randn(2, 64, 8, 8, generator=generator).contiguous(memory_format=CL)
        h_kept = h.clone()
        out = block(h)
    assert torch.equal(x, kept)
    assert torch.equal(h, h_kept), "a block called on a caller's tensor must not overwrite it"
    assert isinstance(block, FusedBlock) and block.skip is None
    assert out.data_ptr() != h.data_ptr()


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
def test_downsample_block_sums_into_its_last_conv(dtype, random_models, generator, no_raw_op):
    """A block with a downsample conv (run last, summing into the last conv's output) equals
    the source block, and leaves its input alone."""
    model = random_models("resnet50")
    fast = fuse(model, backend="cpu", dtype=dtype).stages[1][0]
    assert fast.skip is not None
    h = torch.randn(2, 256, 12, 10, generator=generator).to(dtype).contiguous(memory_format=CL)
    kept = h.clone()
    with torch.no_grad():
        y = fast(h, consume_input=True)
        ref = copy.deepcopy(model.layer2[0]).to(reference_dtype(dtype))(
            h.to(reference_dtype(dtype)))
    assert torch.equal(h, kept)
    assert_within_bound(y, ref, dtype, "op" if dtype == torch.float32 else "model")


def test_copy_and_pickle_after_use(random_models, generator, winograd_policy):
    fused = fuse(random_models("resnet18"), backend="cpu")
    x = torch.randn(1, 3, 32, 32, generator=generator)
    with torch.no_grad():
        y = fused(x)
        clone = copy.deepcopy(fused)
        buf = io.BytesIO()
        torch.save(fused, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        unpickled = pickle.loads(pickle.dumps(fused))
        for other in (clone, loaded, unpickled):
            assert torch.equal(other(x), y)
    assert fused.stem._onednn is not None, "copying does not drop the original's prepared state"


def _algorithms(fused) -> dict:
    return {n: m._onednn.algorithms for n, m in fused.named_modules()
            if isinstance(m, FusedConvBNAct) and m._onednn is not None and m._onednn.algorithms}


def test_copies_make_the_same_algorithm_choices(random_models, generator, monkeypatch):
    """Under ``auto`` each 3x3 conv's algorithm follows from its input shape: a copy or pickle
    makes the same choices on its first call, so it computes the same bits."""
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "auto")
    fused = fuse(random_models("resnet18"), backend="cpu")
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        y = fused(x)
        chosen = _algorithms(fused)
        assert "winograd" in {a for c in chosen.values() for a in c.values()}, chosen
        for other in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
            assert torch.equal(other(x), y)
            assert _algorithms(other) == chosen


def test_fuse_and_run_under_inference_mode(random_models, generator, winograd_policy):
    """fuse() under torch.inference_mode still makes version-counted buffers, so in-place weight
    updates after it are seen; and inference tensors (a .to() under inference mode) run too."""
    model = random_models("resnet18")
    x = torch.randn(1, 3, 32, 32, generator=generator)
    with torch.inference_mode():
        fused = fuse(model, backend="cpu")
        y = fused(x)
    assert not fused.stem.weight.is_inference()
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        fused.stem.scale.mul_(-1.0)
        flipped = fused(x)
    assert_within_bound(y, ref, torch.float32, "model")
    assert relative_error(flipped, ref) > 1e-2, "the in-place update must be seen"
    with torch.no_grad():
        fused.stem.scale.mul_(-1.0)  # back to the model's numbers
    with torch.inference_mode():
        moved = copy.deepcopy(fused)._apply(torch.clone)  # inference tensors now
        assert moved.stem.weight.is_inference()
        assert_within_bound(moved(x), copy.deepcopy(model).double()(x.double()), torch.float32,
                            "model")


# --- fallbacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("available", [{torch.float32}, set()], ids=["no-bf16", "no-onednn"])
def test_fallback_without_onednn_dtype(available, monkeypatch, random_models, generator):
    """A CPU without bf16 (or a torch without oneDNN) runs the raw op, same numbers."""
    monkeypatch.setattr(capability, "fast_dtypes", lambda: frozenset(available))
    model = random_models("resnet18")
    x = torch.randn(2, 3, 48, 48, generator=generator)
    for dtype in (torch.float32, torch.bfloat16):
        fused = fuse(model, backend="cpu", dtype=dtype)
        with torch.no_grad():
            y = fused(x)
            ref = copy.deepcopy(model).to(reference_dtype(dtype))(x.to(reference_dtype(dtype)))
        fast = [m._onednn is not None for m in fused.modules() if isinstance(m, FusedConvBNAct)]
        assert all(fast) if dtype in available else not any(fast)
        assert_within_bound(y, ref, dtype, "model")


def test_fp16_without_onednn_fp16_runs_the_raw_op(generator):
    if torch.float16 in capability.fast_dtypes():
        pytest.skip("this CPU has oneDNN fp16 kernels")
    conv = make_conv(generator, 8, 16, 3, 3, (1, 1), (1, 1), torch.float16)
    x = torch.randn(2, 8, 9, 9, generator=generator).half()
    with torch.no_grad():
        y = conv(x)
    assert conv._onednn is None
    assert_within_bound(y, reference(conv, x), torch.float16)


def test_aten_backend_never_takes_the_fast_path(generator):
    conv = make_conv(generator, 8, 16, 3, 3, (1, 1), (1, 1), torch.float32)
    conv.backend = "aten"
    x = torch.randn(2, 8, 9, 9, generator=generator)
    with torch.no_grad():
        y = conv(x)
    assert conv._onednn is None
    assert_within_bound(y, reference(conv, x), torch.float32)


# --- bad inputs: the raw op runs instead and names the argument -----------------------------


BAD = {
    "channels": (lambda x, r: (x[:, :5], r), ValueError, "input.size"),
    "dtype": (lambda x, r: (x.bfloat16(), r), TypeError, "must match input dtype"),
    "float64": (lambda x, r: (x.double(), r), TypeError, "float32, float16 or bfloat16"),
    "3-D": (lambda x, r: (x[0], r), ValueError, "4-D"),
    "residual-shape": (lambda x, r: (x, r[:, :, :-1]), ValueError, "residual"),
    "residual-dtype": (lambda x, r: (x, r.bfloat16()), TypeError, "residual"),
    "too-small": (lambda x, r: (x[:, :, :1, :1], None), ValueError, "smaller than the kernel"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_are_named(name, generator):
    conv = make_conv(generator, 8, 16, 3, 3, (1, 1), (0, 0), torch.float32)
    x = torch.randn(2, 8, 9, 9, generator=generator)
    res = torch.randn(2, 16, 7, 7, generator=generator)
    change, error, match = BAD[name]
    bad_x, bad_res = change(x, res)
    with pytest.raises((error, RuntimeError), match=match), torch.no_grad():
        conv(bad_x, bad_res)


# --- capability report -------------------------------------------------------------------------


def test_capability_and_info(capsys):
    caps = capability.cpu_capability()
    assert {"isa", "avx512_bf16", "amx_bf16", "onednn_bf16", "onednn_fp16"} <= set(caps)
    assert (torch.bfloat16 in capability.fast_dtypes()) == (caps["onednn"] and caps["onednn_bf16"])
    from resnet_fused import info

    assert info.run() == 0
    out = capsys.readouterr().out
    assert "cpu fast path (oneDNN)" in out
    assert caps["isa"] in out
    from resnet_fused.cpu import winograd

    floor = ("16 (float32 on the AVX-512 pipeline) or 32" if winograd.pipelines_available()
             else "32")
    assert (f"winograd  auto (RESNET_FUSED_WINOGRAD): 3x3 stride-1 convs with >= {floor} "
            "output") in out
    gemm = ("AVX-512 pipelines with their own GEMM" if winograd.pipelines_available()
            else "ATen's GEMM (no AVX512_BF16)")
    assert gemm in out
    from resnet_fused.cpu import conv1x1

    if conv1x1.available(torch.float32):
        assert "conv1x1   auto (RESNET_FUSED_CONV1X1): 1x1 convs on this package's AVX-512" in out
    else:
        assert "conv1x1   auto (RESNET_FUSED_CONV1X1): unavailable (needs AVX-512)" in out


def test_info_names_a_bad_conv1x1_setting(capsys, monkeypatch):
    monkeypatch.setenv("RESNET_FUSED_CONV1X1", "always")
    from resnet_fused import info

    assert info.run() == 0
    assert "conv1x1   invalid setting: RESNET_FUSED_CONV1X1 must be one of" in (
        capsys.readouterr().out)


def test_info_names_a_bad_winograd_setting(capsys, monkeypatch):
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "sometimes")
    from resnet_fused import info

    assert info.run() == 0
    assert "winograd  invalid setting: RESNET_FUSED_WINOGRAD must be one of" in (
        capsys.readouterr().out)


def test_state_dict_holds_only_the_source_numbers(random_models):
    fused = fuse(random_models("resnet18"), backend="cpu")
    with torch.no_grad():
        fused(torch.randn(1, 3, 32, 32))
    keys = set(fused.stem.state_dict())
    assert keys == {"weight", "scale", "shift"}
    assert not any(t.is_mkldnn for t in fused.state_dict().values())
