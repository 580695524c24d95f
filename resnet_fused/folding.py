"""BatchNorm -> per-channel fp32 ``scale``/``shift`` for the fused epilogue.

An eval-mode BatchNorm after a convolution is exactly ``y = conv(x) * scale + shift`` with

    scale = gamma / sqrt(running_var + eps)
    shift = beta - running_mean * scale   (+ conv_bias * scale when the conv has a bias)

computed in fp32 (float64 internally) whatever the model's dtype. The conv weights are left
untouched, so fp16/bf16 weights stay bit-identical to the reference model's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_FROZEN_BN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def is_frozen_batchnorm(module: nn.Module) -> bool:
    """True for a ``FrozenBatchNorm2d`` (torchvision's ``torchvision.ops.FrozenBatchNorm2d``, the
    BatchNorm of its detection backbones, or timm's): recognised by its class name and its four
    buffers, so neither library needs to be installed."""
    return (type(module).__name__ == "FrozenBatchNorm2d" and hasattr(module, "eps")
            and all(isinstance(module._buffers.get(b), Tensor) for b in _FROZEN_BN_BUFFERS))


def is_batchnorm(module: nn.Module, dims: int | None = None) -> bool:
    """True for what :func:`fold_batchnorm` folds: a torch BatchNorm (of ``dims`` spatial dims,
    e.g. 2 for ``nn.BatchNorm2d``, when given) or a FrozenBatchNorm2d."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        kind = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}.get(dims)
        return kind is None or isinstance(module, kind)
    return dims in (None, 2) and is_frozen_batchnorm(module)


def fold_batchnorm(
    bn: nn.Module, conv_bias: Tensor | None = None, name: str = "bn"
) -> tuple[Tensor, Tensor]:
    """fp32 ``(scale, shift)`` equal to ``bn`` in eval mode (after a conv with ``conv_bias``).

    ``bn``: a torch BatchNorm or a ``FrozenBatchNorm2d`` (always in eval form). Handles
    ``affine=False`` (gamma = 1, beta = 0) and any ``eps``. Refuses a BatchNorm without running
    statistics (``track_running_stats=False``), whose eval output depends on the batch.
    """
    if not is_batchnorm(bn):
        raise TypeError(f"{name}: expected a BatchNorm module (or FrozenBatchNorm2d), got "
                        f"{type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"{name}: BatchNorm has no running statistics (track_running_stats=False), so its "
            "eval-mode output depends on the batch and cannot be folded into a scale and shift"
        )
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    shift = beta - mean * scale
    if conv_bias is not None:
        shift = shift + conv_bias.detach().double() * scale
    return scale.float().contiguous(), shift.float().contiguous()


def fold_scale(weight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight * scale`` per output channel (dim 0), computed in fp32 and rounded once to
    ``dtype``: the folded weight of the CPU fast path's direct and 1x1 convolutions. In fp32 that
    changes each weight by at most half an ulp; in bf16 it is one more rounding of each weight."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (weight.float() * scale.float().view(shape)).to(dtype)
