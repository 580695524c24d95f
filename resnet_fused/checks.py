"""Argument validation for the Python-side backends (``aten``, ``triton``).

Mirrors ``csrc/checks.h`` so every backend rejects bad input with the same message, naming the
argument and what was expected. The C++ backends run the C++ twin.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def as_pair(name: str, value: int | Sequence[int], minimum: int) -> list[int]:
    """``stride``/``padding`` as a list of two ints >= ``minimum`` (an int means both dims)."""
    def is_int(v) -> bool:  # a real integer, not a bool/float/str that int() would coerce
        return isinstance(v, (numbers.Integral, torch.SymInt)) and not isinstance(v, bool)

    if is_int(value):
        value = [value, value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(
        is_int(v) for v in value
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    pair = list(value)
    if len(pair) != 2 or any(v < minimum for v in pair):
        raise ValueError(f"{name} must be two integers >= {minimum}, got {list(value)}")
    return pair


def conv_output_size(
    input: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int]
) -> list[int]:
    ho = (input.shape[2] + 2 * padding[0] - weight.shape[2]) // stride[0] + 1
    wo = (input.shape[3] + 2 * padding[1] - weight.shape[3]) // stride[1] + 1
    return [input.shape[0], weight.shape[0], ho, wo]


def check_conv_bn_act_args(
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
) -> list[int]:
    """Validates ``conv_bn_act``'s arguments; returns the output sizes [N, C_out, Ho, Wo]."""
    if input.dim() != 4:
        raise ValueError(
            f"conv_bn_act: input must be 4-D (N, C, H, W), got {input.dim()}-D with sizes "
            f"{list(input.shape)}"
        )
    if weight.dim() != 4:
        raise ValueError(
            f"conv_bn_act: weight must be 4-D (C_out, C_in, R, S), got {weight.dim()}-D with "
            f"sizes {list(weight.shape)}"
        )
    if input.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"conv_bn_act: input must be float32, float16 or bfloat16, got {input.dtype}"
        )
    if weight.dtype != input.dtype:
        raise TypeError(
            f"conv_bn_act: weight dtype ({weight.dtype}) must match input dtype ({input.dtype})"
        )
    if weight.device != input.device:
        raise ValueError(
            f"conv_bn_act: weight is on {weight.device} but input is on {input.device}"
        )
    if weight.shape[1] != input.shape[1]:
        raise ValueError(
            f"conv_bn_act: weight.size(1) (C_in = {weight.shape[1]}) must equal input.size(1) "
            f"({input.shape[1]}); groups other than 1 are not supported"
        )
    k = weight.shape[0]
    if min(weight.shape[0], weight.shape[2], weight.shape[3]) < 1:
        raise ValueError(
            f"conv_bn_act: weight must have C_out, R, S >= 1, got {list(weight.shape)}"
        )
    for name, t in (("scale", scale), ("shift", shift)):
        if t.dim() != 1 or t.shape[0] != k:
            raise ValueError(
                f"conv_bn_act: {name} must be 1-D with C_out = {k} elements, got sizes "
                f"{list(t.shape)}"
            )
        if t.dtype != torch.float32:
            raise TypeError(
                f"conv_bn_act: {name} must be float32 (BatchNorm is folded in fp32), got {t.dtype}"
            )
        if t.device != input.device:
            raise ValueError(f"conv_bn_act: {name} is on {t.device} but input is on {input.device}")
    stride = as_pair("stride", stride, 1)
    padding = as_pair("padding", padding, 0)
    out = conv_output_size(input, weight, stride, padding)
    if (
        input.shape[2] + 2 * padding[0] < weight.shape[2]
        or input.shape[3] + 2 * padding[1] < weight.shape[3]
    ):
        raise ValueError(
            f"conv_bn_act: input spatial size ({input.shape[2]}, {input.shape[3]}) with padding "
            f"{padding} is smaller than the kernel ({weight.shape[2]}, {weight.shape[3]})"
        )
    if residual is not None:
        if list(residual.shape) != out:
            raise ValueError(
                f"conv_bn_act: residual must have the output's sizes {out}, got "
                f"{list(residual.shape)}"
            )
        if residual.dtype != input.dtype:
            raise TypeError(
                f"conv_bn_act: residual dtype ({residual.dtype}) must match input dtype "
                f"({input.dtype})"
            )
        if residual.device != input.device:
            raise ValueError(
                f"conv_bn_act: residual is on {residual.device} but input is on {input.device}"
            )
    return out


def check_add_relu_args(x: Tensor, residual: Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"add_relu: x must be float32, float16 or bfloat16, got {x.dtype}")
    if residual.dtype != x.dtype:
        raise TypeError(
            f"add_relu: residual dtype ({residual.dtype}) must match x dtype ({x.dtype})"
        )
    if residual.shape != x.shape:
        raise ValueError(
            f"add_relu: residual sizes {list(residual.shape)} must equal x sizes {list(x.shape)}"
        )
    if residual.device != x.device:
        raise ValueError(f"add_relu: residual is on {residual.device} but x is on {x.device}")
