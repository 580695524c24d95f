"""Tile configurations for the Triton kernels, kept as data, and the in-process choice cache.

The conv kernel is an implicit GEMM (M = N*Ho*Wo rows, C_out columns, K loop over (r, s, c-block)),
so its tile sizes are those of a GEMM. Different ResNet conv families want different tiles:

- ``stem``: C_in < 16 (the 7x7/s2 conv on RGB). The channel dim is masked inside a 16-wide K
  block (``tl.dot`` needs K >= 16), so a larger BLOCK_K would only multiply wasted work.
- ``1x1``: pointwise convs, a plain GEMM over C_in; long K loops, so deep pipelines pay.
- ``3x3``: every other spatial kernel; K loop over 9 taps x C-blocks.
- ``small``: late-stage / small-batch grids where 128x128 tiles would leave most of the GPU's
  132 SMs idle; smaller tiles trade per-tile efficiency for occupancy.

Each family has a short candidate list per dtype class (fp32 tiles take twice the shared memory
per element, so their BLOCK_K is halved). The first candidate is the default: with
``RESNET_FUSED_TRITON_AUTOTUNE=0`` it is the one that runs, verified on the shape's first call,
and where it fails verification the next candidate that passes takes its place (nothing timed).
Otherwise the first call of a shape (eager or traced) verifies every candidate against the
reference and times the survivors once (this synchronizes, once per shape;
``resnet_fused.tuning``), and the winner is cached, in the process and on disk. Under
``TRITON_INTERPRET=1`` nothing is timed: :func:`interpreter_conv_config` fits one config to the
shape (and it is verified too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# H100 SXM has 132 SMs; used only to classify "small" grids, so a fixed number is good enough
# (querying the device here would put a CUDA call on the tracing path).
_SM_COUNT = 132


@dataclass(frozen=True)
class ConvConfig:
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int
    GROUP_M: int = 8


@dataclass(frozen=True)
class EltwiseConfig:
    BLOCK: int
    num_warps: int


# (family, dtype class) -> candidates, default first. dtype class: "16" (fp16/bf16) or "32".
CONV_CONFIGS: dict[tuple[str, str], tuple[ConvConfig, ...]] = {
    ("stem", "16"): (
        ConvConfig(128, 64, 16, 4, 4),
        ConvConfig(64, 64, 16, 4, 4),
        ConvConfig(256, 64, 16, 8, 3),
    ),
    ("stem", "32"): (
        # 8 warps: with 4, the IEEE fp32 variant needs > 255 registers and spills (AOT check).
        ConvConfig(128, 64, 16, 8, 3),
        ConvConfig(64, 64, 16, 4, 4),
    ),
    # 16-bit 1x1 and 3x3: a 4-warp default. The 8-warp 128x128 tile has the loop shape Triton
    # 3.4-3.6 miscompiled (pytorch issue 173068); verification drops it where it is wrong, but
    # the default is what runs with tuning off, and it must not be the suspect one.
    ("1x1", "16"): (
        ConvConfig(128, 64, 64, 4, 4),
        ConvConfig(128, 128, 64, 8, 4),
        ConvConfig(64, 128, 64, 4, 4),
        # (128, 256, 64) was dropped: with the fused epilogue it spills 444-516 B on sm_90.
    ),
    ("1x1", "32"): (
        ConvConfig(128, 128, 32, 8, 3),
        ConvConfig(128, 64, 32, 4, 4),
        ConvConfig(64, 128, 32, 8, 4),  # 4 warps spill under IEEE fp32 on sm_90
    ),
    ("3x3", "16"): (
        ConvConfig(128, 64, 64, 4, 4),
        ConvConfig(128, 128, 64, 8, 3),
        ConvConfig(64, 128, 64, 4, 4),
        ConvConfig(256, 64, 64, 8, 3),
    ),
    ("3x3", "32"): (
        ConvConfig(128, 128, 32, 8, 3),
        ConvConfig(128, 64, 32, 4, 4),
        ConvConfig(64, 64, 32, 4, 4),
    ),
    ("small", "16"): (
        ConvConfig(64, 64, 64, 4, 4),
        ConvConfig(32, 64, 64, 4, 4),
        ConvConfig(32, 128, 64, 4, 4),
        ConvConfig(64, 128, 64, 4, 3),
    ),
    ("small", "32"): (
        ConvConfig(64, 64, 32, 4, 3),
        ConvConfig(32, 64, 32, 4, 4),
        ConvConfig(32, 128, 32, 4, 3),
    ),
}

# Under the interpreter the cost is Python overhead per program and per K step, not FLOPs (a
# ResNet-18 at 32x32 takes 70 s with 32x32x16 tiles, ~5 s with tiles fitted to the shape), so the
# interpreter fits the tiles to the problem; see interpreter_conv_config. The tests run every
# table entry above (and SMALL_TILES) explicitly to cover multi-tile / multi-K-block paths.
SMALL_TILES = ConvConfig(32, 32, 16, 4, 1, GROUP_M=2)

ADD_RELU_CONFIG = EltwiseConfig(BLOCK=2048, num_warps=8)
INTERPRETER_ADD_RELU_CONFIG = EltwiseConfig(BLOCK=1024, num_warps=4)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune_enabled() -> bool:
    return os.environ.get("RESNET_FUSED_TRITON_AUTOTUNE", "1") not in ("", "0")


def dtype_class(dtype: torch.dtype) -> str:
    return "32" if dtype == torch.float32 else "16"


def conv_family(m: int, c_in: int, c_out: int, r: int, s: int) -> str:
    """Which candidate list a conv shape uses (see the module docstring)."""
    if c_in < 16:
        return "stem"
    if (m + 127) // 128 * ((c_out + 127) // 128) < _SM_COUNT:
        return "small"
    if r == 1 and s == 1:
        return "1x1"
    return "3x3"


def _pow2_clamp(v: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, 1 << (max(v, 1) - 1).bit_length()))


def interpreter_conv_config(m: int, c_in: int, c_out: int) -> ConvConfig:
    """The one config used under TRITON_INTERPRET=1: tiles fitted to the shape (fewest steps)."""
    return ConvConfig(_pow2_clamp(m, 16, 256), _pow2_clamp(c_out, 16, 128),
                      _pow2_clamp(c_in, 16, 128), 4, 1, GROUP_M=2)


def conv_candidates(family: str, dtype: torch.dtype) -> tuple[ConvConfig, ...]:
    return CONV_CONFIGS[(family, dtype_class(dtype))]


def all_conv_configs(dtype: torch.dtype | None = None) -> list[ConvConfig]:
    """Every distinct config in the table, or those for ``dtype``'s class (the tests run each)."""
    seen: dict[ConvConfig, None] = {}
    for (_, cls), cands in CONV_CONFIGS.items():
        if dtype is None or cls == dtype_class(dtype):
            for cfg in cands:
                seen.setdefault(cfg, None)
    return list(seen)
