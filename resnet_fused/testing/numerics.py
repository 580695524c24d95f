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


def relative_error(y: Tensor, ref: Tensor) -> float:
    """``||y - ref|| / ||ref||`` in float64; ``inf`` if ``y`` has a NaN/inf or the shapes differ."""
    if y.shape != ref.shape:
        return math.inf
    y64, ref64 = y.detach().double(), ref.detach().double()
    if not torch.isfinite(y64).all():
        return math.inf
    denom = ref64.norm().item()
    num = (y64 - ref64).norm().item()
    if denom == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / denom


def assert_within_bound(y: Tensor, ref: Tensor, dtype: torch.dtype, scope: str = "op",
                        what: str = "") -> None:
    """Asserts ``relative_error(y, ref) <= tolerance(dtype, scope)``, saying both if not."""
    err = relative_error(y, ref)
    bound = tolerance(dtype, scope)
    assert err <= bound, f"{what}relative error {err:.3g} > {bound:g} ({dtype}, {scope})"


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32``: test ids and table rows."""
    return str(dtype).removeprefix("torch.")


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
