"""One frozen-BatchNorm fine-tuning step, side by side in one interleaved run (CPU).

A training step as detection and transfer-learning backbones take it: forward, cross-entropy,
backward, SGD with momentum over the conv weights and the classifier, BatchNorm frozen (eval
mode, its numbers fixed). Variants:

``eager``      the source model in eval mode, channels_last, BatchNorm's parameters frozen
``fused-cpu``  ``fuse(model).requires_grad_(True)``: the convs run the raw op, whose backward is
               registered (resnet_fused/autograd.py)
``compile``    ``torch.compile`` of ``eager`` (with ``--bench-compile yes``: minutes to build)

Each variant's first step is checked before anything is timed: its loss and its classifier
gradient against the source model in higher precision (float64 for float32, float32 for
bfloat16), with the whole-model bound. The classifier's gradient depends only on the forward
(softmax error times the pooled features), so it is a well-conditioned check of a training step;
tests/test_finetune.py checks every gradient. Then rounds of one step per variant, the order
rotated each round; every round's time per variant is in ``extra_info["side_by_side"]``.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F
from interleaved import record, run_rounds
from torch import nn

from resnet_fused import bench, fuse
from resnet_fused.testing import reference_dtype


def _frozen_bn_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    eager = copy.deepcopy(model).to(dtype).to(memory_format=torch.channels_last).eval()
    eager.requires_grad_(True)
    for m in eager.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.requires_grad_(False)
    return eager


def _build(name: str, model: nn.Module, dtype: torch.dtype) -> nn.Module:
    if name == "eager":
        return _frozen_bn_copy(model, dtype)
    if name == "fused-cpu":
        return fuse(model, dtype=dtype).requires_grad_(True)
    if name == "compile":
        return torch.compile(_frozen_bn_copy(model, dtype))
    raise ValueError(f"unknown fine-tuning variant {name!r}")


@torch.no_grad()
def _reference(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    """Loss and d loss / d fc.weight of the source model in the reference precision."""
    rd = reference_dtype(x.dtype)
    ref = copy.deepcopy(model).to(rd)
    features = ref.forward_features(x.to(rd))
    logits = ref.fc(features)
    loss = F.cross_entropy(logits, target)
    error = torch.softmax(logits, 1) - F.one_hot(target, logits.shape[1]).to(rd)
    return loss, error.t() @ features / x.shape[0]


def _classifier(module: nn.Module) -> nn.Linear:
    return getattr(module, "_orig_mod", module).fc


def test_finetune_step(benchmark, bench_config, model_cache, finetune_step):
    model_name, batch, dtype_name = finetune_step
    device = bench_config.device
    if device.type != "cpu":
        pytest.skip("the interleaved fine-tuning comparison is the CPU suite's")
    dtype = bench.DTYPES[dtype_name]
    names = ["eager", "fused-cpu"] + (["compile"] if bench_config.compile else [])
    model = model_cache.model(model_name)
    x = bench.make_input(batch, dtype, device)
    target = torch.randint(0, _classifier(model).out_features, (batch,),
                           generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grad = _reference(model, x, target)
    benchmark.group = f"finetune step {model_name} bs{batch} {dtype_name}"
    benchmark.extra_info.update(model=model_name, batch=batch, dtype=dtype_name,
                                variant="finetune-side-by-side", variants=names,
                                device=str(device), threads=torch.get_num_threads(),
                                step="forward + cross-entropy + backward + SGD(momentum 0.9)")
    steps, info = {}, {}
    try:
        for name in names:
            start = time.perf_counter()
            module = _build(name, model, dtype)
            params = [p for p in module.parameters() if p.requires_grad]
            optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
            loss = F.cross_entropy(module(x).float(), target)
            loss.backward()
            err_loss = bench.check_output(f"{name} loss", loss.detach().view(1),
                                          ref_loss.view(1), dtype, device)
            err_grad = bench.check_output(f"{name} fc.weight gradient",
                                          _classifier(module).weight.grad, ref_grad, dtype,
                                          device)
            info[name] = {"loss_rel_error": err_loss, "fc_grad_rel_error": err_grad,
                          "setup_s": time.perf_counter() - start}

            def step(module=module, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(module(x).float(), target).backward()
                optimizer.step()

            steps[name] = step
        rounds = bench_config.rounds if bench_config.enabled else 1
        times, busy = run_rounds(benchmark, steps, rounds, bench_config.warmup, device)
        record(benchmark, info, times, busy, batch)
    finally:
        steps.clear()
        if "compile" in names:
            torch._dynamo.reset()
