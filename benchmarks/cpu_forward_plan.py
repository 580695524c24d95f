#!/usr/bin/env python
"""What the CPU forward plans save: one fused ResNet-50, plan on and off, interleaved.

    python benchmarks/cpu_forward_plan.py --batch 1 8 --dtype float32 bfloat16 --rounds 20 \\
        --json out.json

Per batch and dtype: the benchmark model (``resnet_fused.bench.make_model``, seeded) fused once,
its output checked against the float64 (fp32) or fp32 (bf16) reference within the model bound;
then ``--rounds`` rounds, each timing ``--calls`` forwards with ``RESNET_FUSED_FORWARD_PLAN=auto``
(the plan of this shape, recorded before timing) and as many with ``never`` (the Python
forward), in alternating order. The two give the same bits (checked). Prints each setting's
median forward time and the median (interquartile range) of the per-round ratio never / auto
(> 1: the plan is faster); ``--json`` also writes every round's times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

# The checkout's resnet_fused (this file's repository), not whichever one is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_VARIABLE = "RESNET_FUSED_FORWARD_PLAN"


def _timed(model, x, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _case(batch: int, dtype_name: str, args) -> dict:
    from resnet_fused import bench, fuse

    dtype = bench.DTYPES[dtype_name]
    model = bench.make_model("resnet50")
    x = bench.make_input(batch, dtype, "cpu", size=args.size)
    fused = fuse(model, dtype=dtype)
    previous = os.environ.get(_VARIABLE)
    try:
        with torch.inference_mode():
            os.environ[_VARIABLE] = "never"
            python = fused(x)
            os.environ[_VARIABLE] = "auto"
            for _ in range(3):  # the second call records the plan, the third runs it
                planned = fused(x)
            if not fused._plans.plans:
                raise SystemExit(f"batch {batch}, {dtype_name}: no plan was made "
                                 f"({fused._plans.why_not})")
            if not torch.equal(planned, python):
                raise SystemExit(f"batch {batch}, {dtype_name}: the plan's output differs")
            err = bench.check_output("fused", planned, bench.reference_output(model, x), dtype,
                                     "cpu")
            times = {"auto": [], "never": []}
            for r in range(args.rounds):
                for setting in ("auto", "never") if r % 2 == 0 else ("never", "auto"):
                    os.environ[_VARIABLE] = setting
                    times[setting].append(_timed(fused, x, args.calls))
    finally:
        if previous is None:
            os.environ.pop(_VARIABLE, None)
        else:
            os.environ[_VARIABLE] = previous
    ratios = [b / a for a, b in zip(times["auto"], times["never"], strict=True)]
    q = statistics.quantiles(ratios, n=4)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"batch {batch} {dtype_name:<9}: plan {med['auto']:7.2f} ms, Python {med['never']:7.2f}"
          f" ms; Python / plan {statistics.median(ratios):.3f} ({q[0]:.3f}-{q[2]:.3f}); "
          f"error vs reference {err:.2e}")
    return {"batch": batch, "dtype": dtype_name, "times_s": times, "median_ms": med,
            "ratio_median": statistics.median(ratios), "ratio_iqr": [q[0], q[2]],
            "rel_error": err}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=5, help="timed forwards per round and side")
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--json", default=None, help="also write every round's times here")
    args = parser.parse_args(argv)
    if args.rounds < 4:
        parser.error(f"--rounds must be >= 4 (quartiles), got {args.rounds}")
    if args.calls < 1:
        parser.error(f"--calls must be >= 1, got {args.calls}")
    from resnet_fused import bench

    unknown = [d for d in args.dtype if d not in bench.DTYPES]
    if unknown:
        parser.error(f"--dtype must be among {sorted(bench.DTYPES)}, got {unknown}")
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}; "
          f"{platform.processor() or platform.machine()}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads; {args.rounds} rounds of {args.calls} forwards")
    cases = [_case(b, d, args) for d in args.dtype for b in args.batch]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "rounds": args.rounds, "calls": args.calls, "size": args.size,
                       "cases": cases}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
