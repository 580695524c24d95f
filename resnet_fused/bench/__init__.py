"""Measuring the fused model: timers, baselines, per-layer roofline, and the ``bench`` command.

Used by ``python -m resnet_fused bench`` (:mod:`.cli`) and by the pytest-benchmark suite under
``benchmarks/``. One idea per module:

``timing``    CUDA-event / perf_counter timers, L2 flush
``workload``  random models and inputs, the higher-precision reference, :func:`check_output`
``variants``  the whole-model variants (eager, cuDNN-fused, torch.compile, fused-*, +graph)
``layers``    the distinct conv shapes of a ResNet and their per-layer variants
``roofline``  measured device peaks, per-layer floors, achieved fraction
``cli``       the ``bench`` sub-command: side-by-side interleaved rounds, table, verdict

Every variant is checked against a higher-precision reference before it is timed
(:func:`check_output`); a mismatch raises :class:`MismatchError`, it is never just timed.
"""

from .cli import add_arguments, cpu_model, machine_summary, measure_model, run
from .layers import ConvLayer, conv_layers, layer_reference, layer_variant, make_layer_inputs
from .roofline import DevicePeaks, measure_peaks, model_floor, roofline_rows
from .timing import Timing, cuda_event_clock, l2_flush, synchronize, time_fn
from .variants import (
    FUSED_BACKENDS,
    CudnnFusedResNet,
    Unavailable,
    Variant,
    build_variant,
    default_variants,
    normalize_variant,
    throughput,
)
from .workload import (
    DTYPES,
    MODELS,
    MismatchError,
    check_output,
    make_input,
    make_model,
    reference_output,
)

__all__ = [
    "DTYPES",
    "FUSED_BACKENDS",
    "MODELS",
    "ConvLayer",
    "CudnnFusedResNet",
    "DevicePeaks",
    "MismatchError",
    "Timing",
    "Unavailable",
    "Variant",
    "add_arguments",
    "build_variant",
    "check_output",
    "conv_layers",
    "cpu_model",
    "cuda_event_clock",
    "default_variants",
    "l2_flush",
    "layer_reference",
    "layer_variant",
    "machine_summary",
    "make_input",
    "make_layer_inputs",
    "make_model",
    "measure_model",
    "measure_peaks",
    "model_floor",
    "normalize_variant",
    "reference_output",
    "roofline_rows",
    "run",
    "synchronize",
    "throughput",
    "time_fn",
]
