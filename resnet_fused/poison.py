"""NaN-poisoned outputs, for checks: an element a kernel fails to write must not pass.

Inside ``with poisoned_outputs():`` every GPU op of the package (the C++/CUDA ops and the Triton
ops) fills each output it allocates with NaN before it launches; a check then finds NaN wherever
the kernel did not write. This replaces relying on the caching allocator to hand a freed
NaN-filled block back to the next allocation of the same size, which holds only by luck. Used by
the verification of tuning candidates (:mod:`resnet_fused.cuda`) and by the GPU tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from . import backends as _backends  # noqa: F401  (loads the op schemas)

__all__ = ["enabled", "poisoned_outputs"]

_enabled = False


def enabled() -> bool:
    """True inside :func:`poisoned_outputs` (read by the Triton ops before they launch)."""
    return _enabled


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """The package's GPU ops NaN-fill their outputs before launching, inside the block."""
    global _enabled
    saved = _enabled
    cpp_saved = torch.ops.resnet_fused._poison_outputs(True)
    _enabled = True
    try:
        yield
    finally:
        _enabled = saved
        torch.ops.resnet_fused._poison_outputs(cpp_saved)
