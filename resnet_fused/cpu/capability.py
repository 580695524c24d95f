"""What this CPU and torch build offer the fast path: ISA flags, oneDNN, low-precision dtypes,
and whether the package's own AVX-512 kernels can run (csrc/cpu/gemm_avx512.h checks the same
features in C++). Every CPU module asks here, so a rule about the CPU has one source.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["avx512_kernels_available", "cpu_capability", "fast_dtypes"]

# The ISA features that decide which oneDNN kernels run (torch's own cpuinfo probe).
_ISA_FLAGS = ("avx2", "avx512_f", "avx512_bw", "avx512_vl", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


@functools.cache
def cpu_capability() -> dict:
    """What this CPU and torch build offer the fast path: ISA flags, oneDNN, low-precision dtypes.

    Keys: ``name``, ``cores``, ``isa`` (ATen's vectorization level, e.g. ``AVX512``), one bool per
    flag in ``_ISA_FLAGS``, ``onednn`` (torch built with oneDNN), ``onednn_bf16``/``onednn_fp16``
    (oneDNN can run convolutions in that dtype here).
    """
    info = torch._C._cpu._get_cpu_capability() if hasattr(torch._C, "_cpu") else {}
    onednn = torch.backends.mkldnn.is_available()
    caps = {
        "name": info.get("cpu_name", "unknown"),
        "cores": info.get("num_physical_cores"),
        "isa": torch.backends.cpu.get_cpu_capability(),
        **{flag: bool(info.get(flag, False)) for flag in _ISA_FLAGS},
        "onednn": onednn,
        "onednn_bf16": onednn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "onednn_fp16": onednn and bool(torch.ops.mkldnn._is_mkldnn_fp16_supported()),
    }
    return caps


# What this package's AVX-512 kernels need (csrc/cpu/gemm_avx512.h: avx512_available and
# avx512_bf16_available check the same features in C++).
_AVX512_KERNEL_ISA = ("avx512_f", "avx512_bw", "avx512_vl")


def avx512_kernels_available(bf16: bool) -> bool:
    """True if this CPU runs the package's AVX-512 GEMM kernels: AVX-512 F/BW/VL, and for the
    bfloat16 ones (``bf16``) AVX512_BF16 too."""
    caps = cpu_capability()
    flags = _AVX512_KERNEL_ISA + (("avx512_bf16",) if bf16 else ())
    return all(caps[flag] for flag in flags)


@functools.cache  # asked on every classifier call; the CPU and the torch build do not change
def fast_dtypes() -> frozenset[torch.dtype]:
    """The compute dtypes the oneDNN fast path runs on this machine (empty without oneDNN)."""
    caps = cpu_capability()
    if not caps["onednn"]:
        return frozenset()
    dtypes = {torch.float32}
    if caps["onednn_bf16"]:
        dtypes.add(torch.bfloat16)
    if caps["onednn_fp16"]:
        dtypes.add(torch.float16)
    return frozenset(dtypes)
