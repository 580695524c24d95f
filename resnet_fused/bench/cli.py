"""``python -m resnet_fused bench``: build, check and time the variants side by side; roofline."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..progress import progress
from ..testing import relative_error
from .layers import conv_layers, layer_reference, layer_variant, make_layer_inputs
from .peers import PEERS
from .roofline import measure_peaks, model_floor, roofline_rows
from .timing import Timing, time_fn
from .variants import Unavailable, build_variant, default_variants, normalize_variant
from .workload import (
    DTYPES,
    MODELS,
    MismatchError,
    check_output,
    make_input,
    make_model,
    reference_output,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m resnet_fused bench``."""
    parser.add_argument("--model", choices=MODELS, default="resnet50")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: 8 on CPU, 256 on GPU)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="compute dtype (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if visible)")
    parser.add_argument("--backends", "--variants", dest="variants", nargs="+", default=None,
                        metavar="VARIANT",
                        help="variants to measure: reference, cudnn-fused, compile, "
                             "onnxruntime, openvino (CPU peers: pip install "
                             "\"resnet_fused[peers]\"), fused-<backend> (or just the backend: "
                             "cpu, cuda, triton, auto), optionally '+graph' (default: reference "
                             "+ fused on CPU; all baselines and fused backends on GPU, CUDA "
                             "graphs at batch 1)")
    parser.add_argument("--compile", action="store_true",
                        help="add the torch.compile baseline with freezing (GPU: mode "
                             "max-autotune; CPU: the default mode; minutes on a small CPU)")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed repetitions per variant (default: 5 on CPU, 50 on GPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls first (default: 1 on CPU, 10 on GPU)")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--roofline", action="store_true",
                        help="also print a per-layer roofline report (measures the device's "
                             "copy bandwidth and matmul rate first)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the results as JSON")
    parser.add_argument("--seed", type=int, default=0)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(f"{c!s:<{w}}" for c, w in zip(row, widths, strict=True)))


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else the architecture."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(device: torch.device) -> str:
    from ..backends import triton_version

    if device.type == "cuda":
        what = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cuDNN "
                f"{torch.backends.cudnn.version()}")
    else:
        what = f"CPU {cpu_model()}, {torch.get_num_threads()} threads"
        if hasattr(os, "getloadavg"):  # a busy shared machine shows here
            what += ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return f"{what}; torch {torch.__version__}, triton {triton_version()}"


def _error_status(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return f"ERROR: {type(e).__name__}: {first}"


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(25th, 50th, 75th) percentiles, linear interpolation; a single value is all three."""
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[1], q[2]


def measure_model(model: nn.Module, x: Tensor, variants: Sequence[str], warmup: int, reps: int,
                  ref: Tensor | None = None) -> list[dict]:
    """Builds, checks and times each variant; one result dict per variant.

    Never raises for a single variant: ``status`` is ``ok``, ``skipped: <why>``, ``MISMATCH`` (it
    ran but its output is outside the bound; never timed) or ``ERROR: <exception>`` (building,
    checking or a timed call raised; the other variants go on). The timed reps are interleaved
    (one call of each variant per round, the order rotated each round) so that clock drift,
    thermal state and other load on a shared machine hit every variant alike; ``times_s`` keeps
    every round, so ratios can be taken per round. A KeyboardInterrupt (SIGINT from a step's time
    limit) during the timed rounds ends the timing: the rows keep the rounds already done and
    their status says ``interrupted``.
    """
    if ref is None:
        ref = reference_output(model, x)
    results, ready = [], []
    for name in progress(list(variants), "build + check"):
        row = {"variant": name, "batch": x.shape[0], "dtype": str(x.dtype).replace("torch.", "")}
        results.append(row)
        try:
            variant = build_variant(name, model, x)
            row["setup_s"] = variant.setup_s
            y = variant.fn()
            row["rel_error"] = relative_error(y.float(), ref)
            check_output(name, y, ref, x.dtype, x.device)
            del y
            ready.append((row, variant))
        except Unavailable as e:
            row["status"] = f"skipped: {e}"
        except MismatchError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            row["status"] = "MISMATCH"
        except Exception as e:  # one broken variant must not cost the whole table
            row["status"] = _error_status(e)
            print(f"ERROR: {name}: {row['status']}", file=sys.stderr)
    times: dict[str, list[float]] = {row["variant"]: [] for row, _ in ready}
    interrupted = False
    try:
        for row, variant in list(ready):
            try:
                time_fn(variant.fn, x.device, warmup=0, reps=max(1, warmup))
            except Exception as e:
                row["status"] = _error_status(e)
                ready.remove((row, variant))
        for i in progress(range(reps), "timed rounds"):
            # Rotate who goes first each round: no variant always runs right after the same one
            # (a cache or frequency state left by its predecessor would bias it).
            shift = i % max(1, len(ready))
            for row, variant in ready[shift:] + ready[:shift]:
                try:
                    times[row["variant"]] += time_fn(variant.fn, x.device, warmup=0, reps=1).times
                except Exception as e:
                    row["status"] = _error_status(e)
                    ready.remove((row, variant))
    except KeyboardInterrupt:
        interrupted = True
        print("\nbench: interrupted; the table has the rounds done so far", file=sys.stderr)
    finally:
        for row, _variant in ready:
            t = times[row["variant"]]
            if not t:
                row["status"] = "interrupted before timing"
                continue
            timing = Timing(t)
            q1, med, q3 = _quartiles(t)
            row.update(status="ok" + (f" (interrupted, {len(t)} rounds)" if interrupted else ""),
                       median_s=med, min_s=timing.min, stdev_s=timing.stdev, q1_s=q1, q3_s=q3,
                       times_s=list(t), images_per_s=x.shape[0] / med)
        ready.clear()
        if "compile" in variants:
            torch._dynamo.reset()  # frees the compiled graph and its frozen weights
        if x.is_cuda:
            torch.cuda.empty_cache()
    return results


def speedup(row: dict, base: dict) -> tuple[float, float, float] | None:
    """(25th, 50th, 75th percentile) over the interleaved rounds of base time / row time."""
    a, b = row.get("times_s"), base.get("times_s")
    if not a or not b:
        return None
    n = min(len(a), len(b))
    return _quartiles([tb / ta for ta, tb in zip(a[:n], b[:n], strict=True)])


BASELINES = ("reference", "cudnn-fused", "compile", *PEERS)


def verdict_lines(results: list[dict], dtype: torch.dtype, device: torch.device) -> list[str]:
    """One line per fused variant: speedup over the reference and over the best baseline, each
    with its spread over rounds, and whether its output matched the reference."""
    from ..testing import tolerance

    timed = {r["variant"]: r for r in results if r.get("times_s")}
    ref = timed.get("reference")
    base_rows = [timed[b] for b in BASELINES if b in timed]
    best = min(base_rows, key=lambda r: r["median_s"]) if base_rows else None
    bound = tolerance(dtype, "model", device)
    lines = []
    for name, row in timed.items():
        if not name.startswith("fused-"):
            continue
        parts = []
        comparisons = [("the reference", ref)]
        if best is not None and best is not ref:
            comparisons.append((f"the best baseline ({best['variant']})", best))
        for label, base in comparisons:
            if base is None:
                continue
            q1, med, q3 = speedup(row, base)
            parts.append(f"{med:.2f}x {label} (rounds' IQR {q1:.2f}-{q3:.2f}x)")
        verdict = "FASTER" if best is not None and row["median_s"] < best["median_s"] else "SLOWER"
        lines.append(f"{name}: {verdict}: " + ", ".join(parts) +
                     f"; output within bound (rel. error {row['rel_error']:.1e} <= {bound:.0e})")
    for r in results:
        if r["status"] == "MISMATCH":
            lines.append(f"{r['variant']}: FAILED: output outside the bound "
                         f"(rel. error {r.get('rel_error', math.nan):.1e} > {bound:.0e})")
        elif r["status"].startswith("ERROR"):
            lines.append(f"{r['variant']}: FAILED: {r['status']}")
    return lines


LEGEND = """\
images/s, ms/batch   medians over the interleaved timed rounds (one call of each variant per round)
spread               interquartile range of the round times, as a percentage of the median
vs reference         median over rounds of (reference time / variant time), with its IQR
rel. error           ||y - ref|| / ||ref|| against the reference model in float64 (fp32 for
                     fp16/bf16); every variant is checked before it is timed
setup s              time to build the variant (fuse, torch.compile, CUDA-graph capture), not
                     part of the throughput"""


def run(args: argparse.Namespace) -> int:
    """``python -m resnet_fused bench``: 0 if every measured variant matched the reference."""
    from ..backends import parse_device

    try:
        device = parse_device(args.device)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    gpu = device.type == "cuda"
    batch = args.batch or (256 if gpu else 8)
    dtype = DTYPES[args.dtype or ("bfloat16" if gpu else "float32")]
    reps = args.iters or (50 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    if args.variants:
        try:
            variants = [normalize_variant(v) for v in args.variants]
        except ValueError as e:
            print(f"--backends: {e}", file=sys.stderr)
            return 2
        if args.compile and "compile" not in variants:
            variants.append("compile")
    else:
        variants = default_variants(device, batch, include_compile=args.compile or None)
    if "reference" not in variants:
        variants.insert(0, "reference")  # the speedup column needs it

    print(f"bench: {args.model}, batch {batch}, {str(dtype).replace('torch.', '')}, "
          f"{args.size}x{args.size}, channels_last, {reps} interleaved rounds after {warmup} "
          "warm-up")
    print(f"machine: {machine_summary(device)}")
    model = make_model(args.model, device, args.seed)
    x = make_input(batch, dtype, device, args.size, args.seed)
    results = measure_model(model, x, variants, warmup, reps)
    interrupted = any("interrupted" in r["status"] for r in results)
    ref_row = next((r for r in results if r["variant"] == "reference"), {})
    rows = []
    for r in results:
        ips, med = r.get("images_per_s"), r.get("median_s")
        spread = (r["q3_s"] - r["q1_s"]) / med if med else None
        ratio = speedup(r, ref_row) if ref_row else None
        rows.append([r["variant"], _fmt(ips, ",.1f"), _fmt(med and med * 1e3, ".2f"),
                     _fmt(spread and spread * 100, ".1f") + ("%" if spread is not None else ""),
                     (f"{ratio[1]:.2f}x ({ratio[0]:.2f}-{ratio[2]:.2f})" if ratio else "-"),
                     _fmt(r.get("rel_error"), ".2e"), _fmt(r.get("setup_s"), ".1f"),
                     r["status"]])
    print()
    _print_table(["variant", "images/s", "ms/batch", "spread", "vs reference", "rel. error",
                  "setup s", "status"], rows)
    print()
    print(LEGEND)
    print()
    for line in verdict_lines(results, dtype, device) or ["no fused variant was timed"]:
        print(f"verdict: {line}")
    failed = any(r["status"] == "MISMATCH" or r["status"].startswith("ERROR") for r in results)

    report: dict = {"model": args.model, "batch": batch, "dtype": str(dtype), "device": str(device),
                    "machine": machine_summary(device), "results": results}
    if args.roofline and not interrupted:
        report["roofline"] = _roofline_report(args.model, batch, dtype, device, args.size, results,
                                              warmup, reps)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    if failed:
        print("\nFAILED: at least one variant does not match the reference or raised (see above)",
              file=sys.stderr)
    if interrupted:
        return 130
    return 1 if failed else 0


def _roofline_report(model_name: str, batch: int, dtype: torch.dtype, device: torch.device,
                     size: int, results: list[dict], warmup: int, reps: int) -> dict:
    backend = "cpu" if device.type == "cpu" else "auto"
    print(f"\nroofline: measuring {device.type} copy bandwidth and {_dt(dtype)} GEMM rate ...")
    peaks = measure_peaks(device, dtype)
    print(f"  copy bandwidth {peaks.bandwidth / 1e9:,.1f} GB/s; GEMM {peaks.flops / 1e12:,.3f} "
          f"TFLOP/s (matmul {peaks.matmul_flops / 1e12:,.3f}, 1x1 conv "
          f"{peaks.conv1x1_flops / 1e12:,.3f}); best of 10, measured now")
    layers = [layer.with_batch(batch) for layer in conv_layers(model_name, 1, size)]
    esize = torch.empty((), dtype=dtype).element_size()
    achieved, errors = {}, {}
    for layer in progress(layers, f"layers (fused-{backend})"):
        try:
            inputs = make_layer_inputs(layer, dtype, device)
            fn, what = layer_variant(f"fused-{backend}", layer, inputs)
            y = fn()
            ref = layer_reference(layer, inputs, what)
            errors[layer.name] = check_output(f"{layer.name} fused-{backend}", y, ref, dtype,
                                              device, scope="op")
            achieved[layer.name] = time_fn(fn, device, warmup, reps).median
            del inputs, y, ref
        except Exception as e:  # one failing layer leaves a gap, not a missing table
            print(f"ERROR: {layer.name}: {_error_status(e)}", file=sys.stderr)
            errors[layer.name] = math.nan
    rows = roofline_rows(layers, peaks, esize, achieved)
    print(f"\nper-layer roofline, fused-{backend}, batch {batch}, {_dt(dtype)} "
          "(floor = max(FLOPs / GEMM rate, min bytes / copy bandwidth)):")
    _print_table(
        ["layer", "shape", "x", "GFLOP", "MB", "compute us", "memory us", "bound", "achieved us",
         "of floor", "rel. err"],
        [[r["layer"], r["shape"], r["count"], f"{r['flops'] / 1e9:.2f}", f"{r['bytes'] / 1e6:.1f}",
          f"{r['compute_floor_s'] * 1e6:.1f}", f"{r['memory_floor_s'] * 1e6:.1f}", r["bound"],
          _fmt(r["achieved_s"] and r["achieved_s"] * 1e6, ".1f"), _fmt(r["fraction"], ".1%"),
          f"{errors[r['layer']]:.1e}"] for r in rows])
    floor = model_floor(rows)
    missing = [r["layer"] for r in rows if r["achieved_s"] is None]
    # A failed layer counts at its floor in the sum (so the sum stays a lower bound), and says so.
    convs_achieved = sum(r["count"] * (r["achieved_s"] or r["floor_s"]) for r in rows)
    print(f"\nwhole model, batch {batch} (convs only; images/s at the floor):")
    print(f"  compute floor    {floor['compute'] * 1e3:9.3f} ms  "
          f"{batch / floor['compute']:>12,.0f} img/s")
    print(f"  memory floor     {floor['memory'] * 1e3:9.3f} ms  "
          f"{batch / floor['memory']:>12,.0f} img/s  (one fused kernel per conv)")
    print(f"  per-layer floor  {floor['per_layer'] * 1e3:9.3f} ms  "
          f"{batch / floor['per_layer']:>12,.0f} img/s")
    print(f"  sum of layers    {convs_achieved * 1e3:9.3f} ms  {batch / convs_achieved:>12,.0f} "
          f"img/s  = {floor['per_layer'] / convs_achieved:.1%} of the per-layer floor"
          + (f" (failed layers counted at their floor: {', '.join(missing)})" if missing else ""))
    whole = {}
    for r in results:
        if r.get("images_per_s") and r["variant"].startswith("fused-"):
            whole[r["variant"]] = r["median_s"]
            print(f"  {r['variant']:<16} {r['median_s'] * 1e3:9.3f} ms  "
                  f"{r['images_per_s']:>12,.0f} img/s  = "
                  f"{floor['per_layer'] / r['median_s']:.1%} of the per-layer floor")
    return {"peaks": dataclasses.asdict(peaks), "layers": rows, "floor_s": floor,
            "layers_sum_s": convs_achieved, "model_s": whole}

