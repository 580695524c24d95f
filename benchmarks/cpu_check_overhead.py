#!/usr/bin/env python
"""What the fused model's never-silent checks cost on the CPU fast path, measured in one process.

    python benchmarks/cpu_check_overhead.py --batches 1,8 --dtypes float32,bfloat16 --rounds 40

Per forward, ``FusedResNet`` reads its input once (``fused.all_finite``, the
``resnet_fused::all_finite`` op: a NaN or infinity sends the call to the kernels that keep it),
and each conv asks whether autograd records it (``fused.records_grad``) and whether the numbers
before it were finite (``keeps_finite``). This times the same fused ResNet-50 with those checks
as they are (``checked``) and with them answered without looking (``unchecked``: all finite,
nothing recorded), call by call, alternating, so the difference is the checks' cost alone;
outputs of both are compared bit for bit first. A third series, ``checked`` again (A/A), shows
the spread of such ratios when nothing differs. The result per configuration is the median of
the per-round ratios with their interquartile range; the input check (``all_finite``) is also
timed alone. Between checkouts, benchmarks/cpu_ab_revisions.py compares whole builds, but its
process-to-process spread (several percent on a shared VM) hides effects this small.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import resnet_fused
from resnet_fused import bench
from resnet_fused import fused as fused_module


def _unchecked():
    saved = fused_module.all_finite, fused_module.records_grad
    fused_module.all_finite = lambda *tensors: True
    fused_module.records_grad = lambda *tensors: False
    return saved


def _restore(saved) -> None:
    fused_module.all_finite, fused_module.records_grad = saved


def measure(batch: int, dtype_name: str, rounds: int, size: int = 224) -> dict:
    dtype = bench.DTYPES[dtype_name]
    model = bench.make_model("resnet50")
    x = bench.make_input(batch, dtype, "cpu", size=size)
    fused = resnet_fused.fuse(model, dtype=dtype)
    with torch.no_grad():
        checked_out = fused(x)
        saved = _unchecked()
        try:
            unchecked_out = fused(x)
        finally:
            _restore(saved)
        if not torch.equal(checked_out, unchecked_out):
            raise SystemExit(f"batch {batch} {dtype_name}: outputs differ with the checks off")
        for _ in range(3):
            fused(x)
        modes = ["checked", "unchecked", "checked_again"]
        times = {mode: [] for mode in modes}
        for r in range(rounds):
            k = r % len(modes)
            for mode in modes[k:] + modes[:k]:  # rotated: no mode always runs first
                saved = _unchecked() if mode == "unchecked" else None
                try:
                    start = time.perf_counter()
                    fused(x)
                    times[mode].append(time.perf_counter() - start)
                finally:
                    if saved is not None:
                        _restore(saved)
        start = time.perf_counter()
        for _ in range(200):
            fused_module.all_finite(x)
        input_check_s = (time.perf_counter() - start) / 200

    def ratio(a: str, b: str) -> dict:
        values = [p / q for p, q in zip(times[a], times[b], strict=True)]
        q = statistics.quantiles(values, n=4)
        return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}

    return {"batch": batch, "dtype": dtype_name, "rounds": rounds, "size": size,
            "checked_median_s": statistics.median(times["checked"]),
            "unchecked_median_s": statistics.median(times["unchecked"]),
            "ratio": ratio("checked", "unchecked"), "a_a_ratio": ratio("checked_again", "checked"),
            "input_check_s": input_check_s, "times_s": times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2")
    results = []
    print(f"# {bench.cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for batch in (int(b) for b in args.batches.split(",")):
        for dtype_name in args.dtypes.split(","):
            r = measure(batch, dtype_name, args.rounds, args.size)
            results.append(r)
            ratio, a_a = r["ratio"], r["a_a_ratio"]
            print(f"batch {batch} {dtype_name}: checked {r['checked_median_s'] * 1e3:.2f} ms, "
                  f"unchecked {r['unchecked_median_s'] * 1e3:.2f} ms, checked / unchecked "
                  f"{ratio['median']:.4f} (IQR {ratio['q1']:.4f}-{ratio['q3']:.4f}); A/A "
                  f"{a_a['median']:.4f} (IQR {a_a['q1']:.4f}-{a_a['q3']:.4f}); input check "
                  f"alone {r['input_check_s'] * 1e6:.1f} us", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "cpu": bench.cpu_model(),
                       "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
