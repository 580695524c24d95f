#!/usr/bin/env python
"""pytest-benchmark JSON -> a Markdown table and PNG plots.

    python benchmarks/report.py benchmarks/results/cpu/2026-11-22-cpu.json -o benchmarks/results/cpu
    python benchmarks/report.py model.json layers.json -o out --stem gpu

Writes ``<stem>.md`` (whole-model table: one row per model/batch/dtype, images/s per variant, the
best fused variant's speedup over the best baseline; per-layer table: time per variant, the
roofline floor, and the fused kernel against the convolution alone), ``<stem>-throughput.png``
(images/s by variant and batch) and ``<stem>-layers.png`` (per-layer time vs the roofline floor).
Plots need matplotlib; without it only the Markdown is written. Standard library otherwise, so it
runs wherever the JSON was produced.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

BASELINES = ("reference", "cudnn-fused", "compile")
# A CPU case whose threads ran less than this share of its wall time shared the cores with other
# work (conftest.py records ``cpu_busy``); its time is flagged, not trusted.
CONTENDED = 0.7
# Display order: baselines (per layer: conv alone, eager) first, then the fused backends; a
# variant's CUDA-graph replay follows it.
ORDER = ("reference", "cudnn-fused", "compile", "conv", "eager", "fused-cpu", "fused-cuda",
         "fused-triton", "fused-auto", "fused-aten")


def _order(variant: str) -> tuple:
    base, _, graph = variant.partition("+")
    return (ORDER.index(base) if base in ORDER else len(ORDER), base, graph)


def is_baseline(variant: str) -> bool:
    return variant.partition("+")[0] in BASELINES


def load(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """(benchmark records, machine infos) from pytest-benchmark JSON files."""
    records, machines = [], []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            # A run that was cut short leaves an empty or partial file: report the rest.
            print(f"report.py: skipping {path}: {e}", file=sys.stderr)
            continue
        info = dict(data.get("machine_info", {}))
        info["_file"] = os.path.basename(path)
        info["_datetime"] = data.get("datetime")
        info["_peaks"] = data.get("resnet_fused", {}).get("device_peaks", {})
        info["_command"] = data.get("resnet_fused", {}).get("command")
        machines.append(info)
        for b in data.get("benchmarks", []):
            extra = b.get("extra_info", {})
            stats = b.get("stats") or {}
            if "variant" not in extra or "median" not in stats:
                continue
            rec = {**extra, "median_s": stats["median"], "min_s": stats.get("min"),
                   "name": b.get("name")}
            # Floors from the run's final (best) measured peaks, when it recorded them.
            peak = info["_peaks"].get(f"torch.{extra.get('dtype')}")
            if peak and extra.get("flops") and extra.get("bytes"):
                rec["floor_s"] = max(extra["flops"] / peak["flops"],
                                     extra["bytes"] / peak["bandwidth"])
            records.append(rec)
    return records, machines


def use_stat(records: list[dict], stat: str) -> list[dict]:
    """Records whose time ``t_s`` is the chosen statistic of the rounds (``median`` or ``min``).

    ``min`` is the better estimate of what the code can do on a machine shared with other work
    (interference only ever adds time); ``median`` is the default, as everywhere else.
    """
    out = []
    for r in records:
        t = r.get(f"{stat}_s") or r["median_s"]
        out.append({**r, "t_s": t})
    return out


def _contended(r: dict) -> bool:
    return r.get("cpu_busy") is not None and r["cpu_busy"] < CONTENDED


def _images_per_s(r: dict) -> float:
    return r["batch"] / r.get("t_s", r["median_s"])


def model_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """Variants (columns) and one row per (model, batch, dtype) with images/s per variant."""
    table: dict[tuple, dict] = defaultdict(dict)
    variants = set()
    for r in records:
        if "layer" in r or "model" not in r:
            continue
        table[(r["model"], r["batch"], r["dtype"])][r["variant"]] = _images_per_s(r)
        if _contended(r):
            table[(r["model"], r["batch"], r["dtype"])].setdefault("_contended", set()).add(
                r["variant"])
        variants.add(r["variant"])
    cols = sorted(variants, key=_order)
    rows = []
    for (model, batch, dtype), ips in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                            kv[0][2])):
        contended = ips.pop("_contended", set())
        base = {v: x for v, x in ips.items() if is_baseline(v)}
        fused = {v: x for v, x in ips.items() if not is_baseline(v)}
        best_base = max(base.items(), key=lambda kv: kv[1]) if base else None
        best_fused = max(fused.items(), key=lambda kv: kv[1]) if fused else None
        speedup = best_fused[1] / best_base[1] if best_base and best_fused else None
        rows.append({"model": model, "batch": batch, "dtype": dtype, "ips": ips,
                     "contended": contended,
                     "best_baseline": best_base, "best_fused": best_fused, "speedup": speedup})
    return cols, rows


def layer_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """Variants and one row per (layer, batch, dtype) with seconds per variant and the floor."""
    table: dict[tuple, dict] = {}
    variants = set()
    for r in records:
        if "layer" not in r:
            continue
        key = (r["batch"], r["dtype"], r["layer"])
        row = table.setdefault(key, {"layer": r["layer"], "shape": r.get("shape", ""),
                                     "count": r.get("count", 1), "batch": r["batch"],
                                     "dtype": r["dtype"], "flops": r.get("flops"),
                                     "bytes": r.get("bytes"), "floor_s": r.get("floor_s"),
                                     "times": {}})
        row["times"][r["variant"]] = r.get("t_s", r["median_s"])
        if _contended(r):
            row.setdefault("contended", set()).add(r["variant"])
        if row["floor_s"] is None:
            row["floor_s"] = r.get("floor_s")
        variants.add(r["variant"])
    return sorted(variants, key=_order), list(table.values())


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _machine_lines(machines: list[dict]) -> list[str]:
    lines = []
    for m in machines:
        device = m.get("gpu") or f"CPU {m.get('cpu_model', '?')} ({m.get('torch_threads')} threads)"
        lines.append(
            f"- `{m['_file']}`: {device}; torch {m.get('torch')}, triton {m.get('triton')}, "
            f"CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}; {m.get('date') or m['_datetime']}")
        for dtype, p in (m.get("_peaks") or {}).items():
            lines.append(f"  - measured peaks ({dtype.replace('torch.', '')}): copy "
                         f"{p['bandwidth'] / 1e9:,.1f} GB/s, GEMM {p['flops'] / 1e12:,.3f} TFLOP/s")
        if m.get("_command"):
            lines.append(f"  - command: `{m['_command']}`")
    return lines


def markdown(records: list[dict], machines: list[dict], stat: str = "median") -> str:
    out = ["# resnet_fused benchmark report", "", *_machine_lines(machines), "",
           f"Times are the {stat} of each case's timed rounds.", ""]
    cols, rows = model_rows(records)
    if rows:
        out += ["## Whole model (images/s, channels_last, 224x224)", "",
                "Speedup: best fused variant over the best baseline "
                f"({', '.join(BASELINES)}, with or without CUDA graphs) measured in the same run.",
                "",
                "| model | batch | dtype | " + " | ".join(cols) + " | best fused / best baseline |",
                "|---|--:|---|" + "--:|" * len(cols) + "---|"]
        for r in rows:
            cells = [_fmt(r["ips"].get(c), ",.1f") + (" †" if c in r["contended"] else "")
                     for c in cols]
            if r["speedup"] is not None:
                best = (f"**{r['speedup']:.2f}x** ({r['best_fused'][0]} vs "
                        f"{r['best_baseline'][0]})")
            else:
                best = "–"
            out.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | " + " | ".join(cells)
                       + f" | {best} |")
        out.append("")
    lcols, lrows = layer_rows(records)
    if lrows:
        fused_cols = [c for c in lcols if c.startswith("fused-")]
        out += ["## Per layer (ResNet-50 conv shapes; time in µs)", "",
                "`conv`: the library convolution alone; `eager`: conv, BatchNorm, (+ residual), "
                "ReLU as separate ops; floor: max(FLOPs / GEMM rate, minimum bytes / copy "
                "bandwidth) on this device. `conv / fused` >= 1 means the fusion is free.", "",
                "| layer | shape | batch | dtype | " + " | ".join(lcols)
                + " | floor | best fused of floor | conv / fused |",
                "|---|---|--:|---|" + "--:|" * len(lcols) + "--:|--:|--:|"]
        for r in lrows:
            t = r["times"]
            fused = [t[c] for c in fused_cols if c in t]
            best = min(fused) if fused else None
            frac = r["floor_s"] / best if best and r["floor_s"] else None
            ratio = t["conv"] / best if best and "conv" in t else None
            out.append(f"| {r['layer']} | {r['shape']} | {r['batch']} | {r['dtype']} | "
                       + " | ".join(_fmt(t.get(c) and t[c] * 1e6, ",.1f")
                                    + (" †" if c in r.get("contended", ()) else "")
                                    for c in lcols)
                       + f" | {_fmt(r['floor_s'] and r['floor_s'] * 1e6, ',.1f')} | "
                       f"{_fmt(frac, '.1%')} | {_fmt(ratio, '.2f')} |")
        out.append("")
        # Whole network as the sum of its convs, each weighted by how often its shape occurs.
        out += ["Sum over all convs of ResNet-50 (weighted by occurrences), µs:", ""]
        for (batch, dtype) in sorted({(r["batch"], r["dtype"]) for r in lrows}):
            sel = [r for r in lrows if (r["batch"], r["dtype"]) == (batch, dtype)]
            parts = []
            for c in lcols:
                if all(c in r["times"] for r in sel):
                    parts.append(f"{c} {sum(r['count'] * r['times'][c] for r in sel) * 1e6:,.0f}")
            if all(r["floor_s"] for r in sel):
                parts.append(f"floor {sum(r['count'] * r['floor_s'] for r in sel) * 1e6:,.0f}")
            out.append(f"- batch {batch}, {dtype}: " + ", ".join(parts))
        out.append("")
    if any(_contended(r) for r in records):
        out += [f"†: the CPU was shared with other work during this case (its threads ran < "
                f"{CONTENDED:.0%} of the wall time), so its time is inflated.", ""]
    if not rows and not lrows:
        out.append("(no timed benchmarks in the input: was it run with --benchmark-disable?)")
    return "\n".join(out)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib is not installed, so no plots (`pip install matplotlib`); "
              "the Markdown table is still written", file=sys.stderr)
        return None
    return plt


def plot_throughput(records: list[dict], path: str) -> bool:
    cols, rows = model_rows(records)
    plt = _pyplot() if rows else None
    if plt is None:
        return False
    groups = sorted({(r["model"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(6, 1.2 * len(cols) + 4),
                                                      3.2 * len(groups)), squeeze=False)
    for ax, (model, dtype) in zip(axes[:, 0], groups, strict=True):
        sel = [r for r in rows if (r["model"], r["dtype"]) == (model, dtype)]
        width = 0.8 / max(1, len(cols))
        for i, c in enumerate(cols):
            xs = [j + i * width for j, r in enumerate(sel) if c in r["ips"]]
            ys = [r["ips"][c] for r in sel if c in r["ips"]]
            if ys:
                ax.bar(xs, ys, width, label=c, hatch="//" if is_baseline(c) else None)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sel))])
        ax.set_xticklabels([f"batch {r['batch']}" for r in sel])
        ax.set_ylabel("images/s")
        ax.set_title(f"{model}, {dtype} (hatched: baselines)")
        ax.legend(fontsize="small", ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_layers(records: list[dict], path: str) -> bool:
    cols, rows = layer_rows(records)
    plt = _pyplot() if rows else None
    if plt is None:
        return False
    groups = sorted({(r["batch"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(8, 0.45 * len(rows) / len(groups) + 3),
                                                      4.5 * len(groups)), squeeze=False)
    for ax, (batch, dtype) in zip(axes[:, 0], groups, strict=True):
        sel = [r for r in rows if (r["batch"], r["dtype"]) == (batch, dtype)]
        xs = range(len(sel))
        for c in cols:
            pts = [(x, r["times"][c] * 1e6) for x, r in zip(xs, sel, strict=True)
                   if c in r["times"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", linestyle="none", label=c)
        floor = [(x, r["floor_s"] * 1e6) for x, r in zip(xs, sel, strict=True) if r["floor_s"]]
        if floor:
            ax.step(*zip(*floor, strict=True), where="mid", color="black",
                    label="roofline floor")
        ax.set_yscale("log")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["layer"] for r in sel], rotation=70, ha="right", fontsize="small")
        ax.set_ylabel("time per call (µs)")
        ax.set_title(f"ResNet-50 conv layers, batch {batch}, {dtype}")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("-o", "--out", default=".", help="output folder")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="statistic of the timed rounds to report (min: for shared machines)")
    parser.add_argument("--no-plots", action="store_true", help="only the Markdown")
    parser.add_argument("--stem", default=None,
                        help="output file name stem (default: the first JSON's name)")
    args = parser.parse_args(argv)
    records, machines = load(args.json)
    records = use_stat(records, args.stat)
    stem = args.stem or os.path.splitext(os.path.basename(args.json[0]))[0]
    os.makedirs(args.out, exist_ok=True)
    text = markdown(records, machines, args.stat)
    md = os.path.join(args.out, f"{stem}.md")
    with open(md, "w") as f:
        f.write(text + "\n")
    print(text)
    written = [md]
    plots = () if args.no_plots else (("throughput", plot_throughput), ("layers", plot_layers))
    for suffix, plot in plots:
        png = os.path.join(args.out, f"{stem}-{suffix}.png")
        if plot(records, png):
            written.append(png)
    print("\nwrote: " + ", ".join(written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
