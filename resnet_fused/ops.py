"""Public op functions: ``conv_bn_act`` and ``add_relu``, with backend choice and fake impls.

Every backend computes the same thing (docs/design.md):

    y = act(scale[k] * conv(input, weight)[n, k, h, w] + shift[k] (+ residual[n, k, h, w]))

with fp32 ``scale``/``shift``, fp32 accumulation and the output in the input dtype, in
channels_last memory format. The C++ ops live in ``torch.ops.resnet_fused``; the fake (meta)
implementations registered here let ``torch.compile(fullgraph=True)`` trace through them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import autograd as _autograd  # noqa: F401  (registers the ops' backward formulas)
from .backends import resolve_backend
from .checks import as_pair, check_add_relu_args, check_conv_bn_act_args
from .cuda import selection
from .reference import add_relu_reference, conv_bn_act_reference

__all__ = ["add_relu", "conv_bn_act"]


def conv_bn_act(
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    relu: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Fused ``conv2d -> BatchNorm (as scale/shift) -> (+ residual) -> (ReLU)``.

    Args:
        input: (N, C_in, H, W), float32/float16/bfloat16, any memory format.
        weight: (C_out, C_in, R, S), same dtype as ``input``; channels_last is the fast layout.
        scale, shift: (C_out,) float32, e.g. from :func:`resnet_fused.fold_batchnorm`.
        residual: optional (N, C_out, Ho, Wo) tensor added before the activation.
        stride, padding: an int or a pair. Dilation and groups are 1.
        relu: apply ReLU last.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"aten"``.

    Returns:
        (N, C_out, Ho, Wo) in ``input.dtype``, channels_last memory format.
    """
    stride = as_pair("stride", stride, 1)
    padding = as_pair("padding", padding, 0)
    if not isinstance(input, Tensor):
        raise TypeError(f"conv_bn_act: input must be a Tensor, got {type(input).__name__}")
    name = resolve_backend(backend, input.device)
    if name == "aten":
        check_conv_bn_act_args(input, weight, scale, shift, residual, stride, padding)
        return conv_bn_act_reference(input, weight, scale, shift, residual, stride, padding, relu)
    if name == "cuda" or (backend == "auto" and input.device.type == "cuda"):
        # Per shape, the measured fastest of the verified candidates (resnet_fused.cuda.selection).
        check_conv_bn_act_args(input, weight, scale, shift, residual, stride, padding)
        chosen = selection.choose("cuda" if backend == "cuda" else "auto", input, weight, scale,
                                  shift, residual, stride, padding, relu)
        return selection.run(chosen, input, weight, scale, shift, residual, stride, padding,
                             relu)
    if name == "triton":
        from . import triton as _triton  # noqa: F401  (registers the Triton ops on first use)

        return torch.ops.resnet_fused.triton_conv_bn_act(
            input, weight, scale, shift, residual, stride, padding, relu
        )
    return torch.ops.resnet_fused.conv_bn_act(
        input, weight, scale, shift, residual, stride, padding, relu
    )


def add_relu(x: Tensor, residual: Tensor, backend: str = "auto") -> Tensor:
    """``relu(x + residual)`` in one pass; the output has ``x``'s memory format."""
    if not isinstance(x, Tensor):
        raise TypeError(f"add_relu: x must be a Tensor, got {type(x).__name__}")
    name = resolve_backend(backend, x.device)
    if name == "aten":
        check_add_relu_args(x, residual)
        return add_relu_reference(x, residual)
    if name == "triton":
        from . import triton as _triton  # noqa: F401

        return torch.ops.resnet_fused.triton_add_relu(x, residual)
    return torch.ops.resnet_fused.add_relu(x, residual)


# Fake (meta) implementations: shapes, dtypes and strides only, matching every real backend.


@torch.library.register_fake("resnet_fused::conv_bn_act")
def _conv_bn_act_fake(input, weight, scale, shift, residual, stride, padding, relu):
    sizes = check_conv_bn_act_args(input, weight, scale, shift, residual, stride, padding)
    return torch.empty(
        sizes, dtype=input.dtype, device=input.device, memory_format=torch.channels_last
    )


@torch.library.register_fake("resnet_fused::conv_bn_act_cuda_impl")
def _conv_bn_act_cuda_impl_fake(input, weight, scale, shift, residual, stride, padding, relu, impl):
    # Every implementation returns what conv_bn_act returns (the impl name changes no shape).
    return _conv_bn_act_fake(input, weight, scale, shift, residual, stride, padding, relu)


@torch.library.register_fake("resnet_fused::add_relu")
def _add_relu_fake(x, residual):
    check_add_relu_args(x, residual)
    return torch.empty_like(x)


@torch.library.register_fake("resnet_fused::all_finite")
def _all_finite_fake(x):
    return torch.empty((), dtype=torch.bool, device=x.device)
