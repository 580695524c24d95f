"""Pooling and the classifier of fused models: the parts of a ResNet around its convolutions.

On the CPU, ``fuse()`` replaces

* the stem's ``nn.MaxPool2d`` with :class:`MaxPool`: ``resnet_fused::max_pool2d``, one
  channels_last pass without the int64 indices ``torch.max_pool2d`` also writes;
* a global ``nn.AdaptiveAvgPool2d(1)`` with :class:`GlobalAvgPool`:
  ``resnet_fused::global_avg_pool``, one pass over the NHWC activation with fp32 sums;
* the ``nn.Linear`` classifier with :class:`PackedLinear`: oneDNN's matmul with the weight
  reordered once per batch size (``torch.ops.mkldnn._linear_pointwise``), in dtypes the oneDNN
  fast path runs (:func:`resnet_fused.cpu.capability.fast_dtypes`).

Each falls back to the stock PyTorch function on other devices, dtypes and arguments, so the
modules are drop-in. The ops have fake implementations (``torch.compile``) and backward formulas
(the gradients eager pooling gives).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import capability
from .onednn import _fingerprint
from .plan import RecordedOp

__all__ = ["GlobalAvgPool", "MaxPool", "PackedLinear", "global_avg_pool", "max_pool2d"]


# Recorded into forward plans (.plan) when it runs on the fast path, as the convs are.
_MAX_POOL2D = RecordedOp(torch.ops.resnet_fused.max_pool2d.default, (0,))


def max_pool2d(x: Tensor, kernel_size, stride, padding) -> Tensor:
    """``torch.max_pool2d`` (dilation 1, floor mode) without indices; channels_last output."""
    return _MAX_POOL2D(x, list(kernel_size), list(stride), list(padding))


def global_avg_pool(x: Tensor) -> Tensor:
    """Mean over H and W: (N, C, H, W) -> (N, C), accumulated in fp32."""
    return torch.ops.resnet_fused.global_avg_pool(x)


@torch.library.register_fake("resnet_fused::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding):
    torch._check(input.dim() == 4, lambda: "max_pool2d: input must be 4-D (N, C, H, W)")
    n, c, h, w = input.shape
    ho = (h + 2 * padding[0] - kernel_size[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - kernel_size[1]) // stride[1] + 1
    return torch.empty((n, c, ho, wo), dtype=input.dtype, device=input.device,
                       memory_format=torch.channels_last)


@torch.library.register_fake("resnet_fused::global_avg_pool")
def _global_avg_pool_fake(input):
    torch._check(input.dim() == 4, lambda: "global_avg_pool: input must be 4-D (N, C, H, W)")
    return input.new_empty((input.shape[0], input.shape[1]))


# Backward formulas: the gradients eager PyTorch gives for the same pooling.


def _max_pool2d_setup(ctx, inputs, output) -> None:
    input, kernel_size, stride, padding = inputs
    ctx.args = (list(kernel_size), list(stride), list(padding))
    ctx.save_for_backward(input)


def _max_pool2d_backward(ctx, grad: Tensor):
    # The op keeps no indices; torch's own pooling finds the same maxima again (NaN wins there
    # too), so the gradient goes where eager max_pool2d's would.
    (input,) = ctx.saved_tensors
    kernel_size, stride, padding = ctx.args
    _, indices = torch.ops.aten.max_pool2d_with_indices(input, kernel_size, stride, padding)
    d_input = torch.ops.aten.max_pool2d_with_indices_backward(
        grad, input, kernel_size, stride, padding, [1, 1], False, indices)
    return d_input, None, None, None


def _global_avg_pool_setup(ctx, inputs, output) -> None:
    ctx.input_shape = inputs[0].shape


def _global_avg_pool_backward(ctx, grad: Tensor):
    n, c, h, w = ctx.input_shape
    return (grad / (h * w)).view(n, c, 1, 1).expand(n, c, h, w)


torch.library.register_autograd("resnet_fused::max_pool2d", _max_pool2d_backward,
                                setup_context=_max_pool2d_setup)
torch.library.register_autograd("resnet_fused::global_avg_pool", _global_avg_pool_backward,
                                setup_context=_global_avg_pool_setup)


def _autograd_if_recorded(x: Tensor):
    """Nothing while autograd records ``x`` (or torch.compile traces); otherwise below autograd,
    skipping the op's Python autograd kernel (~8 us a call on the 2-core development VM)."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and x.requires_grad):
        return contextlib.nullcontext()
    return torch._C._AutoDispatchBelowAutograd()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class MaxPool(nn.Module):
    """``nn.MaxPool2d(kernel_size, stride, padding)`` (dilation 1, floor mode, no indices)."""

    def __init__(self, kernel_size, stride, padding) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)

    @classmethod
    def convertible(cls, module: nn.Module) -> bool:
        return (type(module) is nn.MaxPool2d and _pair(module.dilation) == (1, 1)
                and not module.ceil_mode and not module.return_indices)

    @classmethod
    def from_module(cls, module: nn.MaxPool2d) -> MaxPool:
        return cls(module.kernel_size, module.stride or module.kernel_size, module.padding)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cpu:
            with _autograd_if_recorded(x):
                return max_pool2d(x, self.kernel_size, self.stride, self.padding)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GlobalAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(1)`` followed by ``flatten(1)``: (N, C, H, W) -> (N, C)."""

    @classmethod
    def convertible(cls, module: nn.Module) -> bool:
        return type(module) is nn.AdaptiveAvgPool2d and _pair(module.output_size) == (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cpu:
            with _autograd_if_recorded(x):
                return global_avg_pool(x)
        return x.mean((2, 3))


class PackedLinear(nn.Linear):
    """``nn.Linear`` whose CPU forward runs oneDNN's matmul with a prepacked weight.

    Like the fused convs, the packed weights (one per batch size, up to ``MAX_SHAPES``) are
    derived from ``weight`` and rebuilt when it changes (same checks as
    :meth:`resnet_fused.cpu.onednn.OneDNNConv.is_prepared_from`); ``refresh()`` drops them.
    """

    MAX_SHAPES = 4

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._packed: dict[int, Tensor] = {}
        self._fingerprints: tuple | None = None

    def refresh(self) -> None:
        self._packed = {}
        self._fingerprints = None

    def _packed_weight(self, x: Tensor) -> Tensor | None:
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        fingerprints = (_fingerprint(weight), None if bias is None else _fingerprint(bias))
        if fingerprints != self._fingerprints:
            self._packed, self._fingerprints = {}, fingerprints
        batch = x.shape[0]
        packed = self._packed.get(batch)
        if packed is None:
            if len(self._packed) >= self.MAX_SHAPES:
                return None
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch)
            self._packed[batch] = packed
        return packed

    def forward(self, x: Tensor) -> Tensor:
        weight = self._parameters["weight"]
        # Traced graphs (torch.compile) get F.linear: Inductor packs the weight itself.
        if (not torch.compiler.is_compiling() and x.is_cpu and weight.is_cpu and x.dim() == 2
                and x.shape[0] > 0 and x.shape[1] == self.in_features
                and x.dtype == weight.dtype and x.dtype in capability.fast_dtypes()
                and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            packed = self._packed_weight(x)
            if packed is not None:
                bias = self._parameters["bias"]
                return torch.ops.mkldnn._linear_pointwise.default(
                    x, packed, None if bias is None else bias.detach(), "none", [], "")
        return F.linear(x, weight, self._parameters["bias"])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # packed (oneDNN-layout) weights cannot be pickled
        state["_packed"], state["_fingerprints"] = {}, None
        return state
