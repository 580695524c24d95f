"""Winograd 3x3 convolutions for the CPU fast path: the filter transform, the op's fake, the choice.

ResNet's stride-1, padding-1 3x3 convolutions are half its FLOPs. Computed as Winograd F(m, 3)
(``resnet_fused::winograd_conv3x3``, csrc/cpu/winograd_cpu.cpp) they need 9 m^2 / (m+2)^2 of the
multiplications: F(4,3) in float32 (1/4), F(2,3) in bfloat16/float16 (4/9), where F(4,3)'s larger
transform coefficients would take the error past the bf16 bound. The op takes the filter already
transformed, ``U[ij] = (G g G^T)[ij]`` as an ((m+2)^2, C_in, C_out) tensor, built here once per
fused conv, with BatchNorm's scale folded in and both steps computed in float64 before the one
rounding to the compute dtype. On CPUs with AVX512_BF16 the op runs AVX-512 pipelines with
their own GEMM (:func:`pipeline_path`); :func:`pack_filter` puts a bfloat16 filter in that GEMM's
layout once, when a model is fused. Where the CPU has AMX, the bfloat16 pipeline can also run its
GEMMs on AMX tiles (:func:`amx_path`, the op's ``kernel="amx"``), which the CPU fast path
measures against the other algorithms (it is never chosen by rule).

Whether Winograd is faster than oneDNN's direct convolution depends on the shape: with few tiles
(a 7x7 layer at batch 1) its GEMMs are starved while its filter, (m+2)^2 / 9 times the direct
one's bytes, must still be read whole. :mod:`.algorithms` chooses (by :func:`by_rule`, a fixed
rule on the shape, or by measuring), within what :func:`policy`, ``RESNET_FUSED_WINOGRAD``,
allows: ``auto`` (default), ``always`` (wherever it applies) or ``never``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..autograd import relu_grad
from ..backends import env_choice
from . import conv1x1
from .capability import avx512_kernels_available

__all__ = ["MIN_TILES", "MIN_TILES_F32_PIPELINE", "POLICIES", "amx_path",
           "by_rule", "eligible", "min_tiles", "pack_filter", "pipeline_path",
           "pipelines_available", "policy", "tile_size", "tiles", "transform_filter",
           "unpack_filter", "winograd_linear", "worthwhile"]

POLICIES = ("auto", "always", "never")

# ``auto`` runs Winograd when each of its GEMMs has at least this many rows (tiles). Measured on
# ResNet-50 inside the model, filters cold in cache as in a forward pass (2-core AVX-512 VM;
# benchmarks/results/cpu/2026-11-24-cpu-winograd-layers.log and -run1/, portable path):
# Winograd lost with 4 tiles (fp32, 7x7 at batch 1: 2.2-2.8x the direct conv's time) and 16 in
# bf16 (same layer: 1.45-1.8x); with 16 tiles in fp32 (14x14 at batch 1) it lost in both
# committed runs (1.07-1.23x: its 9.4 MiB filter competes for memory bandwidth); from 32 tiles up
# it won or tied in every run (0.57-1.03x, median ~0.8x). bf16's 16-tile layer still loses on
# the AVX-512 pipeline (1.27-1.37x, 2026-11-24-cpu-avx512-layers.log).
MIN_TILES = 32
# The floor for float32 on the AVX-512 pipeline (pipeline_path): its 14x14 layers at batch 1 (16
# tiles) took 0.79-0.86x the direct conv's time there (2026-11-24-cpu-avx512-layers.log), its
# 7x7 layers (4 tiles) 1.9-2.1x.
MIN_TILES_F32_PIPELINE = 16

# G for F(4,3) and F(2,3), interpolation points 0, +-1, +-2 (and infinity); the input and output
# transforms B^T and A^T that match these are written out in csrc/cpu/winograd_cpu.h.
_G = {
    4: ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
        (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
    2: ((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
}


def policy() -> str:
    """``RESNET_FUSED_WINOGRAD``: ``auto`` (default), ``always`` or ``never``."""
    return env_choice("RESNET_FUSED_WINOGRAD", POLICIES)


def tile_size(dtype: torch.dtype) -> int:
    """Output tile edge m of F(m, 3) for this compute dtype: 4 for float32, 2 otherwise."""
    return 4 if dtype == torch.float32 else 2


def eligible(kernel: tuple[int, int], stride, padding, dtype: torch.dtype) -> bool:
    """True for the convolutions the Winograd op computes: 3x3, stride 1, padding 1."""
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(padding) == (1, 1)
            and dtype in (torch.float32, torch.bfloat16, torch.float16))


def tiles(batch: int, height: int, width: int, dtype: torch.dtype) -> int:
    """Output tiles of F(m, 3) for this input: the rows of each of the op's GEMMs."""
    m = tile_size(dtype)
    return batch * -(-height // m) * -(-width // m)


def min_tiles(dtype: torch.dtype, c_in: int, c_out: int) -> int:
    """``auto``'s floor: :data:`MIN_TILES_F32_PIPELINE` for float32 where the op runs the AVX-512
    pipeline (:func:`pipeline_path`), else :data:`MIN_TILES`."""
    if dtype == torch.float32 and pipeline_path(dtype, c_in, c_out):
        return MIN_TILES_F32_PIPELINE
    return MIN_TILES


def by_rule(batch: int, height: int, width: int, dtype: torch.dtype, c_in: int,
            c_out: int) -> bool:
    """``auto``'s choice for an eligible conv: Winograd from :func:`min_tiles` tiles up."""
    return tiles(batch, height, width, dtype) >= min_tiles(dtype, c_in, c_out)


def worthwhile(height: int, width: int, dtype: torch.dtype) -> bool:
    """False for images smaller than one output tile: there is nothing to save, and with most of
    a tile in the padding the transforms' rounding no longer averages out (bf16 on a 1x1 image
    came within 10% of the per-op bound in the tests; ResNet's layers sit at a third of it)."""
    m = tile_size(dtype)
    return height >= m and width >= m


def transform_filter(weight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``G (weight * scale) G^T`` per (C_out, C_in) pair as ((m+2)^2, C_in, C_out) in ``dtype``.

    ``weight``: (C_out, C_in, 3, 3); ``scale``: (C_out,) BatchNorm scale. Computed in float64,
    rounded once.
    """
    g = torch.tensor(_G[tile_size(dtype)], dtype=torch.float64, device=weight.device)
    folded = weight.double() * scale.double().view(-1, 1, 1, 1)
    u = torch.einsum("ij,kcjl,ml->imck", g, folded, g)  # (m+2, m+2, C_in, C_out)
    return u.reshape(g.shape[0] ** 2, weight.shape[1], weight.shape[0]).to(dtype).contiguous()


def pipelines_available() -> bool:
    """True on CPUs with AVX512_BF16: there the op runs bfloat16 F(2,3) and float32 F(4,3) on
    its own AVX-512 pipelines (intrinsic transforms, its own GEMM, blocks of tiles kept in cache,
    the GEMM's results kept in float32)."""
    # Both pipelines: their transforms are compiled once, with AVX512_BF16's target.
    return avx512_kernels_available(bf16=True)


def pipeline_path(dtype: torch.dtype, c_in: int, c_out: int) -> bool:
    """True where the op takes an AVX-512 pipeline for a :func:`transform_filter` filter of this
    dtype: float32, or bfloat16 with C_in even; C_out a multiple of 16; on a CPU with
    :func:`pipelines_available`. Elsewhere (and for float16): the portable transforms and ATen's
    batched GEMM (a pair-packed filter unpacked on every call)."""
    if c_out % 16 or not pipelines_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and c_in % 2 == 0)


def amx_path(dtype: torch.dtype, c_in: int, c_out: int) -> bool:
    """True where the bfloat16 pipeline can also run its GEMMs on AMX tiles (the op's
    ``kernel="amx"``): where the 1x1 AMX kernel could take C_in (:func:`.conv1x1.amx_path`: the
    same tiles, the same check), C_out a multiple of its 32-column block, the pipeline available."""
    return (conv1x1.amx_path(dtype, c_in) and c_out % conv1x1.AMX_STEP == 0
            and pipeline_path(dtype, c_in, c_out))


def pack_filter(u: Tensor) -> Tensor:
    """A bfloat16 F(2,3) filter ``(16, C_in, C_out)`` in the op's pair-packed form,
    ``(16, ceil(C_in / 2), C_out, 2)``: input channels in pairs, each output channel's pair
    adjacent, as AVX512_BF16's dot product reads them (an odd C_in gets a zero channel). The op
    takes either form; packed once here, it skips repacking the filter on every call."""
    if u.dim() != 3 or u.shape[0] != 16 or u.dtype != torch.bfloat16:
        raise ValueError("pack_filter: u must be a bfloat16 F(2,3) filter of shape (16, C_in, "
                         f"C_out), got {u.dtype} with shape {tuple(u.shape)}")
    planes, c_in, c_out = u.shape
    if c_in % 2:
        u = torch.cat([u, u.new_zeros(planes, 1, c_out)], dim=1)
    return u.view(planes, (c_in + 1) // 2, 2, c_out).transpose(2, 3).contiguous()


# B^T and A^T, matching _G and the C++ transforms (csrc/cpu/winograd_cpu.h: input_1d, output_1d).
_BT = {
    4: ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
        (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
    2: ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
}
_AT = {
    4: ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
    2: ((1, 1, 1, 0), (0, 1, -1, -1)),
}


def unpack_filter(weight: Tensor, c_in: int) -> Tensor:
    """The op's filter as ((m+2)^2, C_in, C_out), from either form it takes (undoes
    :func:`pack_filter`)."""
    if weight.dim() == 3:
        return weight
    planes, pairs, c_out, _ = weight.shape
    return weight.transpose(2, 3).reshape(planes, 2 * pairs, c_out)[:, :c_in]


def winograd_linear(input: Tensor, u: Tensor) -> Tensor:
    """What the op computes before its bias, residual and ReLU, written with differentiable torch
    ops: tiles of ``input`` (N, C, H, W) through B^T, times the filter ``u`` ((m+2)^2, C, K)
    summed over C, back through A^T. The op's backward differentiates this (it is linear in
    each argument, so its gradients are the op's whatever the rounding); slow, for gradients
    and checks only."""
    a = math.isqrt(u.shape[0])
    m = a - 2
    n, c, h, w = input.shape
    tiles_h, tiles_w = -(-h // m), -(-w // m)
    bt = input.new_tensor(_BT[m])
    at = input.new_tensor(_AT[m])
    padded = F.pad(input, (1, tiles_w * m + 1 - w, 1, tiles_h * m + 1 - h))
    patches = padded.unfold(2, a, m).unfold(3, a, m)  # (N, C, tiles_h, tiles_w, a, a)
    v = torch.einsum("ij,ncyxjk,lk->ncyxil", bt, patches, bt)
    products = torch.einsum("ncyxil,ilck->nkyxil", v, u.reshape(a, a, c, -1))
    y = torch.einsum("pi,nkyxil,ql->nkypxq", at, products, at)
    return y.reshape(n, -1, tiles_h * m, tiles_w * m)[:, :, :h, :w]


def _winograd_setup(ctx, inputs, output) -> None:
    input, weight, _bias, _residual, relu, *_kernel = inputs
    ctx.relu = relu
    ctx.save_for_backward(input, weight, output)


def _winograd_backward(ctx, grad: Tensor):
    input, weight, out = ctx.saved_tensors
    need_input, need_weight, need_bias, need_residual, *_ = ctx.needs_input_grad
    dz = relu_grad(grad, out, ctx.relu)
    d_input = d_weight = None
    if need_input or need_weight:
        with torch.enable_grad():
            x = input.detach().float().requires_grad_(need_input)
            w = weight.detach().float().requires_grad_(need_weight)
            y = winograd_linear(x, unpack_filter(w, input.shape[1]))
            wanted = [t for t in (x, w) if t.requires_grad]
            grads = iter(torch.autograd.grad(y, wanted, dz.float()))
        d_input = next(grads).to(input.dtype) if need_input else None
        d_weight = next(grads).to(weight.dtype) if need_weight else None
    d_bias = dz.float().sum((0, 2, 3)) if need_bias else None
    return d_input, d_weight, d_bias, dz if need_residual else None, None, None


torch.library.register_autograd("resnet_fused::winograd_conv3x3", _winograd_backward,
                                setup_context=_winograd_setup)


@torch.library.register_fake("resnet_fused::winograd_conv3x3")
def _winograd_conv3x3_fake(input, weight, bias, residual, relu, kernel="auto"):
    torch._check(input.dim() == 4 and weight.dim() in (3, 4),
                 lambda: "winograd_conv3x3: bad ranks")
    n, _, h, w = input.shape
    return torch.empty((n, weight.shape[2], h, w), dtype=input.dtype, device=input.device,
                       memory_format=torch.channels_last)
