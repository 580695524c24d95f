"""Whole ResNet-50 on a GPU, from torchvision and timm through fuse(), against eager torchvision.

fp32/fp16/bf16 at batch 1, 7 and 256 (224x224, random weights with non-trivial BatchNorm
statistics) for every GPU backend, and, for each backend, the same fused model under
torch.compile(fullgraph=True), replayed from a CUDA graph, and on a non-default stream. The
reference is the eager source model in fp32 with TF32 off (fp16/bf16 runs take the same
low-precision weights), compared under the whole-model bounds.

Skipped without a GPU. The ``triton`` marker puts the Triton and ``auto`` cases in the GPU
session's Triton step (after its compile warm-up).
"""

from __future__ import annotations

import pytest
import torch

import resnet_fused
from resnet_fused.testing import randomize_batchnorm_, relative_error, tolerance, try_import

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _backend_param(name: str):
    marks = [pytest.mark.triton] if name in ("triton", "auto") else []
    return pytest.param(name, marks=marks, id=name)


BACKENDS = [_backend_param(b) for b in ("cuda", "triton", "auto")]


@pytest.fixture(autouse=True)
def _triton_default_configs(monkeypatch):
    # Correctness, not speed: each Triton family's default config (still verified per shape).
    monkeypatch.setenv("RESNET_FUSED_TRITON_AUTOTUNE", "0")


def _source(name: str, generator):
    if name == "torchvision":
        tv, why = try_import("torchvision")
        if tv is None:
            pytest.skip(why)
        model = tv.models.resnet50()
    else:
        timm, why = try_import("timm")
        if timm is None:
            pytest.skip(why)
        model = timm.create_model("resnet50", pretrained=False)
    return randomize_batchnorm_(model, generator).eval().cuda()


def _available(backend: str) -> None:
    if backend != "auto" and resnet_fused.backend_status()[backend] != "available":
        pytest.skip(f"{backend}: {resnet_fused.backend_status()[backend]}")


@torch.no_grad()
def _reference(model, x, dtype):
    low = model.to(dtype)  # the fused model is built from these same low-precision weights
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = low.float()(x.to(dtype).float())
    return ref


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 7, 256])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_resnet50_matches_eager(source, backend, dtype, batch, generator):
    _available(backend)
    dt = DTYPES[dtype]
    model = _source(source, generator)
    fused = resnet_fused.fuse(model, backend=backend, dtype=dt)
    x = torch.randn(batch, 3, 224, 224, generator=generator).cuda()
    with torch.no_grad():
        y = fused(x)
    ref = _reference(model, x, dt)
    assert y.dtype == dt and y.shape == ref.shape
    err = relative_error(y.float(), ref)
    assert err <= tolerance(dt, "model", "cuda"), f"{source} {backend} {dtype} bs{batch}: {err:.3g}"


def _graph_replay(fused, x, new_x):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (and per-shape choice) off the capture
        for _ in range(2):
            fused(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = fused(x)
    x.copy_(new_x)
    static_y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    return static_y


@pytest.mark.parametrize("mode", ["compile-fullgraph", "cuda-graph", "side-stream"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet50_modes(backend, mode, generator):
    _available(backend)
    model = _source("torchvision", generator)
    fused = resnet_fused.fuse(model, backend=backend, dtype=torch.bfloat16)
    x = torch.randn(7, 3, 224, 224, generator=generator).cuda().to(torch.bfloat16)
    new_x = torch.randn(7, 3, 224, 224, generator=generator).cuda().to(torch.bfloat16)
    bound = tolerance(torch.bfloat16, "op", "cuda")
    with torch.no_grad():
        eager, expected = fused(x), fused(new_x)
        if mode == "compile-fullgraph":
            torch._dynamo.reset()
            compiled = torch.compile(fused, fullgraph=True)
            got = compiled(new_x)
            torch._dynamo.reset()
        elif mode == "cuda-graph":
            got = _graph_replay(fused, x.clone(), new_x)
        else:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                inp = torch.empty_like(new_x)
                inp.copy_(new_x)  # produced on the side stream too
                got = fused(inp)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
    assert torch.isfinite(got).all()
    assert relative_error(got.float(), expected.float()) <= bound
    assert relative_error(expected.float(), eager.float()) > 1e-2  # the new input really counted
    ref = _reference(model, new_x.float(), torch.bfloat16)
    assert relative_error(got.float(), ref) <= tolerance(torch.bfloat16, "model", "cuda")


# --- never silent on the GPU: gradients and NaN --------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet50_gradients(backend, dtype, generator):
    """Input, stem, classifier gradients against the source model taking the fused model's ReLU
    and max-pool decisions (resnet_fused.testing.decisions), in fp32 without TF32 (tests/
    test_finetune.py explains the replay)."""
    from resnet_fused.testing import no_tf32
    from resnet_fused.testing.decisions import (
        assert_all_replayed,
        record_decisions,
        replay_decisions,
    )

    _available(backend)
    dt = DTYPES[dtype]
    model = _source("torchvision", generator)
    fused = resnet_fused.fuse(model, backend=backend, dtype=dt).requires_grad_(True)
    x = torch.randn(4, 3, 96, 96, generator=generator).cuda()
    target = torch.tensor([1, 5, 9, 0], device="cuda")

    def grads(m, inp, params):
        inp = inp.clone().requires_grad_()
        loss = torch.nn.functional.cross_entropy(m(inp).float(), target)
        return torch.autograd.grad(loss, [inp, *params])

    with no_tf32():
        with record_decisions(fused) as decisions:
            got = grads(fused, x.to(dt), [fused.stem.weight, fused.fc.weight])
        reference = replay_decisions(model.to(dt).float(), decisions)
        want = grads(reference, x.to(dt).float(), [reference.conv1.weight,
                                                  reference.fc.weight])
    assert_all_replayed(reference)
    for what, g, w in zip(("input", "conv1.weight", "fc.weight"), got, want, strict=True):
        err = relative_error(g.float(), w)
        assert err <= tolerance(dt, "model"), f"{backend} {dtype} {what}: {err:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet50_keeps_nan(backend, generator):
    _available(backend)
    model = _source("torchvision", generator)
    fused = resnet_fused.fuse(model, backend=backend, dtype=torch.bfloat16)
    x = torch.randn(3, 3, 96, 96, generator=generator).cuda()
    x[1, 0, 30, 40] = float("nan")
    x[2, 2, 5, 5] = float("inf")
    with torch.no_grad():
        y = fused(x.to(torch.bfloat16))
        ref = model.float()(x)
    assert torch.isfinite(ref[0]).all() and not torch.isfinite(ref[1]).any()
    assert torch.equal(torch.isfinite(y), torch.isfinite(ref)), (
        f"{backend}: non-finite pattern differs from eager")
