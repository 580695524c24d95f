"""Random models and BatchNorm numbers for checks: never a freshly initialised BatchNorm (mean 0,
var 1), which hides folding bugs; and the conv shapes of the package's ResNets.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import Tensor, nn


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


def random_bn_params(
    channels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """fp32 (scale, shift) of a random eval-mode BatchNorm (the ranges above, eps = 1e-5)."""
    bn = randomize_batchnorm_(nn.BatchNorm2d(channels), generator)
    from ..folding import fold_batchnorm

    return fold_batchnorm(bn)


@functools.cache
def resnet_conv_shapes(
    depths: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
    batch: int = 1,
    size: int = 224,
) -> tuple[tuple, ...]:
    """Every distinct conv of this package's ResNets at ``size`` x ``size``, found by running the
    models on the meta device: ``(input size, weight size, stride, padding, residual)`` tuples,
    where ``residual`` says the fused model adds the skip path in that conv (each block's last)."""
    from .. import models

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
