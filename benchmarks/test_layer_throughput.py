"""Per-layer throughput: each distinct ResNet-50 conv shape (224x224 input), fused vs unfused.

Variants: ``conv`` (cuDNN / oneDNN convolution alone: fusion should cost nothing on top of it),
``eager`` (conv -> BatchNorm -> (+ residual) -> ReLU as separate PyTorch ops) and
``fused-<backend>`` (``resnet_fused.ops.conv_bn_act``). Every output is checked against the fp64
(fp32 inputs) or fp32 (fp16/bf16 inputs) reference with docs/design.md's per-op bound before timing.
``extra_info``: GB/s of the minimum traffic, TFLOP/s, the roofline floor of this device (measured
once per run) and the achieved fraction of it.
"""

from __future__ import annotations

import pytest
import torch

from resnet_fused import bench


def test_layer_throughput(benchmark, bench_config, timed, device_peaks, layer, batch, dtype_name,
                          layer_variant):
    device = bench_config.device
    dtype = bench.DTYPES[dtype_name]
    layer = layer.with_batch(batch)
    inputs = bench.make_layer_inputs(layer, dtype, device)
    benchmark.group = f"{layer.name} bs{batch} {dtype_name}"
    flops, nbytes = layer.flops(), layer.min_bytes(torch.empty((), dtype=dtype).element_size())
    benchmark.extra_info.update(layer=layer.name, shape=layer.label, count=layer.count,
                                batch=batch, dtype=dtype_name, variant=layer_variant,
                                backend=layer_variant, device=str(device), flops=flops,
                                bytes=nbytes)
    try:
        fn, what = bench.layer_variant(layer_variant, layer, inputs)
    except bench.Unavailable as e:
        pytest.skip(f"{layer_variant}: {e}")
    ref = bench.layer_reference(layer, inputs, what)
    err = bench.check_output(f"{layer.name} {layer_variant}", fn(), ref, dtype, device, scope="op")
    del ref
    benchmark.extra_info["rel_error"] = err
    median = timed(benchmark, fn)
    peaks = device_peaks(dtype)
    if median is not None:
        benchmark.extra_info.update(time_s=median, gb_per_s=nbytes / median / 1e9,
                                    tflop_per_s=flops / median / 1e12)
        if peaks is not None:
            compute, memory = peaks.floors(flops, nbytes)
            floor = max(compute, memory)
            benchmark.extra_info.update(floor_s=floor, compute_floor_s=compute,
                                        memory_floor_s=memory, fraction_of_floor=floor / median)
