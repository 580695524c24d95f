"""The numerics policy's bounds and the measure they bound (docs/design.md, "Numerics policy").

Relative L2 error ``||y - ref|| / ||ref||`` against a higher-precision reference; NaN never
passes. Tests, benchmarks, the sweep, ``check`` and the GPU tuner all read the bounds here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

# (dtype, scope) -> bound on the relative L2 error; scope is "op" or "model".
# fp32 on CPU is checked against float64; fp16/bf16 against an fp32 composition.
TOLERANCES = {
    (torch.float32, "op"): 1e-5,
    (torch.float32, "model"): 1e-4,
    (torch.float16, "op"): 5e-3,
    (torch.float16, "model"): 2e-2,
    (torch.bfloat16, "op"): 1.5e-2,
    (torch.bfloat16, "model"): 5e-2,
}
# fp32 on a GPU may use TF32 tensor cores (when PyTorch's flags allow it).
TF32_TOLERANCE = 5e-3


def tolerance(dtype: torch.dtype, scope: str, device: torch.device | str = "cpu") -> float:
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        return TF32_TOLERANCE
    return TOLERANCES[(dtype, scope)]


def reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision a result in ``dtype`` is checked against (float64 for fp32, else fp32)."""
    return torch.float64 if dtype == torch.float32 else torch.float32


# Elements per float64 chunk of the error sums: a 2.2e9-element output (the int64-offset tests)
# would otherwise take two float64 copies, 35 GB, next to the data on the GPU.
_CHUNK = 1 << 24


def _sums(y: Tensor, ref: Tensor) -> tuple[float, float, float, float, bool]:
    """(sum (y - ref)^2, sum ref^2, max |y - ref|, n, all y finite), in float64 chunk by chunk
    over memory order (a view where both tensors share a dense layout, else one flat copy)."""
    y, ref = y.detach(), ref.detach()
    order = sorted(range(y.dim()), key=lambda d: -y.stride(d))
    if y.stride() == ref.stride() and y.permute(order).is_contiguous():  # dense, same layout
        flat_y, flat_ref = y.permute(order).reshape(-1), ref.permute(order).reshape(-1)
    else:
        flat_y, flat_ref = y.reshape(-1), ref.reshape(-1)
    diff2 = ref2 = worst = 0.0
    for start in range(0, flat_y.numel(), _CHUNK):
        a = flat_y[start:start + _CHUNK].double()
        b = flat_ref[start:start + _CHUNK].double()
        if not torch.isfinite(a).all():
            return math.inf, 0.0, math.inf, float(flat_y.numel()), False
        d = a - b
        diff2 += d.square().sum().item()
        ref2 += b.square().sum().item()
        worst = max(worst, d.abs().max().item())
    return diff2, ref2, worst, float(flat_y.numel()), True


def relative_error(y: Tensor, ref: Tensor) -> float:
    """``||y - ref|| / ||ref||`` in float64; ``inf`` if ``y`` has a NaN/inf or the shapes differ."""
    if y.shape != ref.shape:
        return math.inf
    diff2, ref2, _, _, finite = _sums(y, ref)
    if not finite:
        return math.inf
    num, denom = math.sqrt(diff2), math.sqrt(ref2)
    if denom == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / denom


# A candidate kernel's worst element may be off by at most this many times the relative-L2
# bound, in units of the reference's root mean square: a corrupted tile (a few elements in 1e4)
# barely moves the L2 error but fails this; a correct kernel's worst element sits several times
# inside it (its rounding is relative to the element, and few elements exceed a few RMS).
ELEMENTWISE_FACTOR = 8.0


def elementwise_error(y: Tensor, ref: Tensor) -> float:
    """``max |y - ref| / rms(ref)`` in float64; ``inf`` for a NaN/inf in ``y`` or other shapes."""
    if y.shape != ref.shape:
        return math.inf
    _, ref2, worst, n, finite = _sums(y, ref)
    if not finite:
        return math.inf
    if n == 0:
        return 0.0
    rms = math.sqrt(ref2 / n)
    if rms == 0.0:
        return 0.0 if worst == 0.0 else math.inf
    return worst / rms


def assert_within_bound(y: Tensor, ref: Tensor, dtype: torch.dtype, scope: str = "op",
                        what: str = "") -> None:
    """Asserts ``relative_error(y, ref) <= tolerance(dtype, scope)``, saying both if not."""
    err = relative_error(y, ref)
    bound = tolerance(dtype, scope)
    assert err <= bound, f"{what}relative error {err:.3g} > {bound:g} ({dtype}, {scope})"


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32``: test ids and table rows."""
    return str(dtype).removeprefix("torch.")


def round_to_tf32(t: Tensor) -> Tensor:
    """``t`` (float32) rounded to TF32's 10-bit mantissa as the GPU's ``cvt.rna.tf32.f32`` does:
    to nearest, ties away from zero; NaN stays NaN, overflow goes to infinity. Emulates on any
    device what TF32 tensor cores do to their operands (products and sums stay fp32)."""
    if t.dtype != torch.float32:
        raise TypeError(f"round_to_tf32: t must be float32, got {t.dtype}")
    bits = t.contiguous().view(torch.int32)
    # Sign-magnitude bits: adding half of the 13 dropped bits' unit rounds the magnitude.
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32).view_as(t)
    return torch.where(torch.isnan(t), t, rounded)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """fp32 convolutions and matmuls in IEEE fp32 (no TF32 tensor cores): references must be."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
