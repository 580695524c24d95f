#!/usr/bin/env python
"""Winograd against oneDNN's direct conv for each stride-1 3x3 conv of a fused ResNet-50 (CPU).

    python benchmarks/cpu_winograd.py --batch 1 8 --dtype float32 bfloat16 --json out.json

Times the convs where they run, inside the model's forward pass (``cpu_in_model.py``): a layer's
filter then comes cold from memory, as it does in real use (a layer timed alone, back to back,
keeps its filter in cache, which flatters Winograd's larger one). Two fused copies of the same
random network are built, one with ``RESNET_FUSED_WINOGRAD=never`` and one with ``always``, and
called in alternating order, one forward each per round; every stride-1 3x3 conv's call is timed.
Prints, per layer, the median time of each algorithm, their ratio and the choice of ``auto``'s
rule, and each model's median forward time. ``--json`` also writes every round's times.
"""

from __future__ import annotations

import statistics
import sys

import torch
from cpu_in_model import parse_args, run_all
from cpu_in_model import run_case as run_in_model

SETTINGS = {"direct": "never", "winograd": "always"}  # label -> RESNET_FUSED_WINOGRAD


def _is_3x3_stride1(module) -> bool:
    return module.weight.shape[2:] == (3, 3) and module.stride == (1, 1)


def run_case(batch: int, dtype: torch.dtype, rounds: int, size: int) -> dict:
    from resnet_fused.cpu import winograd

    run = run_in_model(batch, dtype, rounds, size, "RESNET_FUSED_WINOGRAD", SETTINGS,
                       _is_3x3_stride1)
    times = run["layers"]
    layers = []
    for name, module in run["fused"]["winograd"].named_modules():
        if name not in times["winograd"]:
            continue
        n, c, h, w = run["inputs"][name]
        direct, wino = times["direct"][name], times["winograd"][name]
        # Under "always", images smaller than one tile still run direct (winograd.worthwhile).
        ran = module._onednn.algorithms.get((n, h, w), "direct")
        auto = winograd.worthwhile(h, w, dtype) and winograd.by_rule(n, h, w, dtype, c,
                                                                      module.out_channels)
        layers.append({"layer": name, "c": c, "k": module.out_channels, "n": n, "h": h, "w": w,
                       "tiles": winograd.tiles(n, h, w, dtype), "always_ran": ran,
                       "auto": "winograd" if auto else "direct",
                       "direct_s": direct, "winograd_s": wino,
                       "direct_median_s": statistics.median(direct),
                       "winograd_median_s": statistics.median(wino)})
    return {"batch": batch, "dtype": str(dtype).removeprefix("torch."), "size": size,
            "threads": torch.get_num_threads(), "rounds": rounds, "layers": layers,
            "model_s": run["model_s"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], ["float32", "bfloat16", "float16"], argv)
    return run_all(args, run_case, _report)


def _report(case: dict) -> None:
    print(f"\n## batch {case['batch']}, {case['dtype']}: model median "
          f"{statistics.median(case['model_s']['direct']) * 1e3:.1f} ms direct, "
          f"{statistics.median(case['model_s']['winograd']) * 1e3:.1f} ms Winograd "
          "(every eligible conv)")
    print(f"{'layer':<22} {'C->K':>9} {'HxW':>7} {'tiles':>5} {'direct ms':>9} "
          f"{'wino ms':>8} {'wino/direct':>11}  auto")
    for layer in case["layers"]:
        d, w = layer["direct_median_s"] * 1e3, layer["winograd_median_s"] * 1e3
        print(f"{layer['layer']:<22} {layer['c']:>4}->{layer['k']:<4} "
              f"{layer['h']:>3}x{layer['w']:<3} {layer['tiles']:>5} {d:>9.3f} {w:>8.3f} "
              f"{w / d:>11.2f}  {layer['auto']}"
              f"{'' if layer['always_ran'] == 'winograd' else ' (smaller than a tile)'}")


if __name__ == "__main__":
    sys.exit(main())
