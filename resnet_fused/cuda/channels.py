"""Input channels padded for the CUDA kernels' 16-byte rows, the weight's once.

The CUDA implicit-GEMM kernels (mma_sync and the sm_90a CUTLASS ones) read channels in 16-byte
vectors, so a conv whose C_in is not a multiple of 16 bytes' worth of elements (ResNet's stem:
3 channels) runs on copies of input and weight zero-padded to the next multiple (3 -> 8 in
fp16/bf16): zero channels times zero weights add nothing, exactly. The op alone must pad both on
every call; a fused conv (:class:`resnet_fused.fused.FusedConvBNAct`) keeps its weight padded
(:class:`PaddedWeight`) for as long as the weight is unchanged, and pads only the input per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Bytes per channel vector the CUDA kernels load (csrc/cuda/conv_bn_act_kernel.cu's
# conv_bn_act_channel_alignment, csrc/sm90/conv_plan.h's kChannelAlignment).
_ROW_BYTES = 16


def aligned_channels(channels: int, dtype: torch.dtype) -> int:
    """``channels`` rounded up to a multiple of 16 bytes of ``dtype``."""
    per_row = _ROW_BYTES // torch.empty(0, dtype=dtype).element_size()
    return -(-channels // per_row) * per_row


def pad_channels(t: Tensor, channels: int) -> Tensor:
    """``t`` (N, C, H, W) with zero channels appended up to ``channels``; same memory format,
    differentiable (the gradient of the appended channels is dropped)."""
    return F.pad(t, (0, 0, 0, 0, 0, channels - t.shape[1]))


def needs_padding(x: Tensor, backend: str) -> int | None:
    """The channel count to pad a fused conv's input and weight to before the op, or None.

    CUDA tensors on the ``cuda`` and ``auto`` backends only: the Triton kernels mask the channels
    they do not have instead, so ``triton`` takes the tensors as they are."""
    if not x.is_cuda or backend not in ("cuda", "auto") or x.dim() != 4:
        return None
    channels = aligned_channels(x.shape[1], x.dtype)
    return channels if channels != x.shape[1] else None


class PaddedWeight:
    """A weight zero-padded to more input channels, made once and reused while the weight is the
    same tensor at the same version (any PyTorch write to it, or a new tensor in its place, makes
    a new copy). While autograd records the weight, or torch.compile traces, it pads per call
    instead, so gradients reach the weight itself."""

    def __init__(self) -> None:
        self._source: Tensor | None = None
        self._key: tuple | None = None
        self._padded: Tensor | None = None

    def get(self, weight: Tensor, channels: int) -> Tensor:
        if torch.compiler.is_compiling() or (weight.requires_grad and torch.is_grad_enabled()):
            return pad_channels(weight, channels)
        key = (weight.data_ptr(), -1 if weight.is_inference() else weight._version, channels)
        if weight is not self._source or key != self._key:
            self._padded = pad_channels(weight.detach(), channels)
            self._source, self._key = weight, key
        return self._padded

    def clear(self) -> None:
        self._source = self._key = self._padded = None
