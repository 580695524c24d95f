"""Forward plans on the CPU (``resnet_fused.cpu.plan`` and ``csrc/cpu/forward_plan.cpp``).

A fused model records the fast-path ops of its stem, max-pool and stages on the second call of
an input key and replays them from C++ from the third call on. Covered here:

* a plan is made on the 2nd call and used from the 3rd, for ``forward``, ``forward_features``
  and ``forward_stages``, batch 1 and 2, every fast dtype: its outputs equal the same model's
  Python forward (``RESNET_FUSED_FORWARD_PLAN=never``) bit for bit on new inputs, stay within the
  model bound of the higher-precision source model, are not overwritten by later runs, and the
  caller's input is left alone; with the 3x3 convs on oneDNN or Winograd, the plan holds one
  step per conv plus the max-pool; odd shapes (empty batch, 1x1 images) plan or say why not;
* a plan never runs stale: ``load_state_dict``, a new ``nn.Parameter``, an in-place write to a
  buffer, a changed plain attribute (``relu``) and a replaced block are all seen (the outputs
  equal a freshly fused copy of the modified source or the plan-off forward), and a new plan is
  recorded afterwards; so is a module appended to a planned container;
* module and global forward hooks (and pre-hooks) run on every call and their output changes
  count, an instance-level ``forward`` patch is honoured, and the plan comes back once removed;
* autograd: gradients through a planned model equal the plan-off model's, no plan runs while
  autograd records, and the plan works again once it does not;
* non-finite numbers: a NaN input and an infinite conv weight give the plan-off outputs (NaN and
  infinity kept where the reference has them), and no plan is made for the poisoned weights;
* ``copy.deepcopy``, ``pickle`` and ``torch.save`` of a planned model; dtype casts and
  ``refresh()`` drop the plans;
* a recording that meets an op outside the fast path is abandoned (with a reason) and retried
  only after twice as many calls; more input shapes than ``PlanCache.MAX_PLANS`` keep at most
  that many plans;
* the C++ class's own refusals, and a bad ``RESNET_FUSED_FORWARD_PLAN`` value.
"""

from __future__ import annotations

import collections
import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.modules import module as nn_module

import resnet_fused
from resnet_fused import fuse
from resnet_fused.cpu import capability
from resnet_fused.cpu import plan as plan_module
from resnet_fused.fused import FusedConvBNAct, FusedResNet
from resnet_fused.testing import (
    assert_within_bound,
    randomize_batchnorm_,
    reference_dtype,
    relative_error,
    tolerance,
)

CL = torch.channels_last
FAST = sorted(capability.fast_dtypes(), key=str)
FAST_IDS = [str(d).removeprefix("torch.") for d in FAST]
PLAN_ENV = "RESNET_FUSED_FORWARD_PLAN"
METHODS = ["forward", "forward_features", "forward_stages"]
_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16,
         torch.float64: torch.int64}
MAX_POOL2D = torch.ops.resnet_fused.max_pool2d.default


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def python_runs(monkeypatch):
    """Counts, per model, the forwards that ran in Python (``FusedResNet._run_body``, which the
    plan-off path, a recording and every fallback run): a call that adds none ran from its plan."""
    counts: collections.Counter = collections.Counter()
    original = FusedResNet._run_body

    def counting(self, *args, **kwargs):
        counts[self] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FusedResNet, "_run_body", counting)
    return counts


def outputs(result) -> list[torch.Tensor]:
    return list(result.values()) if isinstance(result, dict) else [result]


def run(model, x, method="forward") -> list[torch.Tensor]:
    with torch.no_grad():
        return outputs(model(x) if method == "forward" else getattr(model, method)(x))


def plan_off(model, x, method="forward") -> list[torch.Tensor]:
    """The model's Python forward (its plans neither used nor dropped)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PLAN_ENV, "never")
        return run(model, x, method)


def run_counted(model, x, counts, method="forward") -> tuple[list[torch.Tensor], bool]:
    """The outputs, and whether the call ran in Python (True) or from a plan (False)."""
    before = counts[model]
    ys = run(model, x, method)
    return ys, counts[model] > before


def until_planned(model, x, counts, method="forward", limit=8) -> list[torch.Tensor]:
    """Calls the model until a call runs from a plan (at most ``limit`` calls)."""
    for _ in range(limit):
        ys, in_python = run_counted(model, x, counts, method)
        if not in_python:
            return ys
    raise AssertionError(f"no plan ran within {limit} calls (why_not: {model._plans.why_not})")


def plan_key(x, dtype, stages=False) -> tuple:
    """The key a fused model of ``dtype`` files its plan for input ``x`` under."""
    xc = x.to(dtype).contiguous(memory_format=CL)
    return (stages, xc.shape, xc.stride(), xc.dtype)


def assert_same_bits(got, want, what="") -> None:
    """Same shapes, dtypes, layouts and bits (NaN payloads and signed zeros included)."""
    assert len(got) == len(want), f"{what}{len(got)} outputs, expected {len(want)}"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, (
            f"{what}output {i}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        assert a.stride() == b.stride(), f"{what}output {i}: strides {a.stride()} vs {b.stride()}"
        same = torch.equal(a.view(_BITS[a.dtype]), b.view(_BITS[b.dtype]))
        assert same, (f"{what}output {i} differs (relative error "
                      f"{relative_error(a.float(), b.float()):.3g})")


def assert_differs(got, want, what="") -> None:
    assert len(got) != len(want) or not all(
        torch.equal(a, b) for a, b in zip(got, want, strict=True)), (
        f"{what}the change must change the output (else the test proves nothing)")


def reference(source, x, dtype, method="forward") -> list[torch.Tensor]:
    """The source model in the reference dtype (float64 for fp32, fp32 for bf16), on the input
    as the fused model sees it (rounded to ``dtype``)."""
    rd = reference_dtype(dtype)
    m = copy.deepcopy(source).to(rd).eval()
    h = x.to(dtype).to(rd)
    with torch.no_grad():
        if method == "forward":
            return [m(h)]
        if method == "forward_features":
            return [m.forward_features(h)]
        h = m.maxpool(m.relu(m.bn1(m.conv1(h))))
        stages = []
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            h = layer(h)
            stages.append(h)
        return stages


def assert_near_reference(ys, refs, dtype, what="") -> None:
    assert len(ys) == len(refs)
    for i, (y, ref) in enumerate(zip(ys, refs, strict=True)):
        assert_within_bound(y.to(ref.dtype), ref, dtype, scope="model", what=f"{what}[{i}] ")


def assert_same_nonfinite(y, ref, dtype, what="") -> None:
    """Non-finite exactly where the reference is; the all-finite rows within the model bound."""
    y = y.to(ref.dtype)
    bad, bad_ref = ~torch.isfinite(y), ~torch.isfinite(ref)
    assert bad_ref.any(), f"{what}the test needs a reference with non-finite values"
    assert torch.equal(bad, bad_ref), (
        f"{what}{int((bad_ref & ~bad).sum())} outputs finite where the reference's are not, "
        f"{int((bad & ~bad_ref).sum())} non-finite only here")
    rows = torch.isfinite(ref).flatten(1).all(1)
    if rows.any():
        err = relative_error(y[rows], ref[rows])
        assert err <= tolerance(dtype, "model"), f"{what}finite rows: {err:.3g}"


def fresh_source(random_models, name):
    """A modifiable copy of the module-scoped random model (``random_models`` must not change)."""
    return copy.deepcopy(random_models(name))


def other_source(name, generator):
    """Another random network of the same architecture (random weights, BN and fc bias)."""
    model = getattr(resnet_fused, name)(num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator)
                               * (2.0 / fan_in) ** 0.5)
        model.fc.bias.copy_(torch.randn(10, generator=generator))
    return randomize_batchnorm_(model, generator).eval()


def planned(source, dtype, x, counts, method="forward"):
    """A fused model of ``source`` that has run ``x`` from its plan; and that plan's output."""
    model = fuse(source, backend="cpu", dtype=dtype)
    run(model, x, method)
    run(model, x, method)
    ys, in_python = run_counted(model, x, counts, method)
    assert not in_python, f"the third call must run from the plan ({model._plans.why_not})"
    return model, ys


# --- the plan is made and used --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("method", METHODS)
def test_plan_made_on_second_call_used_from_third(method, n, dtype, random_models, generator,
                                                  python_runs):
    source = random_models("resnet50")
    model = fuse(source, backend="cpu", dtype=dtype)
    x = torch.randn(n, 3, 80, 72, generator=generator)
    key = plan_key(x, dtype, stages=method == "forward_stages")

    first, in_python = run_counted(model, x, python_runs, method)
    assert in_python and key not in model._plans.plans, "no plan on the first call"
    second, in_python = run_counted(model, x, python_runs, method)
    assert in_python, "the second call records in Python"
    assert list(model._plans.plans) == [key], model._plans.why_not
    assert model._plans.plans[key].plan.steps() > 0
    assert_same_bits(first, second, "1st vs 2nd call: ")

    x2 = torch.randn(n, 3, 80, 72, generator=generator)  # a new input of the same key
    third, in_python = run_counted(model, x2, python_runs, method)
    assert not in_python, "the third call must run from the plan"
    again, in_python = run_counted(model, x, python_runs, method)  # must not reuse third's memory
    assert not in_python
    assert_same_bits(third, plan_off(model, x2, method), "plan vs plan-off: ")
    assert_same_bits(again, second, "plan vs recording forward: ")
    assert len(third) == (4 if method == "forward_stages" else 1)
    assert_near_reference(third, reference(source, x2, dtype, method), dtype)
    assert_differs(third, again, "x vs x2: ")
    # The plan-off calls above left the plan in place: the next call still uses it.
    _, in_python = run_counted(model, x2, python_runs, method)
    assert not in_python and key in model._plans.plans


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("winograd", ["never", "always"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_one_step_per_conv_under_each_algorithm(name, winograd, dtype, random_models, generator,
                                                python_runs, monkeypatch):
    """With the 3x3 convs on oneDNN's direct conv or on Winograd (and so every kind of recorded
    op: plain, binary and in-place-sum convs, the 1x1 kernels, Winograd, the max-pool), the plan
    holds one step per fused conv plus the max-pool, and gives the Python forward's bits."""
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", winograd)
    recorded = []
    append = plan_module._Recorder.append

    def spy(self, op, args, result):
        recorded.append(op.name)
        return append(self, op, args, result)

    monkeypatch.setattr(plan_module._Recorder, "append", spy)
    source = random_models(name)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    model, _ = planned(source, dtype, x, python_runs, "forward_stages")
    convs = sum(isinstance(m, FusedConvBNAct) for m in model.modules())
    steps = model._plans.plans[plan_key(x, dtype, stages=True)].plan.steps()
    assert steps == len(recorded) == convs + 1, (steps, len(recorded), convs)
    assert recorded.count("resnet_fused::max_pool2d") == 1
    if winograd == "never":
        assert "resnet_fused::winograd_conv3x3" not in recorded
    x2 = torch.randn(2, 3, 64, 64, generator=generator)
    ys, in_python = run_counted(model, x2, python_runs, "forward_stages")
    assert not in_python
    assert_same_bits(ys, plan_off(model, x2, "forward_stages"))
    assert_near_reference(ys, reference(source, x2, dtype, "forward_stages"), dtype)


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("shape", [(0, 3, 64, 64), (3, 3, 1, 1), (1, 3, 16, 16), (1, 3, 33, 47)],
                         ids=["empty", "1x1", "16x16", "33x47"])
def test_odd_shapes_plan_or_say_why(shape, dtype, random_models, generator, python_runs):
    """Shapes where some op leaves the fast path (an empty batch, images that shrink to one
    pixel, bf16 strided convs on tiny maps) give a reason instead of a plan; every call still
    gives the Python forward's outputs."""
    model = fuse(random_models("resnet18"), backend="cpu", dtype=dtype)
    x = torch.randn(*shape, generator=generator)
    key = plan_key(x, dtype, stages=True)
    expected = plan_off(copy.deepcopy(model), x, "forward_stages")
    for i in range(4):
        ys, in_python = run_counted(model, x, python_runs, "forward_stages")
        assert in_python == (i < 2 or key not in model._plans.plans), f"call {i}"
        assert_same_bits(ys, expected, f"call {i}: ")
    assert (key in model._plans.plans) != bool(model._plans.why_not.get(key)), (
        "after the recording call, a key has a plan or a reason")
    if shape[0] == 0:
        assert key not in model._plans.plans


def test_forward_and_features_share_one_plan(random_models, generator, python_runs):
    """``forward`` and ``forward_features`` run the same body: one key, one plan; the stages
    are another key."""
    model = fuse(random_models("resnet18"), backend="cpu")
    x = torch.randn(1, 3, 64, 64, generator=generator)
    run(model, x)
    run(model, x, "forward_features")
    features, in_python = run_counted(model, x, python_runs, "forward_features")
    assert not in_python and list(model._plans.plans) == [plan_key(x, torch.float32)]
    logits, in_python = run_counted(model, x, python_runs)
    assert not in_python
    assert_same_bits(features, plan_off(model, x, "forward_features"))
    assert_same_bits(logits, plan_off(model, x))
    _, in_python = run_counted(model, x, python_runs, "forward_stages")
    assert in_python, "forward_stages has its own key"


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
def test_plan_leaves_the_input_alone(dtype, random_models, generator, python_runs):
    """An input already in the model's dtype and layout is the plan's slot 0 itself: no op of
    the plan may write it (the blocks' in-place residual sums write only the model's own)."""
    source = random_models("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=generator).to(dtype).contiguous(memory_format=CL)
    kept = x.clone()
    model, _ = planned(source, dtype, x, python_runs, "forward_stages")
    x2 = torch.randn(2, 3, 64, 64, generator=generator).to(dtype).contiguous(memory_format=CL)
    kept2 = x2.clone()
    ys, in_python = run_counted(model, x2, python_runs, "forward_stages")
    assert not in_python
    assert torch.equal(x, kept) and torch.equal(x2, kept2), "the plan wrote its input"
    assert_same_bits(ys, plan_off(model, x2, "forward_stages"))


# --- a plan never runs stale ----------------------------------------------------------------------


def _load_state_dict(model, source, generator):
    other = other_source("resnet18", generator)
    with torch.no_grad():
        model.load_state_dict(fuse(other, backend="cpu", dtype=model.dtype).state_dict())
    return other


def _new_parameter(model, source, generator):
    conv = model.stages[1][0].convs[1]
    weight = torch.randn(conv.weight.shape, generator=generator) * 0.05
    conv.weight = nn.Parameter(weight.to(model.dtype).clone(memory_format=CL),
                               requires_grad=False)
    with torch.no_grad():
        source.layer2[0].conv2.weight.copy_(weight)
    return source


def _scale_mul_(model, source, generator):
    with torch.no_grad():
        model.stages[2][1].convs[0].scale.mul_(-0.5)
    return None  # no source model has exactly this scale: compared with the fresh copy only


def _relu_attribute(model, source, generator):
    conv = model.stages[1][1].convs[0]
    assert conv.relu
    conv.relu = False
    return None


def _replace_block(model, source, generator):
    other = other_source("resnet18", generator)
    model.stages[3][1] = fuse(other, backend="cpu", dtype=model.dtype).stages[3][1]
    source.layer4[1] = copy.deepcopy(other.layer4[1])
    return source


CHANGES = {"load_state_dict": _load_state_dict, "new_parameter": _new_parameter,
           "scale_mul_": _scale_mul_, "relu_attribute": _relu_attribute,
           "replace_block": _replace_block}


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("change", list(CHANGES))
def test_changes_are_seen(change, dtype, random_models, generator, python_runs):
    source = fresh_source(random_models, "resnet18")
    x = torch.randn(2, 3, 64, 64, generator=generator)
    key = plan_key(x, dtype)
    model, before = planned(source, dtype, x, python_runs)
    old = model._plans.plans[key]

    modified_source = CHANGES[change](model, source, generator)
    after, in_python = run_counted(model, x, python_runs)
    assert in_python, f"{change}: the stale plan ran"
    assert model._plans.plans.get(key) is not old, f"{change}: the stale plan was kept"
    assert_differs(after, before, f"{change}: ")
    assert_same_bits(after, plan_off(model, x), f"{change}, plan-off: ")
    # A copy prepares everything anew from the current numbers (no plan, no prepared weights).
    assert_same_bits(after, plan_off(copy.deepcopy(model), x), f"{change}, fresh copy: ")
    if modified_source is not None:
        fresh = fuse(modified_source, backend="cpu", dtype=dtype)
        assert_same_bits(after, run(fresh, x), f"{change}, freshly fused source: ")
        assert_near_reference(after, reference(modified_source, x, dtype), dtype)

    # A new plan is recorded against the changed model and gives its outputs.
    x2 = torch.randn(2, 3, 64, 64, generator=generator)
    ys = until_planned(model, x2, python_runs)
    assert model._plans.plans[key] is not old
    assert_same_bits(ys, plan_off(model, x2), f"{change}, new plan: ")


@pytest.mark.parametrize("where", ["block", "stage"])
def test_appended_module_is_seen(where, random_models, generator, python_runs):
    """Appending a block to a stage (or a stage to ``stages``) changes the module tree the
    Python forward walks: the plan must not run."""
    x = torch.randn(1, 3, 64, 64, generator=generator)
    model, before = planned(random_models("resnet18"), torch.float32, x, python_runs,
                            "forward_stages")
    if where == "block":
        model.stages[3].append(copy.deepcopy(model.stages[3][1]))
    else:
        model.stages.append(copy.deepcopy(model.stages[3][1:]))
    expected = plan_off(copy.deepcopy(model), x, "forward_stages")
    assert_differs(expected, before)
    ys, in_python = run_counted(model, x, python_runs, "forward_stages")
    assert_same_bits(ys, expected, f"appended {where}: ")
    assert in_python


def test_buffer_write_after_plan_in_every_planned_place(random_models, generator, python_runs):
    """In-place writes to the stem's weight and shift, a downsample conv's scale and a
    bottleneck's last shift: each seen on the very next call, then planned anew."""
    source = random_models("resnet50")
    x = torch.randn(1, 3, 64, 64, generator=generator)
    model, before = planned(source, torch.float32, x, python_runs, "forward_stages")
    for tensor in (model.stem.weight, model.stem.shift, model.stages[3][0].skip.scale,
                   model.stages[0][0].convs[2].shift):
        with torch.no_grad():
            tensor.add_(0.25)
        ys, in_python = run_counted(model, x, python_runs, "forward_stages")
        assert in_python, "the plan ran after an in-place write"
        assert_differs(ys, before)
        assert_same_bits(ys, plan_off(copy.deepcopy(model), x, "forward_stages"))
        before = until_planned(model, x, python_runs, "forward_stages")
        assert_same_bits(before, ys)


# --- hooks and patches ---------------------------------------------------------------------------


HOOKS = ["module_hook", "module_hook_in_place", "module_pre_hook", "global_hook",
         "global_pre_hook", "forward_patch"]


def _install(kind, target, doubles, calls):
    """Installs a hook (or patch) on ``target`` that counts its calls in ``calls`` and, if
    ``doubles``, doubles its output; returns the function that removes it."""

    def forward_hook(module, args, output):
        if module is target:
            calls.append(module)
            if doubles:
                return output * 2
        return None

    def in_place_hook(module, args, output):
        if module is target:
            calls.append(module)
            if doubles:
                output.mul_(2)  # the same tensor, other numbers: invisible to the recorder

    def pre_hook(module, args):
        if module is target:
            calls.append(module)
            if doubles:
                return (args[0] * 2, *args[1:])
        return None

    if kind == "module_hook":
        return target.register_forward_hook(forward_hook).remove
    if kind == "module_hook_in_place":
        return target.register_forward_hook(in_place_hook).remove
    if kind == "module_pre_hook":
        return target.register_forward_pre_hook(pre_hook).remove
    if kind == "global_hook":
        return nn_module.register_module_forward_hook(forward_hook).remove
    if kind == "global_pre_hook":
        return nn_module.register_module_forward_pre_hook(pre_hook).remove
    original = target.forward

    def patched(*args, **kwargs):
        calls.append(target)
        y = original(*args, **kwargs)
        return y * 2 if doubles else y

    target.forward = patched
    return lambda: target.__dict__.pop("forward")


@pytest.mark.parametrize("doubles", [False, True], ids=["counts", "doubles"])
@pytest.mark.parametrize("kind", HOOKS)
def test_hooks_and_patches_are_honoured(kind, doubles, random_models, generator, python_runs):
    x = torch.randn(1, 3, 64, 64, generator=generator)
    key = plan_key(x, torch.float32)
    model, plain = planned(random_models("resnet18"), torch.float32, x, python_runs)
    target = model.stages[1][0].convs[0]
    calls: list = []
    remove = _install(kind, target, doubles, calls)
    try:
        results = []
        for i in range(4):
            ys, in_python = run_counted(model, x, python_runs)
            assert in_python, f"call {i}: a plan ran past the {kind}"
            results.append(ys)
        assert len(calls) == 4, f"the {kind} ran {len(calls)} times in 4 calls"
        assert key not in model._plans.plans
        expected = plan_off(model, x)
    finally:
        remove()
    for ys in results:
        assert_same_bits(ys, expected, f"{kind}: ")
    if doubles:
        assert_differs(expected, plain, f"{kind}: ")
    else:
        assert_same_bits(expected, plain, f"{kind}: ")
    # Removed: a plan is recorded again and runs without it.
    ys = until_planned(model, x, python_runs)
    assert_same_bits(ys, plain, f"{kind} removed: ")
    n = len(calls)
    run(model, x)
    assert len(calls) == n


def test_hook_on_the_model_itself(random_models, generator, python_runs):
    """A forward hook on the whole model is called on every call and sees its outputs."""
    x = torch.randn(1, 3, 64, 64, generator=generator)
    model, plain = planned(random_models("resnet18"), torch.float32, x, python_runs)
    seen = []
    handle = model.register_forward_hook(lambda m, a, y: seen.append(y.clone()))
    try:
        for _ in range(3):
            ys, _ = run_counted(model, x, python_runs)
            assert_same_bits(ys, plain)
    finally:
        handle.remove()
    assert len(seen) == 3
    assert all(torch.equal(y, plain[0]) for y in seen)


# --- autograd ----------------------------------------------------------------------------------


def _forward_backward(model, x, weight, what):
    """Logits, and the gradients of ``(logits * weight).sum()`` (input's or parameters')."""
    for p in model.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_(what == "input")
    y = model(x)
    assert y.grad_fn is not None, "the output must carry a grad_fn while autograd records"
    (y * weight).sum().backward()
    if what == "input":
        return y.detach(), [x.grad]
    return y.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("what", ["parameters", "input"])
def test_autograd_runs_in_python_then_plan_returns(what, random_models, generator, python_runs):
    source = random_models("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=generator)
    key = plan_key(x, torch.float32)
    model, _ = planned(source, torch.float32, x, python_runs)
    weight = torch.randn(2, 10, generator=generator)
    if what == "parameters":
        model.requires_grad_(True)

    x2 = torch.randn(2, 3, 64, 64, generator=generator)
    for i in range(3):  # past the call that would record
        before = python_runs[model]
        y, grads = _forward_backward(model, x2, weight, what)
        assert python_runs[model] == before + 1, f"call {i}: a plan ran under autograd"
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PLAN_ENV, "never")
        y_off, grads_off = _forward_backward(model, x2, weight, what)
    assert torch.equal(y, y_off)
    assert len(grads) == len(grads_off)
    for g, g_off in zip(grads, grads_off, strict=True):
        assert torch.equal(g, g_off), relative_error(g, g_off)
    assert_within_bound(y, reference(source, x2, torch.float32)[0], torch.float32, "model")

    # Nothing requires grad any more: the plan runs again, grad mode on or off (the fast path,
    # not the raw op autograd ran: compared with the plan-off fast path).
    model.requires_grad_(False)
    ys = until_planned(model, x2, python_runs)
    assert key in model._plans.plans
    fast = plan_off(model, x2)
    assert_same_bits(ys, fast)
    assert_within_bound(ys[0], y, torch.float32, "model")
    before = python_runs[model]
    y_grad_mode = model(x2)  # grad mode on, nothing to record
    assert python_runs[model] == before and y_grad_mode.grad_fn is None
    assert_same_bits([y_grad_mode], fast)


# --- non-finite numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
def test_nan_input_skips_the_plan(dtype, random_models, generator, python_runs):
    source = random_models("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=generator)
    key = plan_key(x, dtype)
    model, _ = planned(source, dtype, x, python_runs)
    bad = torch.randn(2, 3, 64, 64, generator=generator)
    bad[0, 1, 17, 23] = float("nan")
    for _ in range(3):
        ys, in_python = run_counted(model, bad, python_runs)
        assert in_python, "a plan ran on a non-finite input"
        assert_same_bits(ys, plan_off(model, bad))
        assert_same_nonfinite(ys[0], reference(source, bad, dtype)[0], dtype)
    assert not torch.isfinite(ys[0][0]).any() and torch.isfinite(ys[0][1]).all()
    assert key in model._plans.plans, "a non-finite input must not drop the plan"
    good = torch.randn(2, 3, 64, 64, generator=generator)
    ys, in_python = run_counted(model, good, python_runs)
    assert not in_python
    assert_same_bits(ys, plan_off(model, good))


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
def test_infinite_weight_makes_no_plan(dtype, random_models, generator, python_runs):
    source = fresh_source(random_models, "resnet18")
    x = torch.randn(2, 3, 64, 64, generator=generator)
    key = plan_key(x, dtype)
    model, _ = planned(source, dtype, x, python_runs)
    with torch.no_grad():
        model.stages[2][0].convs[1].weight[3].fill_(float("inf"))
        source.layer3[0].conv2.weight[3].fill_(float("inf"))
    ref = reference(source, x, dtype)[0]
    expected = plan_off(copy.deepcopy(model), x)
    for i in range(5):
        ys, in_python = run_counted(model, x, python_runs)
        assert in_python, f"call {i}: a plan ran with an infinite weight"
        assert_same_bits(ys, expected, f"call {i}: ")
        assert_same_nonfinite(ys[0], ref, dtype, f"call {i}: ")
    assert key not in model._plans.plans
    assert model._plans.why_not.get(key), model._plans.why_not


# --- copies, casts and refresh -------------------------------------------------------------------


def _torch_save_load(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch_save"])
def test_copies_of_a_planned_model(how, random_models, generator, python_runs):
    x = torch.randn(2, 3, 64, 64, generator=generator)
    key = plan_key(x, torch.float32, stages=True)
    model, ys = planned(random_models("resnet50"), torch.float32, x, python_runs,
                        "forward_stages")
    old = model._plans.plans[key]
    copy_of = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
               "torch_save": _torch_save_load}[how](model)
    assert copy_of._plans is not model._plans and not copy_of._plans.plans
    assert model._plans.plans[key] is old, "copying must not touch the original's plan"
    for i in range(3):
        got, in_python = run_counted(copy_of, x, python_runs, "forward_stages")
        assert in_python == (i < 2), f"call {i} of the copy"
        assert_same_bits(got, ys, f"{how}, call {i}: ")
    assert copy_of._plans.plans[key].plan is not old.plan
    # The copy is independent: a write to its numbers drops its plan, not the original's.
    with torch.no_grad():
        copy_of.stages[0][0].convs[0].scale.mul_(2.0)
    changed, in_python = run_counted(copy_of, x, python_runs, "forward_stages")
    assert in_python
    assert_differs(changed, ys)
    got, in_python = run_counted(model, x, python_runs, "forward_stages")
    assert not in_python
    assert_same_bits(got, ys)


CASTS = {"bf16.float()": (torch.bfloat16, lambda m: m.float(), torch.float32),
         "bf16.to(float32)": (torch.bfloat16, lambda m: m.to(torch.float32), torch.float32),
         "fp32.to(bfloat16)": (torch.float32, lambda m: m.to(torch.bfloat16), torch.bfloat16)}


@pytest.mark.parametrize("cast", list(CASTS))
def test_casts_drop_the_plans(cast, random_models, generator, python_runs):
    if torch.bfloat16 not in capability.fast_dtypes():
        pytest.skip("no oneDNN bf16 on this CPU: the casts' targets would not plan")
    start, fn, end = CASTS[cast]
    x = torch.randn(1, 3, 64, 64, generator=generator)
    model, _ = planned(random_models("resnet18"), start, x, python_runs)
    assert model._plans.plans
    assert fn(model) is model
    assert not model._plans.plans, f"{cast} kept the plans"
    ys, in_python = run_counted(model, x, python_runs)
    assert in_python and ys[0].dtype == end
    assert_same_bits(ys, plan_off(copy.deepcopy(model), x))
    ys = until_planned(model, x, python_runs)
    assert list(model._plans.plans) == [plan_key(x, end)]
    assert_same_bits(ys, plan_off(model, x))


@pytest.mark.parametrize("dtype", FAST, ids=FAST_IDS)
def test_refresh_drops_the_plans(dtype, random_models, generator, python_runs):
    x = torch.randn(1, 3, 64, 64, generator=generator)
    model, ys = planned(random_models("resnet18"), dtype, x, python_runs)
    # A write that bypasses the version counter: only refresh() can make the model see it.
    with torch.no_grad():
        model.stages[0][1].convs[1].weight.data.mul_(-1.0)
    model.refresh()
    assert not model._plans.plans and not model._plans.why_not
    after, in_python = run_counted(model, x, python_runs)
    assert in_python
    assert_differs(after, ys)
    assert_same_bits(after, plan_off(copy.deepcopy(model), x))
    assert_same_bits(until_planned(model, x, python_runs), after)


# --- recording failures and the cache's size ------------------------------------------------------


def test_op_outside_the_fast_path_abandons_the_recording(random_models, generator, python_runs,
                                                         monkeypatch):
    attempts = []
    record = plan_module.PlanCache._record

    def counting(*args):
        attempts.append(1)
        return record(*args)

    monkeypatch.setattr(plan_module.PlanCache, "_record", staticmethod(counting))
    model = fuse(random_models("resnet18"), backend="cpu")
    model.stages[1][1].convs[0].backend = "aten"  # this conv runs the raw op: not recorded
    x = torch.randn(1, 3, 64, 64, generator=generator)
    key = plan_key(x, torch.float32)
    for i in range(6):
        ys, in_python = run_counted(model, x, python_runs)
        assert in_python, f"call {i}: a plan ran"
        assert_same_bits(ys, plan_off(model, x), f"call {i}: ")
    assert not model._plans.plans
    assert "outside the recorded ops" in model._plans.why_not[key], model._plans.why_not
    # Recorded on call 2, then again only after twice as many calls (call 6).
    assert len(attempts) == 2
    assert_near_reference(ys, reference(random_models("resnet18"), x, torch.float32),
                          torch.float32)


def test_at_most_max_plans_are_kept(random_models, generator, python_runs):
    model = fuse(random_models("resnet18"), backend="cpu")
    limit = plan_module.PlanCache.MAX_PLANS
    sizes = [(64, 64), (64, 72), (72, 64), (80, 64), (64, 80), (72, 72)]
    assert len(sizes) > limit
    inputs = [torch.randn(1, 3, h, w, generator=generator) for h, w in sizes]
    for x in inputs:
        for i in range(3):
            ys, in_python = run_counted(model, x, python_runs)
            assert in_python == (i < 2), f"{tuple(x.shape)} call {i}"
            assert_same_bits(ys, plan_off(model, x), f"{tuple(x.shape)} call {i}: ")
            assert len(model._plans.plans) <= limit
    assert list(model._plans.plans) == [plan_key(x, torch.float32) for x in inputs[-limit:]]
    for j, x in enumerate(inputs):  # evicted shapes run in Python, kept ones from their plans
        ys, in_python = run_counted(model, x, python_runs)
        assert in_python == (j < len(inputs) - limit), f"{tuple(x.shape)} again"
        assert_same_bits(ys, plan_off(model, x), f"{tuple(x.shape)} again: ")
        assert len(model._plans.plans) <= limit


# --- the C++ class -------------------------------------------------------------------------------


def _pool_plan():
    plan = torch.classes.resnet_fused.ForwardPlan()
    slot = plan.add_step("resnet_fused::max_pool2d", "", [None, (3, 3), (2, 2), (1, 1)], [0],
                         [0], -1)
    assert slot == 1
    return plan


def test_forward_plan_class(generator):
    x = torch.randn(2, 8, 13, 11, generator=generator).contiguous(memory_format=CL)
    source = torch.randn(5, generator=generator)

    plan = torch.classes.resnet_fused.ForwardPlan()
    with pytest.raises(RuntimeError, match=r"max_pool2d takes 4 arguments, got 2"):
        plan.add_step("resnet_fused::max_pool2d", "", [None, (3, 3)], [0], [0], -1)
    with pytest.raises(RuntimeError, match=r"slot 1 is not an earlier result"):
        plan.add_step("resnet_fused::max_pool2d", "", [None, (3, 3), (2, 2), (1, 1)], [0], [1],
                      -1)
    with pytest.raises(RuntimeError, match=r"position 4 out of range"):
        plan.add_step("resnet_fused::max_pool2d", "", [None, (3, 3), (2, 2), (1, 1)], [4], [0],
                      -1)
    with pytest.raises(RuntimeError, match=r"mutated argument must be an activation"):
        plan.add_step("resnet_fused::max_pool2d", "", [None, (3, 3), (2, 2), (1, 1)], [0], [0],
                      1)

    plan = _pool_plan()
    with pytest.raises(RuntimeError, match=r"not finished"):
        plan.run(x, [source])
    with pytest.raises(RuntimeError, match=r"output slot 2 is not a result"):
        plan.finish([2], [source])
    plan = _pool_plan()
    plan.finish([1], [source])
    assert plan.steps() == 1
    with pytest.raises(RuntimeError, match=r"already finished"):
        plan.finish([1], [source])
    with pytest.raises(RuntimeError, match=r"already finished"):
        plan.add_step("resnet_fused::max_pool2d", "", [None, (3, 3), (2, 2), (1, 1)], [0], [0],
                      -1)

    (y,) = plan.run(x, [source])
    expected = MAX_POOL2D(x, [3, 3], [2, 2], [1, 1])
    assert torch.equal(y, expected)
    assert torch.equal(y, torch.max_pool2d(x, 3, 2, 1))
    # Any other sources list: no outputs (the caller then runs in Python).
    assert plan.run(x, [source.clone()]) == []
    assert plan.run(x, []) == []
    assert plan.run(x, [source, source]) == []
    with torch.no_grad():
        source.add_(1.0)  # same tensor, new version
    assert plan.run(x, [source]) == []
    source2 = torch.randn(5, generator=generator, requires_grad=True)
    plan2 = _pool_plan()
    plan2.finish([1], [source2])
    assert plan2.run(x, [source2]) == [], "autograd would record: no outputs"
    with torch.no_grad():
        (y2,) = plan2.run(x, [source2])
    assert torch.equal(y2, expected)


def test_bad_policy_is_named(random_models, generator, monkeypatch):
    model = fuse(random_models("resnet18"), backend="cpu")
    x = torch.randn(1, 3, 32, 32, generator=generator)
    monkeypatch.setenv(PLAN_ENV, "bogus")
    with pytest.raises(ValueError, match=PLAN_ENV), torch.no_grad():
        model(x)
    monkeypatch.setenv(PLAN_ENV, " Never ")  # trimmed, any case
    assert plan_module.policy() == "never"
    ys = run(model, x)
    monkeypatch.delenv(PLAN_ENV)
    assert plan_module.policy() == "auto"
    assert_same_bits(ys, run(model, x))


def test_failed_recording_forward_leaves_no_recorder(random_models, generator, python_runs,
                                                     monkeypatch):
    """An exception inside the recording forward (here from the recorder itself, on the 2nd
    call) ends the recording: later calls, on this model or another, record and run normally."""
    model = fuse(random_models("resnet18"), backend="cpu")
    x = torch.randn(1, 3, 64, 64, generator=generator)
    append = plan_module._Recorder.append
    appended = []

    def failing(self, *args):
        appended.append(1)
        if len(appended) == 5:
            raise RuntimeError("recording failed")
        return append(self, *args)

    monkeypatch.setattr(plan_module._Recorder, "append", failing)
    run(model, x)
    with pytest.raises(RuntimeError, match="recording failed"):
        run(model, x)
    monkeypatch.setattr(plan_module._Recorder, "append", append)
    assert getattr(plan_module._local, "recorder", None) is None
    assert not model._plans.plans
    ys = until_planned(model, x, python_runs)
    assert_same_bits(ys, plan_off(model, x))
    other = fuse(random_models("resnet18"), backend="cpu")
    assert_same_bits(until_planned(other, x, python_runs), ys)


def test_recording_keeps_no_activation_alive(generator):
    """The recorder forgets an activation's id when the tensor is freed (so a later tensor with
    the same id is not taken for it) and holds none alive itself."""
    x = torch.randn(1, 8, 9, 9, generator=generator).contiguous(memory_format=torch.channels_last)
    recorder = plan_module._Recorder(x)
    pool = plan_module.RecordedOp(torch.ops.resnet_fused.max_pool2d.default, (0,))
    with torch.inference_mode():
        y = pool(x, [3, 3], [2, 2], [1, 1])
        recorder.append(pool, (x, [3, 3], [2, 2], [1, 1]), y)
        z = pool(y, [3, 3], [2, 2], [1, 1])
        recorder.append(pool, (y, [3, 3], [2, 2], [1, 1]), z)
    assert recorder.slot_of(y) == 1 and recorder.slot_of(z) == 2
    y_id = id(y)
    del y
    assert y_id not in recorder.slots
    assert recorder.slot_of(z) == 2 and recorder.failed is None


@pytest.mark.parametrize("setting", ["auto", "never", "bogus"])
def test_info_reports_the_setting(setting, monkeypatch):
    from resnet_fused import info

    monkeypatch.setenv("RESNET_FUSED_FORWARD_PLAN", setting)
    row = info._plan_row()
    expected = {"auto": "replayed from C++", "never": "every forward runs in Python",
                "bogus": "invalid setting: RESNET_FUSED_FORWARD_PLAN"}[setting]
    assert expected in row
