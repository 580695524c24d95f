"""Triton ``relu(x + residual)``: one vectorized pass over flat memory.

When ``x``, ``residual`` and the output (``torch.empty_like(x)``) share strides and are dense,
element i of each tensor in *memory order* is the same logical element, so the kernel is a flat
1-D loop over ``numel`` elements whatever the layout (NCHW, NHWC, permuted, ...): contiguous,
vectorizable loads. Anything else (a strided view, a residual in another layout) is first copied
into the output's layout; always correct, only the copy costs.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from .. import poison
from ..autograd import register_add_relu_autograd
from ..checks import check_add_relu_args
from . import configs
from .launch import interpreter_fake_launch, is_tracing, launcher, on_device_of

__all__ = ["triton_add_relu"]


@triton.jit
def _add_relu_kernel(x_ptr, r_ptr, y_ptr, numel, INT64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if INT64:
        start = pid.to(tl.int64) * BLOCK
    else:
        start = pid * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # Add in fp32 and round once, exactly like the reference; where() keeps NaN like torch.relu.
    v = x + r
    v = tl.where(v < 0.0, 0.0, v)
    tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=mask)


def _in_layout_of(t: Tensor, like: Tensor) -> Tensor:
    """``t`` with exactly ``like``'s strides (a copy unless it already has them)."""
    if t.stride() == like.stride():
        return t
    copy = torch.empty_like(like)
    copy.copy_(t)
    return copy


@triton_op("resnet_fused::triton_add_relu", mutates_args=())
def triton_add_relu(x: Tensor, residual: Tensor) -> Tensor:
    """Triton backend of ``resnet_fused::add_relu``; output is ``torch.empty_like(x)``."""
    check_add_relu_args(x, residual)
    out = torch.empty_like(x)
    numel = out.numel()
    if numel == 0:
        return out
    if interpreter_fake_launch(x, "triton_add_relu"):
        return out  # see triton_conv_bn_act: an interpreted kernel cannot run on fake tensors
    if poison.enabled() and not is_tracing(x):
        out.fill_(float("nan"))  # checks: an unwritten element stays NaN (resnet_fused.poison)
    # empty_like keeps x's strides when x is dense; otherwise out is dense in x's suggested
    # format and x itself is copied. Same strides + out dense => flat memory order matches.
    x = _in_layout_of(x, out)
    residual = _in_layout_of(residual, out)
    cfg = configs.INTERPRETER_ADD_RELU_CONFIG if configs.interpreting() else configs.ADD_RELU_CONFIG
    int64 = bool(numel > 2**31 - 1 - cfg.BLOCK)  # a constexpr: a plain bool, never a SymBool
    grid = (triton.cdiv(numel, cfg.BLOCK),)
    with on_device_of(x):
        launcher(_add_relu_kernel)[grid](
            x, residual, out, numel, INT64=int64, BLOCK=cfg.BLOCK, num_warps=cfg.num_warps
        )
    return out


register_add_relu_autograd("resnet_fused::triton_add_relu")
