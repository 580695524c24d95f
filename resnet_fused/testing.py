"""Numerics helpers shared by the tests, the benchmarks and ``python -m resnet_fused check``.

docs/design.md's policy: relative L2 error ``||y - ref|| / ||ref||`` against a higher-precision
reference, with random inputs, weights and non-trivial BatchNorm statistics (a freshly initialised
BatchNorm, mean 0 and var 1, hides folding bugs). NaN never passes.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
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


class FrozenBatchNorm2d(nn.Module):
    """A BatchNorm with fixed statistics and affine numbers, as detection backbones use (the
    same buffers and eval formula as torchvision's ``torchvision.ops.FrozenBatchNorm2d``), for
    tests on machines where torchvision does not import."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                            ("running_var", 1.0)):
            self.register_buffer(name, torch.full((num_features,), value))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.BatchNorm2d`` replaced by a :class:`FrozenBatchNorm2d`
    holding its numbers (the same eval-mode function)."""
    frozen = copy.deepcopy(model)
    for parent in list(frozen.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                new = FrozenBatchNorm2d(child.num_features, child.eps)
                with torch.no_grad():
                    new.weight.copy_(child.weight)
                    new.bias.copy_(child.bias)
                    new.running_mean.copy_(child.running_mean)
                    new.running_var.copy_(child.running_var)
                setattr(parent, name, new)
    return frozen


class FusedDecisions:
    """The discrete choices a fused model's forward made: each ReLU's mask (output > 0) in call
    order, and the max-pool's input (its argmax). See :func:`record_decisions`."""

    def __init__(self) -> None:
        self.masks: list[Tensor] = []
        self.pool_inputs: list[Tensor] = []


@contextlib.contextmanager
def record_decisions(fused: nn.Module) -> Iterator[FusedDecisions]:
    """Records :class:`FusedDecisions` of the fused model's forwards inside the block.

    A gradient through a ReLU jumps where its input crosses 0, and through a max-pool where two
    inputs swap: a value next to the edge lands on either side depending on the rounding, so
    even float32 gradients of a deep net can differ from float64's by far more than the forward
    does (eager PyTorch's too). :func:`replay_decisions` makes the reference take the fused
    model's side of every edge; the gradients left to compare are smooth functions."""
    from .fused import FusedConvBNAct

    decisions = FusedDecisions()

    def on_conv(module, args, kwargs, out):
        relu = kwargs.get("relu")
        if module.relu if relu is None else relu:
            decisions.masks.append(out.detach() > 0)

    hooks = [m.register_forward_hook(on_conv, with_kwargs=True) for m in fused.modules()
             if isinstance(m, FusedConvBNAct)]
    hooks.append(fused.maxpool.register_forward_hook(
        lambda module, args, out: decisions.pool_inputs.append(args[0].detach())))
    try:
        yield decisions
    finally:
        for h in hooks:
            h.remove()


class _Replay:
    """Recorded tensors handed out in order; knows whether all were used."""

    def __init__(self, tensors: list[Tensor]) -> None:
        self.tensors, self.used = tensors, 0

    def next(self, like: Tensor) -> Tensor:
        if self.used == len(self.tensors):
            raise AssertionError("the reference made more decisions than the fused model")
        t = self.tensors[self.used]
        self.used += 1
        if t.shape != like.shape:
            raise AssertionError(f"decision {self.used}: recorded {tuple(t.shape)}, the "
                                 f"reference is at {tuple(like.shape)} (calls out of order?)")
        return t


class _ReplayedReLU(nn.Module):
    def __init__(self, masks: _Replay) -> None:
        super().__init__()
        self.masks = masks

    def forward(self, x: Tensor) -> Tensor:
        return x * self.masks.next(x).to(x.dtype)


class _ReplayedMaxPool(nn.Module):
    def __init__(self, pool: nn.MaxPool2d, inputs: _Replay) -> None:
        super().__init__()
        self.pool = pool
        self.inputs = inputs

    def forward(self, x: Tensor) -> Tensor:
        p = self.pool
        _, index = F.max_pool2d(self.inputs.next(x).float(), p.kernel_size, p.stride,
                                p.padding, return_indices=True)
        return x.flatten(2).gather(2, index.flatten(2)).view(index.shape)


def replay_decisions(source: nn.Module, decisions: FusedDecisions) -> nn.Module:
    """A copy of the torchvision-style ``source`` model whose ReLUs apply the recorded masks and
    whose max-pool takes the recorded argmax: the same function wherever the fused model's
    forward is away from an edge. Its ReLUs must be called in the fused model's order, which
    they are in the models :func:`resnet_fused.fuse` takes."""
    replayed = copy.deepcopy(source)
    masks = _Replay(decisions.masks)
    for parent in list(replayed.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _ReplayedReLU(masks))
    pool_inputs = _Replay(decisions.pool_inputs)
    replayed.maxpool = _ReplayedMaxPool(replayed.maxpool, pool_inputs)
    replayed.replays = (masks, pool_inputs)
    return replayed


def assert_all_replayed(replayed: nn.Module) -> None:
    """Every recorded decision was taken by the reference (none left over)."""
    for replay in replayed.replays:
        assert replay.used == len(replay.tensors), (
            f"the reference took {replay.used} of {len(replay.tensors)} recorded decisions")


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
