"""Whole-model throughput: the fused ResNet against the baselines, same input, same run.

Cases: model x batch x dtype x variant (see ``conftest.py`` for the defaults per device). Each case
builds its variant, checks its output against the higher-precision reference (fp64 for fp32,
fp32 for fp16/bf16; docs/design.md's whole-model bounds) and only then times it.
``extra_info`` holds images/s, the relative error and the build/compile time.
"""

from __future__ import annotations

import pytest
import torch

from resnet_fused import bench


def test_model_throughput(benchmark, bench_config, model_cache, timed, model_name, batch,
                          dtype_name, model_variant):
    device = bench_config.device
    dtype = bench.DTYPES[dtype_name]
    if model_variant == "compile" and not bench_config.compile:
        why = ("takes ~30 s to compile per case on a 2-core CPU" if device.type == "cpu"
               else "turned off with --bench-compile no")
        pytest.skip(f"torch.compile baseline {why}: opt in with --bench-compile yes")
    model = model_cache.model(model_name)
    x = bench.make_input(batch, dtype, device)
    ref = model_cache.reference(model_name, x)
    benchmark.group = f"{model_name} bs{batch} {dtype_name}"
    benchmark.extra_info.update(model=model_name, batch=batch, dtype=dtype_name,
                                variant=model_variant, device=str(device))
    try:
        variant = bench.build_variant(model_variant, model, x)
    except bench.Unavailable as e:
        pytest.skip(f"{model_variant}: {e}")
    try:
        err = bench.check_output(model_variant, variant.fn(), ref, dtype, device)
        benchmark.extra_info.update(rel_error=err, setup_s=variant.setup_s)
        median = timed(benchmark, variant.fn)
        if median is not None:
            benchmark.extra_info["images_per_s"] = batch / median
    finally:
        del variant
        if model_variant == "compile":
            torch._dynamo.reset()  # drops the compiled graph and its frozen weights
        if device.type == "cuda":
            torch.cuda.empty_cache()
