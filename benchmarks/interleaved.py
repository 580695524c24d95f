"""Interleaved rounds for the side-by-side benchmarks (test_side_by_side.py,
test_finetune_step.py): every variant once per round, in an order rotated each round, so drift
and other work on a shared machine hit all variants alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from resnet_fused import bench


def spread(times: list[float]) -> dict:
    """Median, min, max and quartiles of one variant's round times (seconds)."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "q1_s": q[0], "q3_s": q[2], "rounds": len(times)}


def run_rounds(benchmark, fns: dict[str, Callable[[], object]], rounds: int, warmup: int,
               device: torch.device) -> tuple[dict[str, list[float]], float]:
    """Untimed warm-up calls of each variant, then ``rounds`` rotated rounds through
    pytest-benchmark's ``pedantic`` (its statistics are those of whole rounds). Returns each
    variant's times and the share of this process's threads that ran (~1 when the cores were
    ours, well below when other work held them)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    state = {"round": 0}

    def one_round() -> None:
        k = state["round"] % len(names)
        for name in names[k:] + names[:k]:
            times[name] += bench.time_fn(fns[name], device, warmup=0, reps=1).times
        state["round"] += 1

    wall0, cpu0 = time.perf_counter(), time.process_time()
    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=0, iterations=1)
    busy = (time.process_time() - cpu0) / ((time.perf_counter() - wall0)
                                           * torch.get_num_threads())
    return times, round(busy, 3)


def record(benchmark, info: dict, times: dict[str, list[float]], busy: float, batch: int) -> None:
    """Each variant's rounds and their statistics into ``info``, and ``info`` and the CPU's
    busy share into the benchmark's ``extra_info``."""
    benchmark.extra_info["cpu_busy"] = busy
    for name, t in times.items():
        info[name].update(spread(t), times_s=t, images_per_s=batch / statistics.median(t))
    benchmark.extra_info["side_by_side"] = info
