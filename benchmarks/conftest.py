"""pytest-benchmark setup for the throughput suite: options, parametrization, timing, machine info.

Run explicitly (the repo's pytest config only collects ``tests/``)::

    python -m pytest benchmarks -q                              # timed, default sizes
    python -m pytest benchmarks -q --benchmark-disable          # CI: each case once, as a test
    python -m pytest benchmarks -q --benchmark-json out.json    # raw results for report.py

Every case checks its output against a higher-precision reference before it is timed, so the
``--benchmark-disable`` tier is a correctness test of every variant at real ResNet shapes.

Defaults per device (override with the ``--bench-*`` options below):

=============  ===========================  ==================
               GPU                          CPU
=============  ===========================  ==================
models         resnet50, resnet18, resnet34 same
batches        1, 32, 256                   1, 8
dtypes         bfloat16, float16, float32   float32, bfloat16 (if oneDNN has bf16)
layer batch    256                          8
layer dtypes   bfloat16                     float32
compile        yes                          only with --bench-compile (~30 s per case on 2 cores)
rounds/warmup  30 / 5                       5 / 1
side by side   -                            resnet50 at each batch and dtype
=============  ===========================  ==================

GPU timing reads CUDA events (pytest-benchmark's clock is replaced for these tests) after an
untimed L2 flush per round; CPU timing is perf_counter.
"""

from __future__ import annotations

import datetime
import platform
import time
from dataclasses import dataclass

import pytest
import torch

from resnet_fused import bench

MODEL_VARIANTS_GPU = ("reference", "cudnn-fused", "compile", "fused-cuda", "fused-triton",
                      "fused-auto")
GRAPH_VARIANTS = ("reference+graph", "cudnn-fused+graph", "fused-cuda+graph",
                  "fused-triton+graph", "fused-auto+graph")
# On CPU only the variants that can run there are collected: the GPU ones would only be skips.
MODEL_VARIANTS_CPU = ("reference", "fused-cpu", "compile")
LAYER_VARIANTS_GPU = ("conv", "eager", "fused-cuda", "fused-triton")
# onednn-conv / fused-onednn: oneDNN's conv alone (prepacked weight) / the module fuse() builds.
LAYER_VARIANTS_CPU = ("conv", "onednn-conv", "eager", "fused-cpu", "fused-onednn")


def _cpu_dtypes() -> str:
    from resnet_fused.cpu import capability

    return "float32,bfloat16" if torch.bfloat16 in capability.fast_dtypes() else "float32"


_MODELS_DEFAULT = "resnet50,resnet18,resnet34"


def pytest_addoption(parser):
    group = parser.getgroup("resnet_fused benchmarks")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda if visible)")
    group.addoption("--bench-models", default=_MODELS_DEFAULT,
                    help="comma-separated models for the whole-model benchmarks")
    group.addoption("--bench-batches", default=None,
                    help="comma-separated batch sizes (default: 1,32,256 on GPU; 1,8 on CPU)")
    group.addoption("--bench-dtypes", default=None,
                    help="comma-separated dtypes (default: bfloat16,float16,float32 on GPU; "
                         "float32 on CPU)")
    group.addoption("--bench-variants", default=None,
                    help="comma-separated whole-model variants to keep (default: all)")
    group.addoption("--bench-peers", default="auto", choices=("auto", "yes", "no"),
                    help="the CPU peers ONNX Runtime and OpenVINO in the side-by-side runs: auto "
                         "= where installed (pip install \"resnet_fused[peers]\"); yes = fail "
                         "if they are not")
    group.addoption("--bench-compile", default="auto", choices=("auto", "yes", "no"),
                    help="the torch.compile baseline: auto = on GPU, off on CPU")
    group.addoption("--bench-layer-batches", default=None,
                    help="comma-separated batch sizes per layer (default: 256 GPU, 8 CPU)")
    group.addoption("--bench-layer-dtypes", default=None,
                    help="comma-separated dtypes per layer (default: bfloat16 GPU, float32 CPU)")
    group.addoption("--bench-layer-variants", default=None,
                    help="comma-separated layer variants to keep (default: all)")
    group.addoption("--bench-layers", default=None,
                    help="only these layers, comma-separated module names of the reference "
                         "model (e.g. conv1,layer4.0.conv2)")
    group.addoption("--bench-finetune-batches", default="8",
                    help="comma-separated batch sizes of the fine-tuning step (default: 8)")
    group.addoption("--bench-rounds", type=int, default=None,
                    help="timed rounds per case (default: 30 GPU, 5 CPU)")
    group.addoption("--bench-warmup", type=int, default=None,
                    help="untimed warm-up rounds per case (default: 5 GPU, 1 CPU)")


def _selected_layers(config) -> list:
    """ResNet-50's distinct conv layers, or those named by --bench-layers."""
    layers = bench.conv_layers("resnet50")
    only = config.getoption("--bench-layers")
    if only:
        wanted = _split(only, "")
        layers = [la for la in layers if la.name in wanted]
    return layers


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: the torch.compile baseline (slow to build)")
    # The GPU session cuts benchmark steps with SIGINT (pytest-benchmark still writes its JSON).
    from resnet_fused.signals import honor_sigint

    honor_sigint()


@dataclass
class BenchConfig:
    device: torch.device
    rounds: int
    warmup: int
    compile: bool
    enabled: bool  # False under --benchmark-disable
    peers: tuple[str, ...] = ()  # CPU peers in the side-by-side runs

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


def _device(config) -> torch.device:
    name = config.getoption("--bench-device")
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _split(value: str | None, default: str) -> list[str]:
    return [v.strip() for v in (value or default).split(",") if v.strip()]


def _bench_config(config) -> BenchConfig:
    device = _device(config)
    gpu = device.type == "cuda"
    flag = config.getoption("--bench-compile")
    return BenchConfig(
        device=device,
        rounds=config.getoption("--bench-rounds") or (30 if gpu else 5),
        warmup=config.getoption("--bench-warmup") if config.getoption("--bench-warmup") is not None
        else (5 if gpu else 1),
        compile=flag == "yes" or (flag == "auto" and gpu),
        enabled=not config.getoption("--benchmark-disable", default=False),
        peers=_peers(config.getoption("--bench-peers"), gpu),
    )


def _peers(flag: str, gpu: bool) -> tuple[str, ...]:
    from resnet_fused.bench.peers import PEERS, peer_status

    if flag == "no" or gpu:
        return ()
    if flag == "yes":
        missing = {p: peer_status(p) for p in PEERS if peer_status(p) != "available"}
        if missing:
            raise pytest.UsageError(f"--bench-peers yes: {missing}")
        return PEERS
    return tuple(p for p in PEERS if peer_status(p) == "available")


@pytest.fixture(scope="session")
def bench_config(request) -> BenchConfig:
    return _bench_config(request.config)


def _model_cases(config, batches_option: str, default_batches: str) -> list[tuple]:
    """(model, batch, dtype) cases of the CPU side-by-side tests."""
    named = config.getoption("--bench-models")
    models = ["resnet50"] if named == _MODELS_DEFAULT else _split(named, "resnet50")
    batches = [int(b) for b in _split(config.getoption(batches_option), default_batches)]
    dtypes = _split(config.getoption("--bench-dtypes"), _cpu_dtypes())
    return [(m, b, d) for m in models for b in batches for d in dtypes]


def pytest_generate_tests(metafunc):
    config = metafunc.config
    device = _device(config)
    gpu = device.type == "cuda"
    names = metafunc.fixturenames
    if "model_variant" in names:
        models = _split(config.getoption("--bench-models"), "resnet50")
        batches = [int(b) for b in _split(config.getoption("--bench-batches"),
                                          "1,32,256" if gpu else "1,8")]
        dtypes = _split(config.getoption("--bench-dtypes"),
                        "bfloat16,float16,float32" if gpu else _cpu_dtypes())
        keep = config.getoption("--bench-variants")
        keep = set(_split(keep, "")) if keep else None
        cases = []
        for model in models:
            for batch in batches:
                for dtype in dtypes:
                    variants = list(MODEL_VARIANTS_GPU if gpu else MODEL_VARIANTS_CPU)
                    if gpu and batch == 1:
                        variants += GRAPH_VARIANTS
                    for variant in variants:
                        if keep is not None and variant not in keep:
                            continue
                        marks = [pytest.mark.compile, pytest.mark.slow] \
                            if variant == "compile" else []
                        cases.append(pytest.param(
                            model, batch, dtype, variant, marks=marks,
                            id=f"{model}-bs{batch}-{dtype}-{variant}"))
        metafunc.parametrize("model_name,batch,dtype_name,model_variant", cases)
    # The interleaved comparison (test_side_by_side.py) and the frozen-BN fine-tuning step
    # (test_finetune_step.py): resnet50 unless models are named.
    for fixture, batches_option, default_batches in (
            ("side_by_side", "--bench-batches", "1,8"),
            ("finetune_step", "--bench-finetune-batches", "8")):
        if fixture in names:
            cases = _model_cases(config, batches_option, default_batches)
            metafunc.parametrize(fixture, cases, ids=[f"{m}-bs{b}-{d}" for m, b, d in cases])
    if "layer_side_by_side" in names:
        layers = _selected_layers(config)
        batches = [int(b) for b in _split(config.getoption("--bench-layer-batches"), "8")]
        dtypes = _split(config.getoption("--bench-layer-dtypes"), _cpu_dtypes())
        cases = [(la, b, d) for la in layers for b in batches for d in dtypes]
        metafunc.parametrize("layer_side_by_side", cases,
                             ids=[f"{la.name}-bs{b}-{d}" for la, b, d in cases])
    if "layer_variant" in names:
        layers = _selected_layers(config)
        batches = [int(b) for b in _split(config.getoption("--bench-layer-batches"),
                                          "256" if gpu else "8")]
        dtypes = _split(config.getoption("--bench-layer-dtypes"), "bfloat16" if gpu else "float32")
        keep = config.getoption("--bench-layer-variants")
        variants = [v for v in (LAYER_VARIANTS_GPU if gpu else LAYER_VARIANTS_CPU)
                    if not keep or v in _split(keep, "")]
        cases = [pytest.param(layer, batch, dtype, variant,
                              id=f"{layer.name}-bs{batch}-{dtype}-{variant}")
                 for layer in layers for batch in batches for dtype in dtypes
                 for variant in variants]
        metafunc.parametrize("layer,batch,dtype_name,layer_variant", cases)


@pytest.fixture
def timed(bench_config):
    """``timed(benchmark, fn)``: pedantic rounds of ``fn`` with the right clock; returns the
    median in seconds (``None`` under ``--benchmark-disable``, where ``fn`` runs once)."""

    def run(benchmark, fn):
        setup = None
        if bench_config.gpu:
            device = bench_config.device
            # pytest-benchmark reads a host clock around the call; for asynchronous GPU work that
            # would time the launch. Its clock is swapped for one that reads CUDA events (and waits
            # for them); the L2 flush runs in the untimed setup.
            if hasattr(benchmark, "_timer"):
                benchmark._timer = bench.cuda_event_clock(device)
                benchmark.extra_info["timer"] = "cuda-events"
            else:  # pragma: no cover - a pytest-benchmark without the private attribute
                inner = fn

                def fn():
                    out = inner()
                    torch.cuda.synchronize(device)
                    return out

                benchmark.extra_info["timer"] = "wall-clock+synchronize"

            def setup():
                bench.l2_flush(device)
        else:
            benchmark.extra_info["timer"] = "perf_counter"
        wall0, cpu0 = time.perf_counter(), time.process_time()
        benchmark.pedantic(fn, setup=setup, rounds=bench_config.rounds,
                           warmup_rounds=bench_config.warmup, iterations=1)
        if not bench_config.gpu:
            # Share of this process's threads that actually ran: ~1.0 on an idle machine, well
            # below when other work held the cores (OpenMP regions then stall on a preempted
            # thread). report.py flags such cases instead of silently mixing them in.
            wall = time.perf_counter() - wall0
            busy = (time.process_time() - cpu0) / (wall * torch.get_num_threads())
            benchmark.extra_info["cpu_busy"] = round(busy, 3)
        if benchmark.stats is None:
            return None
        return benchmark.stats.stats.median

    return run


class _Cache:
    """Models and reference outputs shared by the cases of one session (both are expensive)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.models: dict[str, torch.nn.Module] = {}
        self.refs: dict[tuple, torch.Tensor] = {}

    def model(self, name: str) -> torch.nn.Module:
        if name not in self.models:
            self.models.clear()  # one model at a time keeps GPU memory free for the variants
            self.refs.clear()
            self.models[name] = bench.make_model(name, self.device)
        return self.models[name]

    def reference(self, name: str, x: torch.Tensor) -> torch.Tensor:
        key = (name, tuple(x.shape), x.dtype)
        if key not in self.refs:
            self.refs[key] = bench.reference_output(self.model(name), x)
        return self.refs[key]


@pytest.fixture(scope="session")
def model_cache(bench_config):
    return _Cache(bench_config.device)


_PEAKS: dict[str, bench.DevicePeaks] = {}


@pytest.fixture(scope="session")
def device_peaks(bench_config):
    """``device_peaks(dtype)``: measured copy bandwidth and GEMM rate, once per dtype per run
    (``None`` under ``--benchmark-disable``: no floors without timing)."""

    def get(dtype: torch.dtype):
        if not bench_config.enabled:
            return None
        key = str(dtype)
        if key not in _PEAKS:
            _PEAKS[key] = bench.measure_peaks(bench_config.device, dtype)
        return _PEAKS[key]

    return get


def _versions() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability())) if gpu else None,
        "cpu_model": bench.cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "resnet_fused_backends": _backends(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _backends() -> dict:
    from resnet_fused import backend_status

    return backend_status()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update(_versions())
    machine_info["bench_device"] = str(_device(config))


def _remeasure_peaks(device: torch.device) -> None:
    # A peak measured while other work held the cores is too low, and a floor built on it is
    # beaten by real kernels. Measure again at the end and keep the best of each figure;
    # report.py recomputes the floors from these final peaks.
    for key, old in list(_PEAKS.items()):
        new = bench.measure_peaks(device, getattr(torch, key.replace("torch.", "")))
        _PEAKS[key] = bench.DevicePeaks(
            old.device, old.dtype, max(old.bandwidth, new.bandwidth), max(old.flops, new.flops),
            max(old.matmul_flops, new.matmul_flops), max(old.conv1x1_flops, new.conv1x1_flops))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    if _PEAKS:
        _remeasure_peaks(_device(config))
    output_json["resnet_fused"] = {
        "command": " ".join(["python", "-m", "pytest", *config.invocation_params.args]),
        "device_peaks": {k: vars(v) for k, v in _PEAKS.items()},
    }
