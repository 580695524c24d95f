#!/usr/bin/env python
"""Where the CPU time goes: fuse() vs torch.compile(freezing=True), inside and outside oneDNN.

    python benchmarks/onednn_split.py --batch 1 --dtype float32 --reps 12

Builds both variants of a random ResNet, then runs them alternately with oneDNN's verbose mode
on (each primitive execution is logged with its implementation, memory formats, post-ops and
time). Prints, per variant: the forward's wall time, the time inside oneDNN primitives, the rest
(pooling, the head, Python and framework overhead, oneDNN's per-call setup), and the set of
primitives run, so one can see whether the two run the same convolutions. Verbose logging
itself adds time to both walls alike (a line per primitive).
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import re
import statistics
import sys
import tempfile
import time

import torch

# The checkout's resnet_fused (this file's repository), not whichever one is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--reps", type=int, default=12, help="forwards per variant (alternating)")
    args = parser.parse_args(argv)

    import torch._inductor.config as inductor_config

    from resnet_fused import bench, fuse

    dtype = bench.DTYPES[args.dtype]
    model = bench.make_model(args.model)
    x = bench.make_input(args.batch, dtype, "cpu")
    variants = {"fuse()": fuse(model, dtype=dtype),
                "torch.compile": torch.compile(
                    copy.deepcopy(model).to(dtype=dtype, memory_format=torch.channels_last))}
    with torch.no_grad():
        with inductor_config.patch(freezing=True):
            variants["torch.compile"](x)
        for fn in variants.values():
            for _ in range(3):
                fn(x)
        # oneDNN writes its verbose lines to the process's stdout (fd 1): capture that fd.
        walls: dict[str, list[float]] = collections.defaultdict(list)
        with tempfile.TemporaryFile(mode="w+") as log:
            saved = os.dup(1)
            sys.stdout.flush()
            os.dup2(log.fileno(), 1)
            try:
                for _ in range(args.reps):
                    for name, fn in variants.items():
                        print(f"=== {name}", flush=True)
                        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                            t0 = time.perf_counter()
                            fn(x)
                            walls[name].append(time.perf_counter() - t0)
                        print("=== end", flush=True)
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
                os.close(saved)
            log.seek(0)
            text = log.read()
    inside: dict[str, list[float]] = collections.defaultdict(list)
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for m in re.finditer(r"=== (.+?)\n(.*?)=== end", text, re.S):
        name, lines = m.group(1), [ln.split(",") for ln in m.group(2).splitlines()
                                   if ",primitive,exec," in ln]
        inside[name].append(sum(float(f[-1]) for f in lines) / 1e3)  # ms -> s
        if len(inside[name]) == 1:
            for f in lines:  # kind, implementation, post-ops
                post = re.sub(r"attr-scratchpad:user ?", "", f[9]) or "-"
                kinds[name][(f[5], f[6], post)] += 1
    print(f"{args.model}, batch {args.batch}, {args.dtype}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.reps} alternating forwards per variant, ms "
          "(median / min):")
    for name in variants:
        w, i = walls[name], inside[name]
        rest = [a - b for a, b in zip(w, i, strict=True)]
        print(f"  {name:14s} wall {statistics.median(w) * 1e3:7.2f} / {min(w) * 1e3:7.2f}   "
              f"inside oneDNN {statistics.median(i) * 1e3:7.2f} / {min(i) * 1e3:7.2f}   "
              f"rest {statistics.median(rest) * 1e3:6.2f} / {min(rest) * 1e3:6.2f}")
    print("primitives per forward (kind, implementation, post-ops: count):")
    for name in variants:
        print(f"  {name}:")
        for (kind, impl, post), n in sorted(kinds[name].items()):
            print(f"    {kind:12s} {impl:32s} {post:36s} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
