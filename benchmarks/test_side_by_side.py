"""Whole model, every variant side by side in one interleaved run (CPU).

``test_model_throughput`` times each variant in its own block of rounds, so a burst of other
work on a shared machine lands on whichever variant runs then. Here each case builds all CPU
variants (eager ``reference``, ``fused-cpu`` = ``fuse(model)``, with ``--bench-compile yes``
``compile`` = ``torch.compile`` with freezing, and the CPU peers ``onnxruntime`` and ``openvino``
where installed, ``--bench-peers``), checks each against the higher-precision
reference, and then times them in rounds of one call each, in an order that rotates every round:
interference and drift hit every variant alike.

``test_layer_side_by_side`` does the same per distinct ResNet-50 conv shape for the fused conv
module ``fuse()`` builds (``fused-onednn``), oneDNN's convolution alone with the same prepacked
layout (``onednn-conv``: what fusion must not be slower than) and ``F.conv2d`` (``conv``).

The per-variant times of every round go to ``extra_info["side_by_side"]`` (seconds, in round
order) with their median, min, max and quartiles; ``benchmarks/cpu_table.py`` turns them into
the README's table. The pytest-benchmark statistics of the case itself are those of one whole
interleaved round (all variants), recorded for completeness.
"""

from __future__ import annotations

import pytest
import torch
from interleaved import record, run_rounds, spread

from resnet_fused import bench


def test_side_by_side(benchmark, bench_config, model_cache, side_by_side):
    model_name, batch, dtype_name = side_by_side
    device = bench_config.device
    if device.type != "cpu":
        pytest.skip("the interleaved whole-model comparison is the CPU suite's (GPU: the CLI)")
    dtype = bench.DTYPES[dtype_name]
    names = (["reference", "fused-cpu"] + (["compile"] if bench_config.compile else [])
             + list(bench_config.peers))
    model = model_cache.model(model_name)
    x = bench.make_input(batch, dtype, device)
    ref = model_cache.reference(model_name, x)
    benchmark.group = f"side by side {model_name} bs{batch} {dtype_name}"
    benchmark.extra_info.update(model=model_name, batch=batch, dtype=dtype_name,
                                variant="side-by-side", variants=names, device=str(device),
                                threads=torch.get_num_threads())
    variants, info = [], {}
    try:
        for name in names:
            try:
                variant = bench.build_variant(name, model, x)
            except bench.Unavailable as e:
                if name not in bench_config.peers:
                    raise
                info[name] = {"skipped": str(e)}  # e.g. ONNX Runtime has no bf16 convolutions
                continue
            err = bench.check_output(name, variant.fn(), ref, dtype, device)
            info[name] = {"rel_error": err, "setup_s": variant.setup_s, "note": variant.note}
            variants.append(variant)
        rounds = bench_config.rounds if bench_config.enabled else 1
        times, busy = run_rounds(benchmark, {v.name: v.fn for v in variants}, rounds,
                                 bench_config.warmup, device)
        record(benchmark, info, times, busy, batch)
    finally:
        variants.clear()
        if "compile" in names:
            torch._dynamo.reset()  # drops the compiled graph and its frozen weights


LAYER_VARIANTS = ("onednn-conv", "fused-onednn", "conv")


def test_layer_side_by_side(benchmark, bench_config, layer_side_by_side):
    layer, batch, dtype_name = layer_side_by_side
    device = bench_config.device
    if device.type != "cpu":
        pytest.skip("the interleaved per-layer comparison is the CPU suite's")
    dtype = bench.DTYPES[dtype_name]
    layer = layer.with_batch(batch)
    inputs = bench.make_layer_inputs(layer, dtype, device)
    benchmark.group = f"layer side by side {layer.name} bs{batch} {dtype_name}"
    benchmark.extra_info.update(layer=layer.name, shape=layer.label, count=layer.count,
                                batch=batch, dtype=dtype_name, variant="side-by-side",
                                variants=list(LAYER_VARIANTS), device=str(device),
                                threads=torch.get_num_threads(), flops=layer.flops())
    fns, info = {}, {}
    for name in LAYER_VARIANTS:
        try:
            fn, what = bench.layer_variant(name, layer, inputs)
        except bench.Unavailable as e:
            pytest.skip(f"{name}: {e}")
        ref = bench.layer_reference(layer, inputs, what)
        info[name] = {"rel_error": bench.check_output(f"{layer.name} {name}", fn(), ref, dtype,
                                                      device, scope="op")}
        fns[name] = fn
    rounds = bench_config.rounds if bench_config.enabled else 1
    times, busy = run_rounds(benchmark, fns, rounds, bench_config.warmup, device)
    benchmark.extra_info["cpu_busy"] = busy
    for name, t in times.items():
        info[name].update(spread(t), times_s=t)
    benchmark.extra_info["side_by_side"] = info
