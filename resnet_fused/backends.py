"""Which implementations this install has, and which one a call should use.

Backends: ``cpu`` (C++, CPU tensors), ``cuda`` (C++/CUDA, CUDA tensors), ``triton`` (Triton, CUDA
tensors, or CPU tensors under ``TRITON_INTERPRET=1``), ``aten`` (the reference composition, any
device). ``auto`` picks ``cuda``, then ``triton`` on a GPU, and ``cpu`` on the CPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

try:
    from . import _C  # noqa: F401  (loads the op schemas and their C++ implementations)
except ImportError as e:  # a source checkout that was never built, or a build for another torch
    raise ImportError(
        f"resnet_fused's compiled ops (resnet_fused._C) could not be loaded: {e}. Build them "
        "against the installed torch with `pip install --no-build-isolation -e .` (and rebuild "
        "after upgrading torch)."
    ) from e

BACKENDS = ("cpu", "cuda", "triton", "aten")
CHOICES = (*BACKENDS, "auto")


# Facts about this install, computed once at import: to torch.compile they are plain constants
# (dynamo cannot trace _dispatch_has_kernel_for_dispatch_key or find_spec in a fullgraph region).
_CUDA_KERNELS_BUILT = torch._C._dispatch_has_kernel_for_dispatch_key(
    "resnet_fused::conv_bn_act", "CUDA"
)
_TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def triton_version() -> str:
    """The installed Triton's version, or "not installed"."""
    if not _TRITON_IMPORTABLE:
        return "not installed"
    import triton

    return triton.__version__


def parse_device(name: str | None) -> torch.device:
    """A command's ``--device``: default cuda when visible, else cpu; ValueError for a CUDA device
    on a machine without one (said as the option's problem)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible")
    return device


def env_choice(variable: str, choices: tuple[str, ...]) -> str:
    """The environment variable ``variable``, trimmed and lower-cased, as one of ``choices``;
    unset or empty gives ``choices[0]``, anything else is a ValueError naming the variable."""
    value = os.environ.get(variable, "").strip().lower() or choices[0]
    if value not in choices:
        raise ValueError(f"{variable} must be one of {choices}, got {value!r}")
    return value


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend_status() -> dict[str, str]:
    """Each backend mapped to ``"available"`` or the reason it is not, and how to get it."""
    status = {"cpu": "available", "aten": "available"}
    if not _CUDA_KERNELS_BUILT and not torch.cuda.is_available():
        status["cuda"] = ("not built, and no CUDA GPU is visible here; on a machine with one, "
                          "rebuild with a CUDA build of torch and nvcc (docs/building.md)")
    elif not _CUDA_KERNELS_BUILT:
        status["cuda"] = (
            "not built: this install of resnet_fused._C has no CUDA kernels; rebuild with a CUDA "
            "build of torch and nvcc on PATH (docs/building.md): "
            "`pip install --no-build-isolation -e .`"
        )
    elif not torch.cuda.is_available():
        status["cuda"] = "built, but no CUDA device is visible"
    else:
        status["cuda"] = "available"
    if not _TRITON_IMPORTABLE:
        status["triton"] = "triton is not installed: `pip install triton`"
    elif not (torch.cuda.is_available() or _triton_interpret()):
        status["triton"] = "no CUDA device (CPU runs only under TRITON_INTERPRET=1, for tests)"
    else:
        status["triton"] = "available"
    return status


# The sm_90a CUTLASS kernels are compiled and unit-tested host-side only so far.
SM90_NOT_RUN_NOTE = "compiled and host-side tested; has not run on a GPU yet"


def cuda_implementations() -> dict[str, str]:
    """The CUDA backend's implementations mapped to ``"built"`` or why this build lacks them.

    ``mma_sync`` is the hand-written kernel (sm_80+); ``sm90_cutlass`` the sm_90a CUTLASS kernels,
    listed with their configurations. ``torch.ops.resnet_fused.conv_bn_act_cuda_impl`` runs one.
    """
    names = list(torch.ops.resnet_fused.cuda_impls())
    out = {}
    for impl in ("mma_sync", "sm90_cutlass"):
        status = torch.ops.resnet_fused.cuda_impl_status(impl)
        if status == "built" and impl == "sm90_cutlass":
            configs = [n.split(":", 1)[1] for n in names if n.startswith("sm90_cutlass:")]
            status = f"built, configs {', '.join(configs)} ({SM90_NOT_RUN_NOTE})"
        out[impl] = status
    return out


def available_backends() -> list[str]:
    """The backends this install can run now, e.g. ``['cpu', 'aten']`` on a CPU-only machine."""
    return [name for name, why in backend_status().items() if why == "available"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for a tensor on ``device``; raises if ``backend`` cannot run there.

    This runs on every op call, so it decides from the import-time install facts and the device;
    the status table (device queries, strings) is built only for errors and warnings.
    """
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            return "cpu"
        # A tensor on a CUDA device means a GPU is visible: only the install facts decide.
        if device.type == "cuda" and _CUDA_KERNELS_BUILT:
            return "cuda"
        if device.type == "cuda" and _TRITON_IMPORTABLE:
            return "triton"
        _warn_fallback(device.type)
        return "aten"
    if backend == "aten":
        return backend
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
    elif backend == "cuda" and not (_CUDA_KERNELS_BUILT and device.type == "cuda"):
        why = backend_status()["cuda"]
        if why != "available":
            raise RuntimeError(f"backend='cuda' is unavailable: {why}")
        raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
    elif backend == "triton":
        if not _TRITON_IMPORTABLE:
            raise RuntimeError(f"backend='triton' is unavailable: {backend_status()['triton']}")
        if device.type == "cpu" and not _triton_interpret():
            raise ValueError(
                "backend='triton' needs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
            )
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' needs CUDA tensors, got tensors on {device}")
    return backend


@functools.cache
def _warn_fallback(device_type: str) -> None:
    warnings.warn(
        f"resnet_fused: no fused backend is available on {device_type!r} "
        f"({backend_status()}); using the reference composition (backend='aten')",
        stacklevel=3,
    )
