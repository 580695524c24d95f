"""Timers: CUDA events (with an untimed L2 flush) on GPU, perf_counter on CPU."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor


@dataclasses.dataclass
class Timing:
    """Per-repetition times in seconds (warm-up excluded)."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.times) if len(self.times) > 1 else 0.0


_L2_FLUSH: dict[int, Tensor] = {}


def _l2_flush_buffer(device: torch.device) -> Tensor:
    # 256 MiB is 5x an H100's 50 MB L2: writing it evicts whatever the previous rep left there,
    # so every rep reads its weights/activations from HBM, as in a real pipeline (do_bench does
    # the same).
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _L2_FLUSH:
        _L2_FLUSH[index] = torch.empty(256 * 2**20, dtype=torch.int8, device=device)
    return _L2_FLUSH[index]


def time_fn(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 3,
            reps: int = 10) -> Timing:
    """Times ``fn()``: ``warmup`` untimed calls, then ``reps`` timed ones.

    GPU: each rep is bracketed by CUDA events on the current stream (kernel time, not the
    host's launch of asynchronous work), after an L2 flush that is not timed. CPU: perf_counter
    around each call. Read ``.median`` for the figure to report.
    """
    device = torch.device(device)
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for _ in range(max(0, warmup)):
        fn()
    if device.type == "cuda":
        flush = _l2_flush_buffer(device)
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends, strict=True):
            flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return Timing([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)])
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(times)


def cuda_event_clock(device: torch.device | str | None = None) -> Callable[[], float]:
    """A clock for pytest-benchmark (``benchmark._timer``) that reads GPU time.

    Each reading records an event on the current stream and waits for it, so the difference of
    two readings is the GPU time of the work enqueued between them (an async launch would be
    timed at a few microseconds by a wall clock).
    """
    with torch.cuda.device(device):
        base = torch.cuda.Event(enable_timing=True)
        base.record()

    def cuda_event_clock() -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        return base.elapsed_time(event) / 1e3

    return cuda_event_clock


def l2_flush(device: torch.device | str) -> None:
    """Evicts the GPU's L2 (a no-op on CPU): call before each timed rep."""
    device = torch.device(device)
    if device.type == "cuda":
        _l2_flush_buffer(device).zero_()


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)

