"""Backward formulas of ``conv_bn_act`` and ``add_relu``, registered for every backend's op.

The forward kernels run below autograd (``torch.library.register_autograd`` dispatches them
with autograd off), so nothing they do inside, e.g. the CPU kernel's in-place epilogue on its
convolution's output, is recorded; the gradient is this module's formula alone. For

    z = scale[k] * conv(input, weight) + shift[k] (+ residual),  y = relu(z) or z

it is what eager PyTorch computes for ``conv -> eval-mode BatchNorm (-> + residual) -> ReLU``:

* ``dz = dy``, or 0 where ``y <= 0`` (a NaN output passes its gradient, as in ``torch.relu``'s
  backward);
* ``d residual = dz``; ``d shift = sum(dz)`` over (N, H, W), in float32;
* ``d scale = sum(dz * conv(input, weight))``, the convolution recomputed only when asked for;
* ``d input``, ``d weight``: the convolution's backward of ``dz * scale`` (rounded once to the
  compute dtype, as eager BatchNorm's backward rounds it).

The same formula serves the C++ op (CPU and CUDA), the CUDA op that names its implementation and
the Triton op: one definition of the math, whatever computed the forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backends as _backends  # noqa: F401  (loads the op schemas this registers for)

__all__ = ["register_add_relu_autograd", "register_conv_bn_act_autograd", "relu_grad"]

_DILATION = [1, 1]
_GRAD_EPILOGUE = torch.ops.resnet_fused.conv_bn_act_grad_epilogue.default
_NO_OUTPUT_PADDING = [0, 0]


def relu_grad(grad: Tensor, out: Tensor, relu: bool) -> Tensor:
    """The gradient before a ReLU whose output was ``out``: ``grad``, 0 where ``out <= 0``."""
    return torch.ops.aten.threshold_backward(grad, out, 0) if relu else grad


def _convolution(input: Tensor, weight: Tensor, stride, padding) -> Tensor:
    return torch.ops.aten.convolution(input, weight, None, list(stride), list(padding),
                                      _DILATION, False, _NO_OUTPUT_PADDING, 1)


def conv_epilogue_backward(grad: Tensor, out: Tensor, input: Tensor, weight: Tensor,
                           scale: Tensor | None, stride, padding, relu: bool,
                           needs: tuple[bool, ...]) -> tuple:
    """Gradients of ``act(scale * conv(input, weight) + shift (+ residual))``.

    ``needs``: (input, weight, scale, shift, residual) requiring grad. ``scale`` None means 1.
    Returns the five gradients (None where not needed).
    """
    need_input, need_weight, need_scale, need_shift, need_residual = needs
    need_conv = need_input or need_weight
    if (need_conv and scale is not None and grad.is_cpu and not need_scale and not need_shift
            and not torch.is_grad_enabled()):
        # The CPU's one-pass kernel (csrc/cpu/conv_bn_act_cpu.cpp); not when a double backward
        # is being recorded (create_graph), which needs differentiable ops.
        d_conv, dz = _GRAD_EPILOGUE(grad, out, scale, relu, need_residual)
        d_residual = dz if need_residual else None
        d_scale = d_shift = None
    else:
        dz = relu_grad(grad, out, relu)
        dz32 = dz.float()
        d_residual = dz if need_residual else None
        d_shift = dz32.sum((0, 2, 3)) if need_shift else None
        d_scale = None
        if need_scale:
            conv = _convolution(input, weight, stride, padding)
            d_scale = (dz32 * conv.float()).sum((0, 2, 3))
        d_conv = dz32 if scale is None else dz32 * scale.view(1, -1, 1, 1)
    d_input = d_weight = None
    if need_conv:
        d_input, d_weight, _ = torch.ops.aten.convolution_backward(
            d_conv.to(input.dtype), input, weight, None, list(stride), list(padding), _DILATION,
            False, _NO_OUTPUT_PADDING, 1, [need_input, need_weight, False])
    return d_input, d_weight, d_scale, d_shift, d_residual


def _conv_bn_act_setup(ctx, inputs, output) -> None:
    input, weight, scale, _shift, _residual, stride, padding, relu = inputs[:8]
    ctx.stride, ctx.padding, ctx.relu = list(stride), list(padding), relu
    ctx.save_for_backward(input, weight, scale, output)


def _conv_bn_act_backward(ctx, grad: Tensor) -> tuple:
    input, weight, scale, out = ctx.saved_tensors
    grads = conv_epilogue_backward(grad, out, input, weight, scale, ctx.stride, ctx.padding,
                                   ctx.relu, tuple(ctx.needs_input_grad[:5]))
    # stride, padding, relu (and the CUDA op's implementation name) have no gradient.
    return grads + (None,) * (len(ctx.needs_input_grad) - 5)


def register_conv_bn_act_autograd(op: str) -> None:
    """Registers the formula for ``op``, a conv_bn_act whose first eight arguments are
    ``(input, weight, scale, shift, residual, stride, padding, relu)``."""
    torch.library.register_autograd(op, _conv_bn_act_backward, setup_context=_conv_bn_act_setup)


def _add_relu_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(output)


def _add_relu_backward(ctx, grad: Tensor) -> tuple:
    (out,) = ctx.saved_tensors
    dz = relu_grad(grad, out, True)
    return (dz if ctx.needs_input_grad[0] else None, dz if ctx.needs_input_grad[1] else None)


def register_add_relu_autograd(op: str) -> None:
    """Registers ``relu(x + residual)``'s backward for ``op`` (the C++ or the Triton op)."""
    torch.library.register_autograd(op, _add_relu_backward, setup_context=_add_relu_setup)


register_conv_bn_act_autograd("resnet_fused::conv_bn_act")
register_conv_bn_act_autograd("resnet_fused::conv_bn_act_cuda_impl")
register_add_relu_autograd("resnet_fused::add_relu")


@torch.library.register_fake("resnet_fused::conv_bn_act_grad_epilogue")
def _grad_epilogue_fake(grad, out, scale, relu, masked):
    torch._check(grad.dim() == 4 and grad.shape == out.shape,
                 lambda: "conv_bn_act_grad_epilogue: grad and out must be 4-D of the same sizes")
    d_conv = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device,
                         memory_format=torch.channels_last)
    dz = torch.empty_like(d_conv) if masked else grad.new_empty((0,))
    return d_conv, dz
