"""The roofline: measured device peaks, per-layer floors and the achieved fraction of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .layers import ConvLayer
from .timing import time_fn


@dataclasses.dataclass
class DevicePeaks:
    """Measured (not datasheet) copy bandwidth and GEMM rate of the current device."""

    device: str
    dtype: str
    bandwidth: float  # bytes/s, copy (read + write counted)
    flops: float  # FLOP/s, the faster of a large matmul and a GEMM-shaped 1x1 conv in ``dtype``
    matmul_flops: float = 0.0
    conv1x1_flops: float = 0.0

    def floors(self, flops: float, nbytes: float) -> tuple[float, float]:
        """(compute floor, memory floor) in seconds."""
        return flops / self.flops, nbytes / self.bandwidth


def measure_peaks(device: torch.device | str, dtype: torch.dtype = torch.float32,
                  reps: int = 10) -> DevicePeaks:
    """Copy bandwidth and GEMM FLOP/s of ``device``, each the best of ``reps`` runs.

    GPU: 1 GiB copy, 8192^3 matmul. CPU: 256 MiB copy, 2048^3 matmul, this process's threads.
    The GEMM rate is also measured as a 1x1 channels_last convolution, because on some CPUs the
    BLAS behind ``torch.mm`` is slower than oneDNN's convolutions (MKL on AMD runs its AVX2 path),
    and a "peak" the convolutions beat would make no floor.
    """
    device = torch.device(device)
    gpu = device.type == "cuda"
    numel = (2**30 if gpu else 2**28) // 4
    buffers = [torch.empty(numel, dtype=torch.float32, device=device).fill_(1.0)
               for _ in range(2)]

    def copy_() -> None:
        buffers[1].copy_(buffers[0])

    copy_t = time_fn(copy_, device, warmup=2, reps=reps).min
    buffers.clear()
    n = 8192 if gpu else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    mm_t = time_fn(lambda: torch.mm(a, b), device, warmup=2, reps=max(3, reps // 2)).min
    mm_rate = 2 * n**3 / mm_t
    # The same GEMM as a 1x1 conv: (hw x c) @ (c x k) with hw = 64*64 (CPU) or 128*128 (GPU).
    hw, c = (128, 4096) if gpu else (64, 1024)
    x = torch.randn(1, c, hw, hw, device=device).to(dtype).contiguous(
        memory_format=torch.channels_last)
    w = torch.randn(c, c, 1, 1, device=device).to(dtype).contiguous(
        memory_format=torch.channels_last)
    conv_t = time_fn(lambda: F.conv2d(x, w), device, warmup=2, reps=max(3, reps // 2)).min
    conv_rate = 2 * c * c * hw * hw / conv_t
    return DevicePeaks(str(device), str(dtype).replace("torch.", ""), 2 * numel * 4 / copy_t,
                       max(mm_rate, conv_rate), mm_rate, conv_rate)



def roofline_rows(layers: Sequence[ConvLayer], peaks: DevicePeaks, element_size: int,
                  achieved: dict[str, float] | None = None) -> list[dict]:
    """One dict per layer: FLOPs, bytes, floors (s), achieved time (s) and fraction of floor."""
    rows = []
    for layer in layers:
        flops, nbytes = layer.flops(), layer.min_bytes(element_size)
        compute, memory = peaks.floors(flops, nbytes)
        t = (achieved or {}).get(layer.name)
        rows.append({
            "layer": layer.name, "shape": layer.label, "count": layer.count, "flops": flops,
            "bytes": nbytes, "compute_floor_s": compute, "memory_floor_s": memory,
            "floor_s": max(compute, memory), "bound": "compute" if compute >= memory else "memory",
            "achieved_s": t, "fraction": (max(compute, memory) / t) if t else None,
        })
    return rows


def model_floor(rows: Sequence[dict]) -> dict[str, float]:
    """Whole-model floors (s per batch) from per-layer rows weighted by their counts.

    ``compute``/``memory``: all conv FLOPs at peak rate / all minimum bytes at peak bandwidth;
    ``per_layer``: each layer at its own roofline (the achievable bound for one kernel per conv).
    Pooling and the classifier are left out (well under 1% of either).
    """
    return {
        "compute": sum(r["count"] * r["compute_floor_s"] for r in rows),
        "memory": sum(r["count"] * r["memory_floor_s"] for r in rows),
        "per_layer": sum(r["count"] * r["floor_s"] for r in rows),
    }


