#!/usr/bin/env python
"""This package's 1x1 kernel against oneDNN for each 1x1 conv of a fused ResNet-50 (CPU).

    python benchmarks/cpu_conv1x1.py --batch 1 8 --dtype float32 bfloat16 --json out.json

Times the convs where they run, inside the model's forward pass (``cpu_in_model.py``): weights
cold from memory, inputs just written by the layer before, residuals from a block earlier. Two
fused copies of the same random network are built, one with ``RESNET_FUSED_CONV1X1=never``
(oneDNN: its convolution with post-ops, the residual through its ``sum`` post-op) and one with
``auto`` (``resnet_fused::conv1x1`` / ``conv1x1_residual_``), and called in alternating order,
one forward each per round; every 1x1 conv's call is timed. Prints, per layer, the median time
of each and the median of the per-round ratios, and each model's median forward time and ratio.
``--json`` also writes every round's times.

``--alone`` times each distinct 1x1 conv shape of the model by itself instead: the two kernels
called back to back on one input (hot in cache, outputs allocated and freed in turn), rounds
alternating between them, each round the median of repeated calls (at least 20 ms); adds each
kernel's GFLOP/s. Inside the forward pass a conv's time includes the memory around it (its
weight cold, its output's pages new); alone it is mostly the kernel's arithmetic.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys

import torch
from cpu_in_model import median_ratio, parse_args, run_all
from cpu_in_model import run_case as run_in_model

SETTINGS = {"onednn": "never", "own": "auto"}  # label -> RESNET_FUSED_CONV1X1


def _is_1x1(module) -> bool:
    return module.weight.shape[2:] == (1, 1)


def _adds_residual(name: str) -> bool:
    # In a fused bottleneck block the residual is summed by the last conv (convs.2) of an
    # identity block, or by the skip conv of a downsample block (whose convs.2 then runs plain).
    return name.endswith(".skip") or (name.endswith(".convs.2") and not name.endswith(".0.convs.2"))


def run_case(batch: int, dtype: torch.dtype, rounds: int, size: int) -> dict:
    run = run_in_model(batch, dtype, rounds, size, "RESNET_FUSED_CONV1X1", SETTINGS, _is_1x1)
    times = run["layers"]
    layers = []
    for name, module in run["fused"]["own"].named_modules():
        if name not in times["own"]:
            continue
        n, c, h, w = run["inputs"][name]
        onednn, own = times["onednn"][name], times["own"][name]
        layers.append({"layer": name, "c": c, "k": module.out_channels, "n": n, "h": h, "w": w,
                       "stride": module.stride[0], "residual": _adds_residual(name),
                       "onednn_s": onednn, "own_s": own,
                       "onednn_median_s": statistics.median(onednn),
                       "own_median_s": statistics.median(own),
                       "own_over_onednn": median_ratio(own, onednn)})
    return {"batch": batch, "dtype": str(dtype).removeprefix("torch."), "size": size,
            "threads": torch.get_num_threads(), "rounds": rounds, "layers": layers,
            "model_s": run["model_s"],
            "model_own_over_onednn": median_ratio(run["model_s"]["own"],
                                                  run["model_s"]["onednn"])}


def run_alone(batch: int, dtype: torch.dtype, rounds: int, size: int) -> dict:
    """Each distinct 1x1 conv shape timed by itself, both kernels (see the module docstring)."""
    from resnet_fused.cpu.algorithms import cpu_timer

    run = run_in_model(batch, dtype, 1, size, "RESNET_FUSED_CONV1X1", SETTINGS, _is_1x1)
    generator = torch.Generator().manual_seed(batch)
    layers, seen = [], set()
    for name, module in run["fused"]["own"].named_modules():
        if name not in run["inputs"]:
            continue
        n, c, h, w = run["inputs"][name]
        residual = _adds_residual(name)
        shape = (c, module.out_channels, h, w, module.stride[0], residual, module.relu)
        if shape in seen:
            continue
        seen.add(shape)
        conv = module._onednn
        x = torch.randn(n, c, h, w, generator=generator).to(dtype).contiguous(
            memory_format=torch.channels_last)
        ho, wo = (h - 1) // module.stride[0] + 1, (w - 1) // module.stride[1] + 1
        r = (torch.randn(n, module.out_channels, ho, wo, generator=generator).to(dtype)
             .contiguous(memory_format=torch.channels_last) if residual else None)
        times = {"onednn": [], "own": []}
        algorithm = {"onednn": "onednn", "own": "conv1x1"}
        calls = {label: functools.partial(conv._compute, algorithm[label], x, r, module.relu,
                                          True) for label in times}
        with torch.inference_mode():
            for i in range(rounds):
                for label in (("onednn", "own") if i % 2 == 0 else ("own", "onednn")):
                    times[label].append(cpu_timer(calls[label], rounds=3, min_s=0.02))
        flop = 2 * n * ho * wo * c * module.out_channels
        layers.append({"layer": name, "c": c, "k": module.out_channels, "n": n, "h": h, "w": w,
                       "stride": module.stride[0], "residual": residual, "relu": module.relu,
                       "onednn_s": times["onednn"], "own_s": times["own"],
                       "onednn_median_s": statistics.median(times["onednn"]),
                       "own_median_s": statistics.median(times["own"]),
                       "own_over_onednn": median_ratio(times["own"], times["onednn"]),
                       "onednn_gflops": flop / statistics.median(times["onednn"]) / 1e9,
                       "own_gflops": flop / statistics.median(times["own"]) / 1e9})
    return {"batch": batch, "dtype": str(dtype).removeprefix("torch."), "size": size,
            "threads": torch.get_num_threads(), "rounds": rounds, "layers": layers,
            "alone": True}


def _check(args) -> str | None:
    from resnet_fused.cpu import conv1x1

    missing = [d for d in args.dtype if not conv1x1.available(getattr(torch, d))]
    if missing:
        return (f"this CPU cannot run the 1x1 kernel in {', '.join(missing)} "
                "(needs AVX-512; bfloat16 also AVX512_BF16)")
    return None


def main(argv: list[str] | None = None) -> int:
    alone = argparse.ArgumentParser(add_help=False)
    alone.add_argument("--alone", action="store_true")
    known, rest = alone.parse_known_args(argv)
    args = parse_args(__doc__.splitlines()[0] + " (--alone: each shape by itself)",
                      ["float32", "bfloat16"], rest, _check)
    return run_all(args, run_alone if known.alone else run_case, _report)


def _report(case: dict) -> None:
    alone = case.get("alone", False)
    if alone:
        print(f"\n## batch {case['batch']}, {case['dtype']}: each distinct 1x1 shape alone")
    else:
        model = case["model_s"]
        print(f"\n## batch {case['batch']}, {case['dtype']}: model median "
              f"{statistics.median(model['onednn']) * 1e3:.1f} ms oneDNN, "
              f"{statistics.median(model['own']) * 1e3:.1f} ms own 1x1 kernel; "
              f"own / oneDNN {case['model_own_over_onednn']:.3f} (median of rounds)")
    rates = f" {'oneDNN GF/s':>11} {'own GF/s':>8}" if alone else ""
    print(f"{'layer':<22} {'C->K':>10} {'HxW':>7} {'s':>1} {'res':>3} {'oneDNN ms':>9} "
          f"{'own ms':>8} {'own/oneDNN':>10}{rates}")
    for layer in case["layers"]:
        rates = (f" {layer['onednn_gflops']:>11.0f} {layer['own_gflops']:>8.0f}" if alone
                 else "")
        print(f"{layer['layer']:<22} {layer['c']:>4}->{layer['k']:<5} "
              f"{layer['h']:>3}x{layer['w']:<3} {layer['stride']:>1} "
              f"{'yes' if layer['residual'] else 'no':>3} "
              f"{layer['onednn_median_s'] * 1e3:>9.3f} {layer['own_median_s'] * 1e3:>8.3f} "
              f"{layer['own_over_onednn']:>10.3f}{rates}")


if __name__ == "__main__":
    sys.exit(main())
