"""1x1 convolutions on this package's AVX-512 GEMM: the CPU fast path's 1x1 convs.

Two thirds of ResNet-50's convolutions are 1x1, and the one of each bottleneck block that adds the
skip path (its conv3, or the downsample conv that takes its place in a stage's first block) is
one of them. oneDNN runs them near this CPU's peak without a residual, but its ``sum`` post-op
made those 4-21% slower than the same convolution alone, and at batch 1 its per-call cost shows
(2-core Zen 4 VM; README, CPU section). ``resnet_fused::conv1x1`` and
``resnet_fused::conv1x1_residual_`` (csrc/cpu/conv1x1_cpu.cpp) are this package's own kernel
for them: a register-blocked GEMM (6 pixels x 64 output channels, fp32 accumulators) whose
epilogue adds the bias, the residual (read ahead of use, summed in place) and the ReLU.

In bfloat16 the same ops also run on AMX tiles (``kernel="amx"``, csrc/cpu/conv1x1_amx.cpp) on
the same packed weight, where :func:`amx_status` says the CPU and OS allow it (Intel Xeons from
Sapphire Rapids on). Which of the two a conv runs is measured per shape
(:mod:`resnet_fused.cpu.algorithms`: ``conv1x1`` and ``conv1x1_amx``). ``kernel="amx_model"``
runs the AMX kernel through a software model of the tiles, on any CPU with AVX512_BF16: the tests
use it to check the kernel where no AMX exists.

The ops take the weight folded with BatchNorm's scale (in float32, one rounding to the compute
dtype, as the oneDNN path folds it) and packed once, when a model is fused, by
:func:`pack_weight`. :func:`path` says which convolutions take them; ``RESNET_FUSED_CONV1X1`` =
``auto`` (default: wherever :func:`path` allows) or ``never`` (oneDNN, as before).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..autograd import conv_epilogue_backward
from ..backends import env_choice
from ..folding import fold_scale
from .capability import avx512_kernels_available

__all__ = ["AMX_KERNEL", "AMX_STEP", "PANEL", "POLICIES", "amx_path", "amx_status", "available",
           "pack_weight", "path", "policy", "unpack_weight"]

POLICIES = ("auto", "never")

# Output channels per weight panel: one micro-kernel call's columns.
PANEL = 64
# Input channels per AMX tile row (32 bf16, 64 bytes): the AMX kernel's C_in must be a multiple.
AMX_STEP = 32
# The ops' ``kernel`` argument for the AMX algorithm (tests put "amx_model" here, the same
# kernel through the tiles' software model, to run the fast path's AMX branch without AMX).
AMX_KERNEL = "amx"

def policy() -> str:
    """``RESNET_FUSED_CONV1X1``: ``auto`` (default) or ``never``."""
    return env_choice("RESNET_FUSED_CONV1X1", POLICIES)


def available(dtype: torch.dtype) -> bool:
    """True if this CPU runs the op's kernels for ``dtype``: float32 needs AVX-512 F/BW/VL,
    bfloat16 also AVX512_BF16; other dtypes never."""
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    return avx512_kernels_available(bf16=dtype == torch.bfloat16)


def path(kernel, stride, padding, dtype: torch.dtype, c_in: int, c_out: int) -> bool:
    """True for the convolutions the CPU fast path runs with these ops: 1x1, padding 0 (any
    stride), C_out a multiple of 16, float32 or bfloat16 with C_in even, on a CPU where they are
    :func:`available`, unless :func:`policy` is ``never``."""
    return (tuple(kernel) == (1, 1) and tuple(padding) == (0, 0) and min(stride) >= 1
            and c_out % 16 == 0 and (dtype == torch.float32 or c_in % 2 == 0)
            and available(dtype) and policy() == "auto")


@functools.cache  # the CPU, the OS's answer and the build do not change
def amx_status() -> str:
    """``"available"`` if this process runs the AMX kernel, else ``"absent: <why>"`` (no AMX in
    the CPU, the OS not saving the tile state, Linux refusing the permission, or a compiler
    without AMX at build time)."""
    return torch.ops.resnet_fused.cpu_amx_status()


def amx_path(dtype: torch.dtype, c_in: int) -> bool:
    """True if a conv that :func:`path` takes can also run on the AMX kernel: bfloat16, C_in a
    multiple of :data:`AMX_STEP`, where :func:`amx_status` is available."""
    return dtype == torch.bfloat16 and c_in % AMX_STEP == 0 and amx_status() == "available"


def pack_weight(weight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight * scale`` (computed in float32, rounded once to ``dtype``) in the op's layout.

    ``weight``: (C_out, C_in, 1, 1); ``scale``: (C_out,). Returns panels of :data:`PANEL` output
    channels, each contiguous: ``(ceil(C_out / 64), C_in, 64)`` for float32, and for bfloat16
    ``(ceil(C_out / 64), C_in / 2, 64, 2)`` with input channels in pairs, as AVX512_BF16's dot
    product reads them. Output channels past C_out in the last panel are zeros.
    """
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"pack_weight: weight must be (C_out, C_in, 1, 1), got shape "
                         f"{tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    if scale.shape != (c_out,):
        raise ValueError(f"pack_weight: scale must have shape ({c_out},), got "
                         f"{tuple(scale.shape)}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"pack_weight: dtype must be float32 or bfloat16, got {dtype}")
    if dtype == torch.bfloat16 and c_in % 2:
        raise ValueError(f"pack_weight: bfloat16 needs an even C_in, got {c_in}")
    return _in_panels(fold_scale(weight, scale, dtype).reshape(c_out, c_in))


def _in_panels(matrix: Tensor) -> Tensor:
    """A (C_out, C_in) matrix in the op's packed layout (see :func:`pack_weight`)."""
    c_out, c_in = matrix.shape
    panels = -(-c_out // PANEL)
    padded = matrix.new_zeros(panels * PANEL, c_in)
    padded[:c_out] = matrix
    by_panel = padded.t().reshape(c_in, panels, PANEL).permute(1, 0, 2)  # (panels, C_in, 64)
    if matrix.dtype == torch.bfloat16:
        by_panel = by_panel.reshape(panels, c_in // 2, 2, PANEL).transpose(2, 3)
    return by_panel.contiguous()


def unpack_weight(packed: Tensor, c_in: int, c_out: int) -> Tensor:
    """The (C_out, C_in, 1, 1) folded weight a :func:`pack_weight` result holds (a view where
    the layout allows): the convolution the op computes."""
    panels = packed.shape[0]
    if packed.dim() == 4:  # bfloat16: (panels, C_in / 2, 64, 2)
        by_panel = packed.transpose(2, 3).reshape(panels, c_in, PANEL)
    else:
        by_panel = packed
    return by_panel.permute(0, 2, 1).reshape(panels * PANEL, c_in)[:c_out].view(c_out, c_in, 1, 1)


# conv1x1's backward: the op is act(conv2d(input, unpack_weight(weight), stride) + bias), so its
# gradients are that convolution's, taken back into the packed layout. conv1x1_residual_ writes
# in place and has none: its C++ autograd kernel refuses inputs that require grad (fused models
# use resnet_fused::conv_bn_act while gradients are recorded).


def _conv1x1_setup(ctx, inputs, output) -> None:
    input, weight, _bias, stride, relu = inputs[:5]  # then `kernel`, where given
    ctx.stride, ctx.relu = list(stride), relu
    ctx.save_for_backward(input, weight, output)


def _conv1x1_backward(ctx, grad: Tensor):
    input, packed, out = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    weight = unpack_weight(packed, input.shape[1], out.shape[1])
    d_input, d_weight, _, d_bias, _ = conv_epilogue_backward(
        grad, out, input, weight, None, ctx.stride, [0, 0], ctx.relu,
        (need_input, need_weight, False, need_bias, False))
    d_packed = None if d_weight is None else _in_panels(d_weight.reshape(d_weight.shape[:2]))
    return d_input, d_packed, d_bias, None, None, None


torch.library.register_autograd("resnet_fused::conv1x1", _conv1x1_backward,
                                setup_context=_conv1x1_setup)


@torch.library.register_fake("resnet_fused::conv1x1")
def _conv1x1_fake(input, weight, bias, stride, relu, kernel="avx512"):
    torch._check(input.dim() == 4 and bias.dim() == 1 and len(stride) == 2,
                 lambda: "conv1x1: input must be 4-D, bias 1-D, stride two ints")
    n, _, h, w = input.shape
    size = (n, bias.shape[0], (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1)
    return torch.empty(size, dtype=input.dtype, device=input.device,
                       memory_format=torch.channels_last)


@torch.library.register_fake("resnet_fused::conv1x1_residual_")
def _conv1x1_residual_fake(residual, input, weight, bias, stride, relu, kernel="avx512"):
    torch._check(input.dim() == 4 and residual.dim() == 4,
                 lambda: "conv1x1_residual_: input and residual must be 4-D")
    return None
