"""How the Triton ops launch their kernels, on a GPU, under the interpreter, and while tracing.

On a GPU every launch goes through ``torch.library.wrap_triton``, so ``triton_op`` can put the
kernel into a ``torch.compile`` graph. Under ``TRITON_INTERPRET=1`` (CPU tests) the kernel object
is the interpreter's, which ``wrap_triton`` rejects in torch 2.11 ("wrap_triton only works on
functions annotated with triton.jit or triton.autotune"); there nothing is ever traced (see
:func:`interpreter_fake_launch`), so the kernel is called directly.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torch.library import wrap_triton

from . import configs


def launcher(kernel):
    """``kernel`` ready for ``[grid](...)``: wrapped for torch.compile, as-is when interpreted."""
    return kernel if configs.interpreting() else wrap_triton(kernel)


def on_device_of(t: Tensor):
    """A context that makes ``t``'s CUDA device the current one: Triton compiles for and launches
    on the current device, so tensors on cuda:1 with cuda:0 current would otherwise give an
    illegal address (or, with peer access, a silent race). A no-op where they already agree and
    off CUDA."""
    device = t.device
    if device.type == "cuda" and device.index is not None and (
            device.index != torch.cuda.current_device()):
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def is_tracing(t: Tensor) -> bool:
    """Fake/functional tensors (torch.compile, opcheck's fake-tensor test) or any active dispatch
    mode: never benchmark there, and under the interpreter never launch (no real data)."""
    import torch
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t) or torch._C._len_torch_dispatch_stack() > 0


def interpreter_fake_launch(t: Tensor, op: str) -> bool:
    """Under TRITON_INTERPRET=1 with fake tensors: True means "return the metadata-only output".

    Raises under functionalization (AOTAutograd, i.e. torch.compile with any backend other than
    "eager"): triton_op would put the kernel into the graph through wrap_triton, which cannot
    wrap an interpreted kernel, so the compiled graph would silently skip the kernel.
    """
    if not (configs.interpreting() and is_tracing(t)):
        return False
    from torch._subclasses.functional_tensor import FunctionalTensor

    if isinstance(t, FunctionalTensor):
        raise RuntimeError(
            f"resnet_fused::{op}: under TRITON_INTERPRET=1 the Triton kernels can run eagerly or "
            "under torch.compile(backend='eager') only; compiling them into a graph needs the "
            "real Triton compiler on a CUDA device"
        )
    return True
