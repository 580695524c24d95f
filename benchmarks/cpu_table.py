#!/usr/bin/env python
"""Side-by-side CPU runs (``test_side_by_side.py`` JSON) -> the README's CPU table and a plot.

    python benchmarks/cpu_table.py run-2threads.json run-1thread.json -o results/cpu --stem NAME

One row per (model, batch, dtype, threads): images/s of each variant as the median of its rounds
with the [min - max] over rounds, then ``fuse()``'s speedup over ``torch.compile`` and over eager
as the median of the per-round ratios (both variants timed in the same round, so a slow round
hits both) with their interquartile range. Per-layer side-by-side records
(``test_layer_side_by_side``) in the input add ``<stem>-layers-vs-conv.md``: the fused conv's
time over oneDNN's convolution alone, per-round ratios likewise. Writes ``<stem>.md`` and, with
matplotlib, ``<stem>.png``. Standard library otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

VARIANTS = ("reference", "compile", "onnxruntime", "openvino", "fused-cpu")
LABELS = {"reference": "eager", "fused-cpu": "fuse()", "compile": "torch.compile",
          "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
BASELINES = ("reference", "compile", "onnxruntime", "openvino")


def load(paths: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    rows, machines, layers = [], [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        machine = data.get("machine_info", {})
        machines.append({"file": os.path.basename(path), "cpu": machine.get("cpu_model"),
                         "threads": machine.get("torch_threads"), "torch": machine.get("torch"),
                         "date": machine.get("date"),
                         "command": data.get("resnet_fused", {}).get("command")})
        for b in data.get("benchmarks", []):
            extra = b.get("extra_info", {})
            if "side_by_side" not in extra:
                continue
            threads = extra.get("threads", machine.get("torch_threads"))
            if "layer" in extra:
                layers.append({**extra, "threads": threads})
            else:
                rows.append({**{k: extra[k] for k in ("model", "batch", "dtype")},
                             "threads": threads, "cpu_busy": extra.get("cpu_busy"),
                             "v": extra["side_by_side"]})
    return rows, machines, layers


def layer_markdown(layers: list[dict]) -> str:
    """fused-onednn over onednn-conv per layer shape, from interleaved rounds."""
    out = ["| layer | shape | x | batch | dtype | threads | oneDNN conv alone µs | fused µs | "
           "fused / alone | conv2d µs |",
           "|---|---|--:|--:|---|--:|--:|--:|--:|--:|"]
    worst: dict[tuple, tuple[float, str]] = {}
    total: dict[tuple, list[float]] = {}
    for r in sorted(layers, key=lambda r: (r["dtype"], r["batch"], r["threads"])):
        v = r["side_by_side"]
        if "onednn-conv" not in v or "fused-onednn" not in v:
            continue
        med, q1, q3 = ratio_stats(v["fused-onednn"]["times_s"], v["onednn-conv"]["times_s"])
        key = (r["batch"], r["dtype"], r["threads"])
        if med > worst.get(key, (0.0, ""))[0]:
            worst[key] = (med, r["layer"])
        acc = total.setdefault(key, [0.0, 0.0])
        acc[0] += r["count"] * v["onednn-conv"]["median_s"]
        acc[1] += r["count"] * v["fused-onednn"]["median_s"]
        conv = f"{v['conv']['median_s'] * 1e6:,.0f}" if "conv" in v else "–"
        out.append(f"| {r['layer']} | {r['shape']} | {r['count']} | {r['batch']} | {r['dtype']} "
                   f"| {r['threads']} | {v['onednn-conv']['median_s'] * 1e6:,.0f} | "
                   f"{v['fused-onednn']['median_s'] * 1e6:,.0f} | {med:.2f} ({q1:.2f}–{q3:.2f}) "
                   f"| {conv} |")
    out += ["", "Times: median of the interleaved rounds. `fused / alone`: median of the per-round "
            "ratios (interquartile range). `oneDNN conv alone`: the same oneDNN convolution with "
            "a prepacked weight, no bias, no post-ops; `fused`: the module fuse() builds (BN "
            "folded into weight and bias, ReLU and the residual sum as post-ops, the residual "
            "summed in place as in the model; +res layers also read the residual; the 1x1 "
            "convs on this package's own kernel, the stride-1 3x3 convs Winograd where "
            "`auto` picks it); `conv2d`: F.conv2d on the dense weight.", ""]
    for key in sorted(worst):
        (batch, dtype, threads), (ratio, layer) = key, worst[key]
        alone, fused = total[key]
        out.append(f"- batch {batch}, {dtype}, {threads} threads: all convs of ResNet-50 "
                   f"(weighted by occurrence) {fused / alone:.3f}x the time of the convs alone; "
                   f"largest per-layer ratio {ratio:.2f} ({layer})")
    return "\n".join(out) + "\n"


def ratio_stats(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of num[i] / den[i] over the rounds (same round, same conditions)."""
    r = [a / b for a, b in zip(num, den, strict=True)]
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return statistics.median(r), q[0], q[2]


def _timed(v: dict) -> dict:
    """The variants of one row that were timed (a peer may be listed as skipped)."""
    return {name: t for name, t in v.items() if t.get("times_s")}


def _ips(v: dict, name: str, batch: int) -> str:
    if name not in v:
        return "–"
    t = v[name]
    return f"{batch / t['median_s']:.1f} [{batch / t['max_s']:.1f}–{batch / t['min_s']:.1f}]"


def _speedup(v: dict, base: str) -> str:
    if base not in v or "fused-cpu" not in v:
        return "–"
    med, q1, q3 = ratio_stats(v[base]["times_s"], v["fused-cpu"]["times_s"])
    return f"**{med:.2f}x** ({q1:.2f}–{q3:.2f})"


def _fastest_baseline(v: dict) -> str | None:
    present = [b for b in BASELINES if b in v]
    return min(present, key=lambda b: v[b]["median_s"]) if present else None


def markdown(rows: list[dict], machines: list[dict]) -> str:
    shown = [n for n in VARIANTS if any(n in _timed(r["v"]) for r in rows)]
    out = ["| model | batch | dtype | threads | "
           + " | ".join(f"{LABELS[n]} img/s" for n in shown)
           + " | fuse() / fastest other | fuse() / eager | rounds | CPU busy |",
           "|---|--:|---|--:|" + "--:|" * len(shown) + "---|--:|--:|--:|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["batch"], r["dtype"], -r["threads"])):
        v, batch = _timed(r["v"]), r["batch"]
        busy = f"{r['cpu_busy']:.2f}" if r.get("cpu_busy") is not None else "–"
        fastest = _fastest_baseline(v)
        vs_fastest = (f"{_speedup(v, fastest)} vs {LABELS[fastest]}" if fastest else "–")
        rounds = v["fused-cpu"]["rounds"] if "fused-cpu" in v else "–"
        out.append(f"| {r['model']} | {batch} | {r['dtype']} | {r['threads']} | "
                   + " | ".join(_ips(v, n, batch) for n in shown)
                   + f" | {vs_fastest} | {_speedup(v, 'reference')} | {rounds} | {busy} |")
    out += ["", "images/s: median of the rounds [slowest round – fastest round]. Speedups: median "
            "of the per-round ratios of the two variants' times (interquartile range in "
            "parentheses), > 1 when fuse() is faster; `fastest other`: the baseline with the "
            "smallest median time in that row. CPU busy: share of the process's threads that "
            "ran during the timed rounds (1.0 = the cores were ours).", ""]
    skipped = sorted({f"{LABELS.get(n, n)}: {t['skipped']}" for r in rows
                      for n, t in r["v"].items() if "skipped" in t})
    out += [f"- not run: {line}" for line in skipped]
    for m in machines:
        out.append(f"- `{m['file']}`: CPU {m['cpu']}, {m['threads']} threads, torch {m['torch']}, "
                   f"{m['date']}; `{m['command']}`")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = sorted(rows, key=lambda r: (r["batch"], r["dtype"], r["threads"]))
    shown = [n for n in VARIANTS if any(n in _timed(r["v"]) for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.8 / len(shown)
    for i, name in enumerate(shown):
        xs, med, lo, hi = [], [], [], []
        for j, r in enumerate(rows):
            if name in _timed(r["v"]):
                t = r["v"][name]
                m = r["batch"] / t["median_s"]
                xs.append(j + (i - (len(shown) - 1) / 2) * width)
                med.append(m)
                lo.append(m - r["batch"] / t["max_s"])
                hi.append(r["batch"] / t["min_s"] - m)
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=LABELS[name])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"bs{r['batch']} {r['dtype']}\n{r['threads']} thr" for r in rows],
                       fontsize=8)
    ax.set_ylabel("images/s (median; bars: slowest–fastest round)")
    ax.set_title(f"{rows[0]['model']} on CPU, 224x224, channels_last, interleaved rounds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("-o", "--out", default=".")
    parser.add_argument("--stem", default="cpu-side-by-side")
    args = parser.parse_args(argv)
    rows, machines, layers = load(args.json)
    if layers:
        path = os.path.join(args.out, f"{args.stem}-layers-vs-conv.md")
        os.makedirs(args.out, exist_ok=True)
        with open(path, "w") as f:
            f.write(layer_markdown(layers))
        print(f"wrote {path}")
    if not rows and not layers:
        print("cpu_table.py: no side-by-side results in the input (run test_side_by_side.py "
              "without --benchmark-disable)", file=sys.stderr)
        return 1
    if not rows:
        return 0
    os.makedirs(args.out, exist_ok=True)
    md = os.path.join(args.out, f"{args.stem}.md")
    with open(md, "w") as f:
        f.write(markdown(rows, machines))
    print(f"wrote {md}")
    png = os.path.join(args.out, f"{args.stem}.png")
    if plot(rows, png):
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
