#!/usr/bin/env python
"""The CPU fast path's two ways of choosing each conv's algorithm, side by side in one process.

    python benchmarks/cpu_choice.py --batches 1,8 --dtypes float32,bfloat16 --rounds 30 \\
        --json out.json

The same random ResNet-50 (non-trivial BatchNorm) is fused twice: once under
``RESNET_FUSED_CPU_CHOICE=rule`` and once under ``measure`` (a fresh, temporary disk cache, so the
measurement happens here; its first call's time is reported). Both are checked against the fp64
model first, then called alternately for ``--rounds`` rounds; the result per configuration is the
median of the per-round ratios measure/rule with their interquartile range (< 1: measuring is
faster), and the convs whose choice differs between the two.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

import resnet_fused
from resnet_fused import tuning
from resnet_fused.bench.cli import machine_summary
from resnet_fused.cpu.capability import cpu_capability
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.testing import randomize_batchnorm_, relative_error, tolerance


def _choices(fused) -> dict:
    return {name: {str(k): [c.algorithm, c.why] for k, c in m._onednn.choices.items()}
            for name, m in fused.named_modules()
            if isinstance(m, FusedConvBNAct) and m._onednn is not None}


def _fused_under(choice: str, model, dtype, x) -> tuple[object, float]:
    """``model`` fused, its algorithms chosen under ``choice`` by a first call; that call's time."""
    os.environ["RESNET_FUSED_CPU_CHOICE"] = choice
    fused = resnet_fused.fuse(model, backend="cpu", dtype=dtype)
    start = time.perf_counter()
    with torch.inference_mode():
        fused(x)
    return fused, time.perf_counter() - start


def run_config(model, reference_logits, x, dtype, rounds: int) -> dict:
    fused = {}
    first_call = {}
    for choice in ("rule", "measure"):
        fused[choice], first_call[choice] = _fused_under(choice, model, dtype, x)
    bound = tolerance(dtype, "model")
    errors = {}
    with torch.inference_mode():
        for choice, m in fused.items():
            errors[choice] = relative_error(m(x), reference_logits)
            if not errors[choice] <= bound:
                raise SystemExit(f"{choice} {dtype}: relative error {errors[choice]:.3g} > {bound}")
        times = {c: [] for c in fused}
        for _ in range(3):  # warm-up, both
            for m in fused.values():
                m(x)
        for r in range(rounds):
            order = list(fused) if r % 2 == 0 else list(reversed(fused))
            for choice in order:
                start = time.perf_counter()
                fused[choice](x)
                times[choice].append(time.perf_counter() - start)
    ratios = [m / r for m, r in zip(times["measure"], times["rule"], strict=True)]
    q = statistics.quantiles(ratios, n=4)
    rule, measured = _choices(fused["rule"]), _choices(fused["measure"])
    differ = {name: {"rule": rule[name], "measure": measured[name]} for name in rule
              if [v[0] for v in rule[name].values()] != [v[0] for v in measured[name].values()]}
    return {"relative_error": errors, "first_call_s": first_call,
            "median_ms": {c: 1e3 * statistics.median(t) for c, t in times.items()},
            "ratio_measure_over_rule": {"median": statistics.median(ratios), "q1": q[0],
                                        "q3": q[2]},
            "convs_differing": differ, "choices_measure": measured}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args(argv)
    os.environ["RESNET_FUSED_CACHE_DIR"] = tempfile.mkdtemp(prefix="resnet_fused-choice-")
    tuning.clear()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = randomize_batchnorm_(resnet_fused.resnet50(), gen).eval()
    reference = copy.deepcopy(model).double()
    machine = machine_summary(torch.device("cpu"))
    command = " ".join(["python", "benchmarks/cpu_choice.py",
                        *(sys.argv[1:] if argv is None else argv)])
    out = {"command": command, "date": time.strftime("%Y-%m-%d"),
           "machine": machine, "cpu": cpu_capability()["name"], "python": platform.python_version(),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "load_avg_before": os.getloadavg(), "configs": {}}
    print(f"{machine}; ratio = measure / rule time (< 1: measuring is faster)")
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, 3, args.size, args.size, generator=gen)
            with torch.no_grad():
                logits = reference(x.double())
            result = run_config(model, logits, x, dtype, args.rounds)
            out["configs"][f"{dtype_name} batch {batch}"] = result
            r = result["ratio_measure_over_rule"]
            print(f"{dtype_name} batch {batch}: rule {result['median_ms']['rule']:.1f} ms, "
                  f"measure {result['median_ms']['measure']:.1f} ms, ratio {r['median']:.3f} "
                  f"(IQR {r['q1']:.3f}-{r['q3']:.3f}); first call (measuring) "
                  f"{result['first_call_s']['measure']:.1f} s; "
                  f"{len(result['convs_differing'])} convs choose otherwise")
            for name, both in result["convs_differing"].items():
                rule, measured = (next(iter(both[c].values())) for c in ("rule", "measure"))
                print(f"  {name}: rule -> {rule[0]}; measure -> {measured[0]} ({measured[1]})")
    out["load_avg_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
