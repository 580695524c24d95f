"""The reference composition every fused backend is checked against (and the ``aten`` backend).

``conv_bn_act_reference`` is the op's definition written with stock PyTorch: convolution, then the
epilogue in fp32. Run it on float64 inputs to get the ground truth the tests compare with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def conv_bn_act_reference(
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    relu: bool,
) -> Tensor:
    """act(scale * conv(input, weight) + shift (+ residual)), computed in max(fp32, input dtype).

    Returns the input dtype in channels_last memory format, like every other backend.
    """
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    y = F.conv2d(input, weight, None, list(stride), list(padding)).to(acc_dtype)
    y = y * scale.to(acc_dtype).view(1, -1, 1, 1) + shift.to(acc_dtype).view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual.to(acc_dtype)
    if relu:
        y = torch.relu(y)
    # Not .contiguous(channels_last): that is a no-op when size-1 dims make y count as channels_last
    # already, and the contract is the canonical strides.
    out = torch.empty(
        y.shape, dtype=input.dtype, device=y.device, memory_format=torch.channels_last
    )
    out.copy_(y)
    return out


def add_relu_reference(x: Tensor, residual: Tensor) -> Tensor:
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty_like(x)
    out.copy_(torch.relu(x.to(acc_dtype) + residual.to(acc_dtype)))
    return out
