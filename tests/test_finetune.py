"""Fused models under autograd: input gradients and frozen-BatchNorm fine-tuning.

A fused model is the source model in eval mode, so its gradients are the source model's eval-mode
gradients (BatchNorm frozen): for saliency maps and adversarial inputs (gradients of the input),
and for fine-tuning the convs and the classifier (gradients of the parameters). Checked:

* every gradient against the source model in higher precision (float64 for float32, float32 for
  bfloat16/float16), with the whole-model bound of the dtype; on the CPU fast path's backend
  (``cpu``/``auto``), ``aten``, and Triton under the interpreter. A gradient jumps where a ReLU's
  input crosses 0 (or two max-pool inputs swap), and through 20-50 ReLUs some value lands next to
  that edge, on either side depending on rounding: eager PyTorch's own float32 gradient then
  differs from float64's by up to 1e-2 on some random draws. So the reference takes the fused
  model's side of each edge (``resnet_fused.testing.decisions``) and the
  comparison is of the smooth remainder (docs/design.md);
* an SGD step on the fused model gives what the same step gives the source model, and the CPU
  fast path's prepared weights follow the update;
* with nothing to record (``torch.no_grad``, ``inference_mode``, or nothing requiring grad) the
  fast path runs, never the raw op;
* what a fused model refuses, at once and saying why: ``train(True)``, a cast to an unsupported
  dtype, ``torch.jit.trace``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnet_fused
from resnet_fused import fuse
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.testing import randomize_batchnorm_, relative_error, tolerance, try_import
from resnet_fused.testing.decisions import (
    assert_all_replayed,
    record_decisions,
    replay_decisions,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def models():
    generator = torch.Generator().manual_seed(2606)
    cache = {}

    def get(name):
        if name not in cache:
            model = getattr(resnet_fused, name)(num_classes=NUM_CLASSES)
            randomize_batchnorm_(model, generator)
            with torch.no_grad():
                model.fc.bias.copy_(torch.randn(NUM_CLASSES, generator=generator))
            cache[name] = model.eval()
        return cache[name]

    return get


def paired_parameters(fused, model):
    """(name, fused parameter, source parameter) for every conv weight and the classifier."""
    pairs = [("conv1.weight", fused.stem.weight, model.conv1.weight)]
    for i, stage in enumerate(fused.stages):
        source_stage = getattr(model, f"layer{i + 1}")
        for j, block in enumerate(stage):
            source = source_stage[j]
            for k, conv in enumerate(block.convs):
                pairs.append((f"layer{i + 1}.{j}.conv{k + 1}.weight", conv.weight,
                              getattr(source, f"conv{k + 1}").weight))
            if block.skip is not None:
                pairs.append((f"layer{i + 1}.{j}.downsample.0.weight", block.skip.weight,
                              source.downsample[0].weight))
    pairs += [("fc.weight", fused.fc.weight, model.fc.weight),
              ("fc.bias", fused.fc.bias, model.fc.bias)]
    return pairs


def loss_and_grads(model, x, target, params=()):
    """Cross-entropy's gradients with respect to the input and ``params``."""
    x = x.clone().requires_grad_()
    loss = F.cross_entropy(model(x).float(), target)
    grads = torch.autograd.grad(loss, [x, *params])
    return loss.detach(), grads[0], grads[1:]


def _triton_interpreted() -> bool:
    module, _ = try_import("resnet_fused.triton.conv_bn_act")
    if module is None or torch.cuda.is_available():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(module._conv_bn_act_kernel, InterpretedFunction)


CASES = [("cpu", "resnet18"), ("cpu", "resnet50"), ("auto", "resnet50"), ("aten", "resnet18"),
         pytest.param("triton", "resnet18", marks=[
             pytest.mark.skipif(not _triton_interpreted(), reason="needs Triton's interpreter"),
             pytest.mark.interpreter])]


@pytest.mark.parametrize(("backend", "name"), CASES)
def test_gradients_match_the_source_model(backend, name, models, generator):
    model = models(name)
    fused = fuse(model, backend=backend).requires_grad_(True)
    size = 32 if backend == "triton" else 64
    x = torch.randn(2, 3, size, size, generator=generator)
    target = torch.tensor([1, 7])
    pairs = paired_parameters(fused, model)
    with record_decisions(fused) as decisions:
        loss, d_input, d_params = loss_and_grads(fused, x, target, [p for _, p, _ in pairs])
    model64 = replay_decisions(model, decisions).double()
    pairs64 = paired_parameters(fused, model64)
    loss64, d_input64, d_params64 = loss_and_grads(model64, x.double(), target,
                                                   [p for _, _, p in pairs64])
    assert_all_replayed(model64)
    bound = tolerance(torch.float32, "model")
    assert abs(loss.item() - loss64.item()) <= bound * abs(loss64.item())
    assert relative_error(d_input, d_input64) <= bound, "input gradient"
    for (what, *_), got, want in zip(pairs, d_params, d_params64, strict=True):
        err = relative_error(got, want)
        assert err <= bound, f"{what}: relative error {err:.3g} > {bound:g}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_low_precision_gradients(name, dtype, models, generator):
    """Against the float32 source model taking the fused model's ReLU and max-pool decisions,
    with the whole-model bound of the dtype."""
    model = models(name)
    fused = fuse(model, dtype=dtype).requires_grad_(True)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    target = torch.tensor([4, 2])
    with record_decisions(fused) as decisions:
        _, d_input, (d_fc, d_stem) = loss_and_grads(fused, x.to(dtype), target,
                                                    [fused.fc.weight, fused.stem.weight])
    reference = replay_decisions(model, decisions)
    _, d_input32, (d_fc32, d_stem32) = loss_and_grads(reference, x, target,
                                                      [reference.fc.weight,
                                                       reference.conv1.weight])
    assert_all_replayed(reference)
    bound = tolerance(dtype, "model")
    for what, got, want in (("input", d_input, d_input32), ("fc.weight", d_fc, d_fc32),
                            ("conv1.weight", d_stem, d_stem32)):
        assert got.dtype == dtype, what
        err = relative_error(got, want)
        assert err <= bound, f"{what}: relative error {err:.3g} > {bound:g} ({dtype})"


def test_sgd_step_matches_the_source_model(models, generator, monkeypatch):
    """One frozen-BN fine-tuning step on both models; then both forward the same, and the fused
    model's fast path (prepared weights) runs with the updated numbers."""
    model = copy.deepcopy(models("resnet18"))
    for m in model.modules():  # frozen BatchNorm: statistics and affine numbers stay as they are
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(False)
    fused = fuse(model).requires_grad_(True)
    x = torch.randn(4, 3, 48, 48, generator=generator)
    target = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        fused(x)  # prepares the fast path's weights from the numbers before the step
    for m in (model, fused):
        optimizer = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        F.cross_entropy(m(x), target).backward()
        optimizer.step()
    for what, mine, theirs in paired_parameters(fused, model):
        assert relative_error(mine, theirs) <= 1e-5, what
    from resnet_fused import ops

    def refuse(*args, **kwargs):
        raise AssertionError("the raw op ran where the CPU fast path was expected")

    monkeypatch.setattr(ops, "conv_bn_act", refuse)
    with torch.no_grad():
        y = fused(x)
        ref = copy.deepcopy(model).double()(x.double())
    assert relative_error(y, ref) <= tolerance(torch.float32, "model")


def test_fused_conv_module_gradients(generator):
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True)
    bn = randomize_batchnorm_(nn.BatchNorm2d(16), generator).eval()
    fused = FusedConvBNAct.from_conv_bn(conv, bn, relu=True, backend="cpu",
                                        dtype=torch.float32, name="conv")
    fused.weight.requires_grad_(True)
    x = torch.randn(2, 8, 9, 10, generator=generator, requires_grad=True)
    residual = torch.randn(2, 16, 5, 5, generator=generator, requires_grad=True)
    grad = torch.randn(2, 16, 5, 5, generator=generator)
    fused(x, residual).backward(grad)
    ref_conv = copy.deepcopy(conv).double()
    xr, rr = x.detach().double().requires_grad_(), residual.detach().double().requires_grad_()
    torch.relu(bn.double()(ref_conv(xr)) + rr).backward(grad.double())
    bound = tolerance(torch.float32, "op")
    assert relative_error(x.grad, xr.grad) <= bound
    assert relative_error(residual.grad, rr.grad) <= bound
    assert relative_error(fused.weight.grad, ref_conv.weight.grad) <= bound


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "nothing_requires_grad"])
def test_fast_path_when_nothing_is_recorded(mode, models, generator, no_raw_op):
    """Parameters that require grad cost nothing where no graph is recorded."""
    model = models("resnet50")
    fused = fuse(model)
    if mode != "nothing_requires_grad":
        fused.requires_grad_(True)
    x = torch.randn(1, 3, 64, 64, generator=generator)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
               "nothing_requires_grad": torch.enable_grad}[mode]
    with context():
        y = fused(x)
    assert not y.requires_grad
    ref = copy.deepcopy(model).double()(x.double())
    assert relative_error(y, ref) <= tolerance(torch.float32, "model")


def test_parameters_are_the_convs_and_the_classifier(models):
    model = models("resnet50")
    fused = fuse(model)
    assert not any(p.requires_grad for p in fused.parameters()), "fuse() returns it frozen"
    names = {n for n, _ in fused.named_parameters()}
    assert len(names) == 53 + 2  # every conv weight, fc.weight, fc.bias
    assert sum(p.numel() for p in fused.parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if "bn" not in n
        and "downsample.1" not in n)
    assert all(b.requires_grad is False for b in fused.buffers())


# --- refused at once, with the reason -------------------------------------------------------------


def test_train_mode_is_refused(models):
    fused = fuse(models("resnet18"))
    with pytest.raises(RuntimeError, match=r"BatchNorms are folded.*requires_grad_"):
        fused.train()
    with pytest.raises(RuntimeError, match="batch statistics cannot be computed"):
        fused.train(True)
    assert fused.training is False
    assert fused.eval() is fused and fused.train(False) is fused
    holder = nn.Sequential(fused, nn.Identity())
    with pytest.raises(RuntimeError, match="training mode"):
        holder.train()


@pytest.mark.parametrize("cast", [lambda m: m.double(), lambda m: m.to(torch.float64),
                                  lambda m: m.to("cpu", torch.float64),
                                  lambda m: m.type(torch.float64)],
                         ids=["double", "to-dtype", "to-device-dtype", "type"])
def test_unsupported_casts_fail_at_the_cast(cast, models, generator):
    fused = fuse(models("resnet18"))
    x = torch.randn(1, 3, 32, 32, generator=generator)
    with torch.no_grad():
        before = fused(x)
    with pytest.raises(TypeError, match=r"cannot compute in torch.float64.*fuse\(model, dtype"):
        cast(fused)
    with pytest.raises(TypeError, match=r"cannot compute in torch\.float64"):
        cast(fused.stem)
    assert fused.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(fused(x), before, rtol=0, atol=0)


def test_supported_casts_still_work(models, generator):
    fused = fuse(models("resnet18"))
    x = torch.randn(1, 3, 32, 32, generator=generator)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        fused = fused.to(dtype)
        assert fused.dtype == dtype and fused.stem.scale.dtype == torch.float32
        with torch.no_grad():
            assert fused(x).dtype == dtype


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # the point here
def test_jit_trace_names_the_supported_routes(models, generator):
    fused = fuse(models("resnet18"))
    x = torch.randn(1, 3, 32, 32, generator=generator)
    with pytest.raises(RuntimeError, match=r"torch\.export.*torch\.compile"):
        torch.jit.trace(fused, x)
    exported = torch.export.export(fused, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), fused(x), rtol=1e-5, atol=1e-5)
