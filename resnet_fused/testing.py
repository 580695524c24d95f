"""Numerics helpers shared by the tests, the benchmarks and ``python -m resnet_fused check``.

docs/design.md's policy: relative L2 error ``||y - ref|| / ||ref||`` against a higher-precision
reference, with random inputs, weights and non-trivial BatchNorm statistics (a freshly initialised
BatchNorm, mean 0 and var 1, hides folding bugs). NaN never passes.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

# (dtype, scope) -> bound on the relative L2 error; scope is "op" or "model".
# fp32 on CPU is checked against float64; fp16/bf16 against an fp32 composition.
TOLERANCES = {
    (torch.float32, "op"): 1e-5,
    (torch.float32, "model"): 1e-4,
    (torch.float16, "op"): 5e-3,
    (torch.float16, "model"): 2e-2,
    (torch.bfloat16, "op"): 1.5e-2,
    (torch.bfloat16, "model"): 5e-2,
}
# fp32 on a GPU may use TF32 tensor cores (when PyTorch's flags allow it).
TF32_TOLERANCE = 5e-3


def tolerance(dtype: torch.dtype, scope: str, device: torch.device | str = "cpu") -> float:
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        return TF32_TOLERANCE
    return TOLERANCES[(dtype, scope)]


def reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision a result in ``dtype`` is checked against (float64 for fp32, else fp32)."""
    return torch.float64 if dtype == torch.float32 else torch.float32


def relative_error(y: Tensor, ref: Tensor) -> float:
    """``||y - ref|| / ||ref||`` in float64; ``inf`` if ``y`` has a NaN/inf or the shapes differ."""
    if y.shape != ref.shape:
        return math.inf
    y64, ref64 = y.detach().double(), ref.detach().double()
    if not torch.isfinite(y64).all():
        return math.inf
    denom = ref64.norm().item()
    num = (y64 - ref64).norm().item()
    if denom == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / denom


def assert_within_bound(y: Tensor, ref: Tensor, dtype: torch.dtype, scope: str = "op",
                        what: str = "") -> None:
    """Asserts ``relative_error(y, ref) <= tolerance(dtype, scope)``, saying both if not."""
    err = relative_error(y, ref)
    bound = tolerance(dtype, scope)
    assert err <= bound, f"{what}relative error {err:.3g} > {bound:g} ({dtype}, {scope})"


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32``: test ids and table rows."""
    return str(dtype).removeprefix("torch.")


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Gives every BatchNorm random, non-trivial statistics and affine parameters, in place.

    running_mean ~ U(-0.5, 0.5), running_var ~ U(0.5, 2), gamma ~ U(0.5, 1.5), beta ~ U(-0.5, 0.5).
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features

            def draw(lo, hi, ref, n=n):
                return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(ref)

            if m.running_mean is not None:
                m.running_mean.copy_(draw(-0.5, 0.5, m.running_mean))
                m.running_var.copy_(draw(0.5, 2.0, m.running_var))
            if m.weight is not None:
                m.weight.copy_(draw(0.5, 1.5, m.weight))
                m.bias.copy_(draw(-0.5, 0.5, m.bias))
    return model


def random_bn_params(
    channels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """fp32 (scale, shift) of a random eval-mode BatchNorm (the ranges above, eps = 1e-5)."""
    bn = randomize_batchnorm_(nn.BatchNorm2d(channels), generator)
    from .folding import fold_batchnorm

    return fold_batchnorm(bn)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """fp32 convolutions and matmuls in IEEE fp32 (no TF32 tensor cores): references must be."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def try_import(name: str):
    """``(module, None)``, or ``(None, reason)`` when importing ``name`` fails for ANY reason.

    A torchvision built for another torch raises ``RuntimeError: operator torchvision::nms does
    not exist`` at import, not ImportError; optional integrations must treat that as "absent".
    """
    import importlib

    try:
        return importlib.import_module(name), None
    except Exception as e:
        return None, f"could not import {name!r}: {type(e).__name__}: {e}"


def import_or_skip(name: str):
    """Like ``pytest.importorskip``, but skips on any import failure, with the reason."""
    module, why = try_import(name)
    if module is None:
        import pytest

        pytest.skip(why)
    return module


@functools.cache
def resnet_conv_shapes(
    depths: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
    batch: int = 1,
    size: int = 224,
) -> tuple[tuple, ...]:
    """Every distinct conv of this package's ResNets at ``size`` x ``size``, found by running the
    models on the meta device: ``(input size, weight size, stride, padding, residual)`` tuples,
    where ``residual`` says the fused model adds the skip path in that conv (each block's last)."""
    from . import models

    shapes = set()
    for depth in depths:
        with torch.device("meta"):
            model = getattr(models, depth)().eval()
        takes_residual = set()
        for m in model.modules():
            last = getattr(m, "conv3", None) or (getattr(m, "conv2", None) if hasattr(m, "bn2")
                                                 else None)
            if last is not None:
                takes_residual.add(id(last))

        def hook(mod, args, _out, takes_residual=takes_residual):
            shapes.add((tuple(args[0].shape), tuple(mod.weight.shape), tuple(mod.stride),
                        tuple(mod.padding), id(mod) in takes_residual))

        hooks = [m.register_forward_hook(hook) for m in model.modules()
                 if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            model(torch.empty(batch, 3, size, size, device="meta"))
        for h in hooks:
            h.remove()
    return tuple(sorted(shapes))
