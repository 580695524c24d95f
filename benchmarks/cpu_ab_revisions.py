#!/usr/bin/env python
"""Did a change make the fused model slower? ``fuse(resnet50)`` at two checkouts, same machine.

    python benchmarks/cpu_ab_revisions.py --a /path/to/old-checkout --b . \\
        --batches 1,8 --dtypes float32,bfloat16 --rounds 6 --json ab.json

Each checkout must have its ``_C`` built in place (``python setup.py build_ext --inplace``, or
an editable install). Two builds of the package cannot share one process (their ops share a
namespace), so every measurement is a fresh process with ``PYTHONPATH`` set to one checkout:
it builds the benchmark model (``resnet_fused.bench.make_model``, seeded), fuses it, checks its
output against the float64 reference, warms up and times ``--calls`` forwards under
``torch.no_grad``, and reports their median. Rounds alternate the two checkouts (A then B, then
B then A, ...) so drift on a shared machine hits both; the result per configuration is the
median of the per-round ratios B / A with their interquartile range (< 1: B is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_CHILD = r"""
import json, statistics, sys, time
import torch
import resnet_fused
from resnet_fused import bench
batch, dtype_name, calls, threads, size = sys.argv[1:6]
batch, calls, size = int(batch), int(calls), int(size)
torch.set_num_threads(int(threads))
dtype = bench.DTYPES[dtype_name]
model = bench.make_model("resnet50")
x = bench.make_input(batch, dtype, "cpu", size=size)
fused = resnet_fused.fuse(model, dtype=dtype)
with torch.no_grad():
    err = bench.check_output("fused", fused(x), bench.reference_output(model, x), dtype, "cpu")
    for _ in range(3):
        fused(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fused(x)
        times.append(time.perf_counter() - start)
print(json.dumps({"median_s": statistics.median(times), "min_s": min(times), "rel_error": err,
                  "package": resnet_fused.__file__}))
"""


def _measure(tree: str, batch: int, dtype: str, calls: int, threads: int, size: int) -> dict:
    # Run in the checkout: `python -c` puts the working directory first on sys.path.
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(batch), dtype, str(calls),
                           str(threads), str(size)], env=env, cwd=os.path.abspath(tree),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree} (batch {batch}, {dtype}) failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = os.path.join(os.path.abspath(tree), "resnet_fused")
    if not result["package"].startswith(expected):
        raise SystemExit(f"{tree}: the child imported {result['package']}, not that checkout "
                         "(is its _C built in place?)")
    return result


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="the baseline checkout")
    parser.add_argument("--b", required=True, help="the changed checkout")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=15, help="timed forwards per process")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be >= 1")
    for tree in (args.a, args.b):
        if not os.path.isdir(os.path.join(tree, "resnet_fused")):
            parser.error(f"{tree} is not a resnet_fused checkout (no resnet_fused/ folder)")
    configs = [(int(b), d) for b in args.batches.split(",") for d in args.dtypes.split(",")]
    record = {"a": os.path.abspath(args.a), "b": os.path.abspath(args.b),
              "threads": args.threads, "calls": args.calls, "size": args.size,
              "command": " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "configs": []}
    for batch, dtype in configs:
        rows = []
        for r in range(args.rounds):
            order = ("a", "b") if r % 2 == 0 else ("b", "a")
            got = {side: _measure(getattr(args, side), batch, dtype, args.calls, args.threads,
                                  args.size)
                   for side in order}
            rows.append(got)
            print(f"batch {batch} {dtype} round {r + 1}: A {got['a']['median_s'] * 1e3:.2f} ms, "
                  f"B {got['b']['median_s'] * 1e3:.2f} ms", flush=True)
        ratios = [row["b"]["median_s"] / row["a"]["median_s"] for row in rows]
        q1, med, q3 = _quartiles(ratios)
        a_med = statistics.median(row["a"]["median_s"] for row in rows)
        b_med = statistics.median(row["b"]["median_s"] for row in rows)
        print(f"batch {batch} {dtype}: A {a_med * 1e3:.2f} ms, B {b_med * 1e3:.2f} ms, "
              f"B / A = {med:.3f} (IQR {q1:.3f}-{q3:.3f})", flush=True)
        record["configs"].append({"batch": batch, "dtype": dtype, "rounds": rows,
                                  "ratio_b_over_a": {"median": med, "q1": q1, "q3": q3}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
