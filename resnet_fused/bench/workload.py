"""What is measured: random models and inputs, the higher-precision reference, the output check."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..testing import (
    no_tf32,
    randomize_batchnorm_,
    reference_dtype,
    relative_error,
    tolerance,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class MismatchError(AssertionError):
    """A variant's output is not within the numerics bound of the reference."""




def make_model(name: str = "resnet50", device: torch.device | str = "cpu",
               seed: int = 0) -> nn.Module:
    """A reference model with random weights and non-trivial BatchNorm statistics (eval mode)."""
    from .. import models

    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    torch.manual_seed(seed)
    model = getattr(models, name)()
    randomize_batchnorm_(model, torch.Generator().manual_seed(seed))
    return model.eval().requires_grad_(False).to(device)


def make_input(batch: int, dtype: torch.dtype, device: torch.device | str, size: int = 224,
               seed: int = 0) -> Tensor:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def reference_output(model: nn.Module, x: Tensor) -> Tensor:
    """The model's output in the reference precision for ``x.dtype`` (fp64 for fp32, else fp32).

    ``x`` is used as given (already quantized to the benchmark dtype), so the reference sees the
    same input as the variant under test.
    """
    ref_dtype = reference_dtype(x.dtype)
    ref_model = copy.deepcopy(model).to(ref_dtype)
    with no_tf32():
        return ref_model(x.to(ref_dtype)).float()


def check_output(name: str, y: Tensor, ref: Tensor, dtype: torch.dtype,
                 device: torch.device | str, scope: str = "model") -> float:
    """Relative L2 error of ``y`` vs ``ref``; raises :class:`MismatchError` above the bound."""
    err = relative_error(y.float(), ref.float())
    bound = tolerance(dtype, scope, device)
    if not err <= bound:  # also catches NaN/inf
        raise MismatchError(
            f"{name}: output does not match the reference: relative error {err:.3e} > bound "
            f"{bound:.1e} ({dtype}, {scope}, {torch.device(device).type})")
    return err

