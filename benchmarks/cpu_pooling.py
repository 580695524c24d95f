#!/usr/bin/env python
"""The CPU pooling ops of fused models against Inductor's and ATen's, interleaved.

    python benchmarks/cpu_pooling.py --rounds 300 --json out.json

For the stem's max-pool (3x3, stride 2, padding 1 over 64 x 112 x 112) and the global average pool
(2048 x 7 x 7), at batch 1 and 8 in float32 and bfloat16, channels_last: ``resnet_fused``'s op,
``torch.compile`` of the same torch function (Inductor's generated C++) and the eager ATen op are
each called once per round, in rotated order; every output is first checked against ATen's
(max: equal; mean: within rounding).
Prints the median time of each and the median (interquartile range) of the per-round ratio
ours / Inductor; ``--json`` also writes every round's times.
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
import torch.nn.functional as F

# The checkout's resnet_fused (this file's repository), not whichever one is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cases():
    from resnet_fused.cpu import pooling

    def max_pool(x):
        return F.max_pool2d(x, 3, 2, 1)

    def avg_pool(x):
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    yield ("max_pool2d 3x3/2 64x112x112", (64, 112, 112),
           lambda x: pooling.max_pool2d(x, (3, 3), (2, 2), (1, 1)), max_pool)
    yield ("global_avg_pool 2048x7x7", (2048, 7, 7), pooling.global_avg_pool, avg_pool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--json", default=None, help="also write every round's times here")
    args = parser.parse_args(argv)
    if args.rounds < 4:
        parser.error(f"--rounds must be >= 4 (quartiles), got {args.rounds}")

    records = []
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}; "
          f"{platform.processor() or platform.machine()}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads; {args.rounds} interleaved rounds")
    for name, chw, ours, torch_fn in _cases():
        for dtype in (torch.float32, torch.bfloat16):
            for batch in (1, 8):
                x = torch.randn(batch, *chw).to(dtype=dtype, memory_format=torch.channels_last)
                variants = {"ours": ours, "inductor": torch.compile(torch_fn), "aten": torch_fn}
                ref = torch_fn(x)
                for vname, fn in variants.items():
                    y = fn(x)
                    if name.startswith("global"):
                        # a mean: sums in another order than ATen's; within rounding, not equal
                        ok = torch.allclose(y.float(), ref.float(), rtol=1e-2, atol=1e-2)
                    else:
                        ok = torch.equal(y, ref)
                    if not ok:
                        print(f"{name} {dtype} batch {batch}: {vname} differs from ATen")
                        return 1
                    for _ in range(10):
                        fn(x)
                times = {v: [] for v in variants}
                order = list(variants)
                for r in range(args.rounds):
                    for v in order[r % 3:] + order[:r % 3]:
                        t0 = time.perf_counter()
                        variants[v](x)
                        times[v].append(time.perf_counter() - t0)
                ratios = [a / b for a, b in zip(times["ours"], times["inductor"], strict=True)]
                q = statistics.quantiles(ratios, n=4)
                med = {v: statistics.median(t) * 1e6 for v, t in times.items()}
                print(f"{name:<30} {str(dtype)[6:]:<9} batch {batch}: ours {med['ours']:7.0f} us,"
                      f" inductor {med['inductor']:7.0f} us, aten {med['aten']:7.0f} us; "
                      f"ours/inductor {statistics.median(ratios):.2f} ({q[0]:.2f}-{q[2]:.2f})")
                records.append({"op": name, "dtype": str(dtype), "batch": batch,
                                "times_s": times, "median_us": med})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "rounds": args.rounds, "records": records}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
