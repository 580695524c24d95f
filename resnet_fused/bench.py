"""Measuring: timers, the baselines the fused model is compared with, and a roofline report.

Used by ``python -m resnet_fused bench`` (:func:`add_arguments`, :func:`run`) and by the
pytest-benchmark suite under ``benchmarks/``.

Variants (whole model, one input batch):

``reference``       the eager model, channels_last (``cudnn.benchmark=True`` on GPU)
``cudnn-fused``     GPU only: BN folded into conv weight/bias, ``torch.cudnn_convolution_relu`` /
                    ``torch.cudnn_convolution_add_relu`` (the best cuDNN can do without us)
``compile``         ``torch.compile(mode="max-autotune")`` with inductor freezing; compile time is
                    reported separately (minutes on a 2-core CPU, so only on request there)
``fused-<backend>`` ``resnet_fused.fuse(model, backend=...)`` for each available backend
``<variant>+graph`` the same, replayed from a CUDA graph (GPU; the default for batch 1)

Every variant is checked against a higher-precision reference before it is timed
(:func:`check_output`); a mismatch raises :class:`MismatchError`, it is never just timed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backends import CHOICES, backend_status
from .progress import progress
from .testing import randomize_batchnorm_, reference_dtype, relative_error, tolerance

__all__ = [
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
    "default_variants",
    "measure_peaks",
    "reference_output",
    "roofline_rows",
    "run",
    "throughput",
    "time_fn",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
FUSED_BACKENDS = ("cuda", "triton", "cpu", "auto", "aten")


class MismatchError(AssertionError):
    """A variant's output is not within the numerics bound of the reference."""


class Unavailable(RuntimeError):
    """A variant cannot run on this machine (the message says why)."""


# --------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Timing:
    """Per-repetition times in seconds (warm-up excluded)."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.times) if len(self.times) > 1 else 0.0


_L2_FLUSH: dict[int, Tensor] = {}


def _l2_flush_buffer(device: torch.device) -> Tensor:
    # 256 MiB is 5x an H100's 50 MB L2: writing it evicts whatever the previous rep left there,
    # so every rep reads its weights/activations from HBM, as in a real pipeline (do_bench does
    # the same).
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _L2_FLUSH:
        _L2_FLUSH[index] = torch.empty(256 * 2**20, dtype=torch.int8, device=device)
    return _L2_FLUSH[index]


def time_fn(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 3,
            reps: int = 10) -> Timing:
    """Times ``fn()``: ``warmup`` untimed calls, then ``reps`` timed ones.

    GPU: each rep is bracketed by CUDA events on the current stream (kernel time, not the
    host's launch of asynchronous work), after an L2 flush that is not timed. CPU: perf_counter
    around each call. Read ``.median`` for the figure to report.
    """
    device = torch.device(device)
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for _ in range(max(0, warmup)):
        fn()
    if device.type == "cuda":
        flush = _l2_flush_buffer(device)
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends, strict=True):
            flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return Timing([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)])
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(times)


def cuda_event_clock(device: torch.device | str | None = None) -> Callable[[], float]:
    """A clock for pytest-benchmark (``benchmark._timer``) that reads GPU time.

    Each reading records an event on the current stream and waits for it, so the difference of
    two readings is the GPU time of the work enqueued between them (an async launch would be
    timed at a few microseconds by a wall clock).
    """
    with torch.cuda.device(device):
        base = torch.cuda.Event(enable_timing=True)
        base.record()

    def cuda_event_clock() -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        return base.elapsed_time(event) / 1e3

    return cuda_event_clock


def l2_flush(device: torch.device | str) -> None:
    """Evicts the GPU's L2 (a no-op on CPU): call before each timed rep."""
    device = torch.device(device)
    if device.type == "cuda":
        _l2_flush_buffer(device).zero_()


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# Models, inputs and the reference


def make_model(name: str = "resnet50", device: torch.device | str = "cpu",
               seed: int = 0) -> nn.Module:
    """A reference model with random weights and non-trivial BatchNorm statistics (eval mode)."""
    from . import models

    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    torch.manual_seed(seed)
    model = getattr(models, name)()
    randomize_batchnorm_(model, torch.Generator().manual_seed(seed))
    return model.eval().requires_grad_(False).to(device)


def make_input(batch: int, dtype: torch.dtype, device: torch.device | str, size: int = 224,
               seed: int = 0) -> Tensor:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    # The fp32 reference must not use TF32 tensor cores (10-bit mantissa): it is the yardstick.
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@torch.no_grad()
def reference_output(model: nn.Module, x: Tensor) -> Tensor:
    """The model's output in the reference precision for ``x.dtype`` (fp64 for fp32, else fp32).

    ``x`` is used as given (already quantized to the benchmark dtype), so the reference sees the
    same input as the variant under test.
    """
    ref_dtype = reference_dtype(x.dtype)
    ref_model = copy.deepcopy(model).to(ref_dtype)
    with _no_tf32():
        return ref_model(x.to(ref_dtype)).float()


def check_output(name: str, y: Tensor, ref: Tensor, dtype: torch.dtype,
                 device: torch.device | str, scope: str = "model") -> float:
    """Relative L2 error of ``y`` vs ``ref``; raises :class:`MismatchError` above the bound."""
    err = relative_error(y.float(), ref.float())
    bound = tolerance(dtype, scope, device)
    if not err <= bound:  # also catches NaN/inf
        raise MismatchError(
            f"{name}: output does not match the reference: relative error {err:.3e} > bound "
            f"{bound:.1e} ({dtype}, {scope}, {torch.device(device).type})")
    return err


# --------------------------------------------------------------------------------------------
# Baseline: BN folded into cuDNN's fused conv(+add)+ReLU


def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype):
    from .folding import fold_batchnorm

    scale, shift = fold_batchnorm(bn, conv.bias)
    # Fold in fp32 then round once: the best a BN-folding deployment can do.
    weight = conv.weight.float() * scale.view(-1, 1, 1, 1)
    weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
    return weight, shift.to(dtype), tuple(conv.stride), tuple(conv.padding)


class CudnnFusedResNet(nn.Module):
    """A ResNet with BN folded into the conv weights, run with cuDNN's fused conv kernels.

    ``cudnn_convolution_relu`` for conv->BN->ReLU, ``cudnn_convolution_add_relu`` for the block's
    last conv (+ skip, ReLU), a biased convolution for the downsample. This is the strongest
    "no custom kernels" baseline. On CPU tensors the same graph runs with ``F.conv2d`` (so the
    walker can be tested without a GPU), but it is not benchmarked there.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.stem = _fold_into_conv(model.conv1, model.bn1, dtype)
        self.maxpool = copy.deepcopy(model.maxpool)
        self.blocks = []
        for i in range(1, 5):
            for j, block in enumerate(getattr(model, f"layer{i}")):
                children = dict(block.named_children())
                convs = []
                k = 1
                while f"conv{k}" in children:
                    convs.append(_fold_into_conv(children[f"conv{k}"], children[f"bn{k}"], dtype))
                    k += 1
                if len(convs) not in (2, 3):
                    raise ValueError(f"cudnn-fused: cannot convert layer{i}.{j}: found "
                                     f"{len(convs)} convs")
                skip = None
                for name, child in children.items():
                    if isinstance(child, nn.Sequential) and len(child) > 0:
                        if len(child) != 2:
                            raise ValueError(f"cudnn-fused: layer{i}.{j}.{name} is not "
                                             "Sequential(conv, bn)")
                        skip = _fold_into_conv(child[0], child[1], dtype)
                self.blocks.append((convs, skip))
        self.avgpool = copy.deepcopy(model.avgpool)
        self.fc = copy.deepcopy(model.fc).to(dtype)

    @staticmethod
    def _conv(x: Tensor, conv, relu: bool, z: Tensor | None = None) -> Tensor:
        weight, bias, stride, padding = conv
        if x.is_cuda and relu:
            if z is None:
                return torch.cudnn_convolution_relu(x, weight, bias, stride, padding, (1, 1), 1)
            return torch.cudnn_convolution_add_relu(x, weight, z, 1.0, bias, stride, padding,
                                                    (1, 1), 1)
        y = F.conv2d(x, weight, bias, stride, padding)
        if z is not None:
            y = y + z
        return torch.relu(y) if relu else y

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(dtype=self.dtype, memory_format=torch.channels_last)
        x = self.maxpool(self._conv(x, self.stem, relu=True))
        for convs, skip in self.blocks:
            identity = x if skip is None else self._conv(x, skip, relu=False)
            out = x
            for conv in convs[:-1]:
                out = self._conv(out, conv, relu=True)
            x = self._conv(out, convs[-1], relu=True, z=identity)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------------------
# Variants


@dataclasses.dataclass
class Variant:
    """A runnable configuration: ``fn()`` runs one forward pass on the prepared input."""

    name: str
    fn: Callable[[], Tensor]
    setup_s: float = 0.0  # build / compile / graph-capture time, reported apart from throughput
    note: str = ""


def default_variants(device: torch.device | str, batch: int,
                     include_compile: bool | None = None) -> list[str]:
    """The variants ``bench`` measures by default on ``device``.

    CPU: ``reference`` and ``fused-cpu`` (``compile`` only when asked: minutes on 2 cores).
    GPU: the three baselines and every GPU fused backend, plus CUDA-graph replays for batch 1.
    """
    device = torch.device(device)
    if device.type == "cpu":
        names = ["reference", "fused-cpu"]
        if include_compile:
            names.append("compile")
        return names
    names = ["reference", "cudnn-fused"]
    if include_compile is None or include_compile:
        names.append("compile")
    names += ["fused-cuda", "fused-triton"]
    if batch == 1:
        names += ["reference+graph", "cudnn-fused+graph", "fused-cuda+graph",
                  "fused-triton+graph"]
    return names


def normalize_variant(name: str) -> str:
    """Accepts a variant name or a bare backend name (``cpu`` -> ``fused-cpu``)."""
    base, _, graph = name.partition("+")
    if base in FUSED_BACKENDS:
        base = f"fused-{base}"
    name = base + ("+graph" if graph else "")
    known = ("reference", "cudnn-fused", "compile", *(f"fused-{b}" for b in FUSED_BACKENDS))
    if base not in known or graph not in ("", "graph"):
        raise ValueError(f"unknown variant {name!r}; expected one of {known} or a backend "
                         f"({', '.join(FUSED_BACKENDS)}), optionally with '+graph'")
    return name


def _no_grad_call(module: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    def call() -> Tensor:
        with torch.no_grad():
            return module(x)

    return call


def _capture_graph(fn: Callable[[], Tensor], device: torch.device) -> Callable[[], Tensor]:
    # Warm up on a side stream (lazy init, cuDNN/Triton autotuning) so none of it is captured.
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> Tensor:
        graph.replay()
        return out

    return replay


def build_variant(name: str, model: nn.Module, x: Tensor) -> Variant:
    """Builds variant ``name`` of the eval-mode ``model`` for input ``x`` (its dtype and device).

    Raises :class:`Unavailable` with the reason when it cannot run here.
    """
    name = normalize_variant(name)
    device, dtype = x.device, x.dtype
    base, _, graph = name.partition("+")
    if graph and device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")
    t0 = time.perf_counter()
    note = ""
    if base == "reference":
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        module = copy.deepcopy(model).to(dtype=dtype, memory_format=torch.channels_last)
        fn = _no_grad_call(module, x)
    elif base == "cudnn-fused":
        if device.type != "cuda":
            raise Unavailable("cuDNN fused conv+add+ReLU needs a CUDA device")
        if not torch.backends.cudnn.is_available():
            raise Unavailable("cuDNN is not available in this torch build")
        torch.backends.cudnn.benchmark = True
        fn = _no_grad_call(CudnnFusedResNet(model, dtype), x)
    elif base == "compile":
        module = copy.deepcopy(model).to(dtype=dtype, memory_format=torch.channels_last)
        try:
            import torch._inductor.config as inductor_config
        except ImportError as e:  # pragma: no cover - inductor ships with torch
            raise Unavailable(f"torch inductor is not importable: {e}") from e
        compiled = torch.compile(module, mode="max-autotune")
        call = _no_grad_call(compiled, x)
        # Freezing constant-folds the (frozen) weights: that is how inductor does its own BN
        # folding, so without it this baseline would be unfairly weak. Compilation is lazy: the
        # first calls must happen inside the patch.
        with inductor_config.patch(freezing=True):
            call()
            call()
        fn = call
        note = "compile time includes max-autotune"
    else:
        backend = base[len("fused-"):]
        if backend not in CHOICES:
            raise ValueError(f"unknown backend in {name!r}")
        if backend in ("cuda", "triton"):
            why = backend_status()[backend]
            if why != "available":
                raise Unavailable(f"backend {backend!r}: {why}")
            if device.type != "cuda":
                # Triton on CPU only runs under the interpreter: a correctness tool, not a
                # benchmark.
                raise Unavailable(f"backend {backend!r} needs a CUDA device")
        if backend == "cpu" and device.type != "cpu":
            raise Unavailable("backend 'cpu' runs on CPU tensors only")
        from .fused import fuse

        fn = _no_grad_call(fuse(model, backend=backend, dtype=dtype), x)
    if graph:
        fn = _capture_graph(fn, device)
    synchronize(device)
    return Variant(name, fn, time.perf_counter() - t0, note)


def throughput(model: nn.Module | Callable[[Tensor], Tensor], batch: int = 8,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               warmup: int = 3, reps: int = 10, size: int = 224) -> float:
    """Images/s of ``model`` (any callable on an NCHW batch) on a random channels_last batch."""
    x = make_input(batch, dtype, device, size)
    call = _no_grad_call(model, x) if isinstance(model, nn.Module) else (lambda: model(x))
    return batch / time_fn(call, device, warmup, reps).median


# --------------------------------------------------------------------------------------------
# Roofline


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One distinct conv shape of a ResNet (as the fused op runs it), and how often it occurs."""

    name: str  # first module that has this shape, e.g. "layer2.0.conv2"
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: int
    padding: int
    residual: bool
    relu: bool
    count: int = 1

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.padding - self.r) // self.stride + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.padding - self.s) // self.stride + 1

    @property
    def label(self) -> str:
        res = " +res" if self.residual else ""
        return (f"{self.r}x{self.s} {self.c}->{self.k} s{self.stride} {self.h}x{self.w}{res}")

    def flops(self) -> int:
        return 2 * self.n * self.k * self.ho * self.wo * self.c * self.r * self.s

    def min_bytes(self, element_size: int) -> int:
        """Read input and weight, write output (and read the residual when fused), once each.

        The per-channel fp32 scale/shift (8 bytes per output channel) are negligible and left
        out.
        """
        out = self.n * self.k * self.ho * self.wo
        elems = self.n * self.c * self.h * self.w + self.k * self.c * self.r * self.s + out
        if self.residual:
            elems += out
        return elems * element_size

    def with_batch(self, n: int) -> ConvLayer:
        return dataclasses.replace(self, n=n)


def _source_name(fused_name: str) -> str:
    """``stages.1.0.convs.2`` -> ``layer2.0.conv3``: the reference model's module names."""
    import re

    if fused_name == "stem":
        return "conv1"
    m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(convs\.(\d+)|skip)", fused_name)
    if m is None:
        return fused_name
    block = f"layer{int(m[1]) + 1}.{m[2]}"
    return f"{block}.downsample.0" if m[3] == "skip" else f"{block}.conv{int(m[4]) + 1}"


@torch.no_grad()
def conv_layers(model: nn.Module | str = "resnet50", batch: int = 1,
                size: int = 224) -> list[ConvLayer]:
    """The distinct fused conv layers of ``model`` at ``size`` x ``size``, in network order.

    Found by running the fused model (``backend="aten"``) once and recording each fused conv's
    input shape and whether a residual was passed to it, so it follows any ResNet depth.
    """
    from .fused import FusedConvBNAct, fuse

    if isinstance(model, str):
        model = make_model(model)
    fused = fuse(copy.deepcopy(model).float().cpu(), backend="aten")
    seen: dict[tuple, ConvLayer] = {}

    def hook(module, args, _out, name):
        x = args[0]
        residual = len(args) > 1 and args[1] is not None
        k, c, r, s = module.weight.shape
        if module.stride[0] != module.stride[1] or module.padding[0] != module.padding[1]:
            raise ValueError(f"{name}: non-square stride/padding is not handled by the roofline")
        layer = ConvLayer(_source_name(name), batch, c, x.shape[2], x.shape[3], k, r, s,
                          module.stride[0], module.padding[0], residual, module.relu)
        key = dataclasses.astuple(dataclasses.replace(layer, name="", count=0))
        if key in seen:
            seen[key] = dataclasses.replace(seen[key], count=seen[key].count + 1)
        else:
            seen[key] = layer

    handles = [m.register_forward_hook(lambda mod, a, o, name=n: hook(mod, a, o, name))
               for n, m in fused.named_modules() if isinstance(m, FusedConvBNAct)]
    try:
        fused(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return list(seen.values())


@dataclasses.dataclass
class DevicePeaks:
    """Measured (not datasheet) copy bandwidth and GEMM rate of the current device."""

    device: str
    dtype: str
    bandwidth: float  # bytes/s, copy (read + write counted)
    flops: float  # FLOP/s, the faster of a large matmul and a GEMM-shaped 1x1 conv in ``dtype``
    matmul_flops: float = 0.0
    conv1x1_flops: float = 0.0

    def floors(self, flops: float, nbytes: float) -> tuple[float, float]:
        """(compute floor, memory floor) in seconds."""
        return flops / self.flops, nbytes / self.bandwidth


def measure_peaks(device: torch.device | str, dtype: torch.dtype = torch.float32,
                  reps: int = 10) -> DevicePeaks:
    """Copy bandwidth and GEMM FLOP/s of ``device``, each the best of ``reps`` runs.

    GPU: 1 GiB copy, 8192^3 matmul. CPU: 256 MiB copy, 2048^3 matmul, this process's threads.
    The GEMM rate is also measured as a 1x1 channels_last convolution, because on some CPUs the
    BLAS behind ``torch.mm`` is slower than oneDNN's convolutions (MKL on AMD runs its AVX2 path),
    and a "peak" the convolutions beat would make no floor.
    """
    device = torch.device(device)
    gpu = device.type == "cuda"
    numel = (2**30 if gpu else 2**28) // 4
    buffers = [torch.empty(numel, dtype=torch.float32, device=device).fill_(1.0)
               for _ in range(2)]

    def copy_() -> None:
        buffers[1].copy_(buffers[0])

    copy_t = time_fn(copy_, device, warmup=2, reps=reps).min
    buffers.clear()
    n = 8192 if gpu else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    mm_t = time_fn(lambda: torch.mm(a, b), device, warmup=2, reps=max(3, reps // 2)).min
    mm_rate = 2 * n**3 / mm_t
    # The same GEMM as a 1x1 conv: (hw x c) @ (c x k) with hw = 64*64 (CPU) or 128*128 (GPU).
    hw, c = (128, 4096) if gpu else (64, 1024)
    x = torch.randn(1, c, hw, hw, device=device).to(dtype).contiguous(
        memory_format=torch.channels_last)
    w = torch.randn(c, c, 1, 1, device=device).to(dtype).contiguous(
        memory_format=torch.channels_last)
    conv_t = time_fn(lambda: F.conv2d(x, w), device, warmup=2, reps=max(3, reps // 2)).min
    conv_rate = 2 * c * c * hw * hw / conv_t
    return DevicePeaks(str(device), str(dtype).replace("torch.", ""), 2 * numel * 4 / copy_t,
                       max(mm_rate, conv_rate), mm_rate, conv_rate)


def make_layer_inputs(layer: ConvLayer, dtype: torch.dtype, device: torch.device | str,
                      seed: int = 0) -> dict:
    """Random channels_last input/weight/residual, and a random BN (module + folded scale/shift)."""
    from .folding import fold_batchnorm

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0):
        t = torch.randn(*shape, generator=g) * std
        return t.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

    bn = randomize_batchnorm_(nn.BatchNorm2d(layer.k), g).eval()
    scale, shift = fold_batchnorm(bn)
    fan_in = layer.c * layer.r * layer.s
    return {
        "input": rnd(layer.n, layer.c, layer.h, layer.w),
        "weight": rnd(layer.k, layer.c, layer.r, layer.s, std=(2.0 / fan_in) ** 0.5),
        "scale": scale.to(device),
        "shift": shift.to(device),
        "residual": rnd(layer.n, layer.k, layer.ho, layer.wo) if layer.residual else None,
        "bn": bn.to(device),
    }


def layer_variant(name: str, layer: ConvLayer, inputs: dict) -> tuple[Callable[[], Tensor], str]:
    """A callable for one layer and what its output is checked against (``"op"``/``"conv"``).

    ``conv``: the library convolution alone (cuDNN / oneDNN): the speed fusion must match.
    ``eager``: conv -> BatchNorm -> (+ residual) -> ReLU as separate PyTorch ops, in the layer's
    dtype (BN parameters cast too, as ``model.to(dtype)`` does).
    ``fused-<backend>``: ``resnet_fused.ops.conv_bn_act``.
    """
    from . import ops

    x, w, res = inputs["input"], inputs["weight"], inputs["residual"]
    stride, pad = (layer.stride,) * 2, (layer.padding,) * 2
    if name == "conv":
        return (lambda: F.conv2d(x, w, None, stride, pad)), "conv"
    if name == "eager":
        bn = copy.deepcopy(inputs["bn"]).to(x.dtype)

        def eager() -> Tensor:
            y = bn(F.conv2d(x, w, None, stride, pad))
            if res is not None:
                y = y + res
            return torch.relu(y) if layer.relu else y

        return eager, "op"
    backend = name[len("fused-"):] if name.startswith("fused-") else None
    if backend not in CHOICES:
        raise ValueError(f"unknown layer variant {name!r}")
    if backend in ("cuda", "triton"):
        why = backend_status()[backend]
        if why != "available":
            raise Unavailable(f"backend {backend!r}: {why}")
        if x.device.type != "cuda":
            raise Unavailable(f"backend {backend!r} needs a CUDA device")
    if backend == "cpu" and x.device.type != "cpu":
        raise Unavailable("backend 'cpu' runs on CPU tensors only")
    scale, shift = inputs["scale"], inputs["shift"]
    return (lambda: ops.conv_bn_act(x, w, scale, shift, res, stride, pad, layer.relu,
                                    backend)), "op"


@torch.no_grad()
def layer_reference(layer: ConvLayer, inputs: dict, what: str) -> Tensor:
    """fp64 (for fp32) or fp32 (for fp16/bf16) result of the op, or of the conv alone."""
    from .reference import conv_bn_act_reference

    x, w = inputs["input"], inputs["weight"]
    ref_dtype = reference_dtype(x.dtype)
    stride, pad = (layer.stride,) * 2, (layer.padding,) * 2
    with _no_tf32():
        if what == "conv":
            return F.conv2d(x.to(ref_dtype), w.to(ref_dtype), None, stride, pad)
        res = inputs["residual"]
        return conv_bn_act_reference(x.to(ref_dtype), w.to(ref_dtype), inputs["scale"],
                                     inputs["shift"], None if res is None else res.to(ref_dtype),
                                     stride, pad, layer.relu)


def roofline_rows(layers: Sequence[ConvLayer], peaks: DevicePeaks, element_size: int,
                  achieved: dict[str, float] | None = None) -> list[dict]:
    """One dict per layer: FLOPs, bytes, floors (s), achieved time (s) and fraction of floor."""
    rows = []
    for layer in layers:
        flops, nbytes = layer.flops(), layer.min_bytes(element_size)
        compute, memory = peaks.floors(flops, nbytes)
        t = (achieved or {}).get(layer.name)
        rows.append({
            "layer": layer.name, "shape": layer.label, "count": layer.count, "flops": flops,
            "bytes": nbytes, "compute_floor_s": compute, "memory_floor_s": memory,
            "floor_s": max(compute, memory), "bound": "compute" if compute >= memory else "memory",
            "achieved_s": t, "fraction": (max(compute, memory) / t) if t else None,
        })
    return rows


def model_floor(rows: Sequence[dict]) -> dict[str, float]:
    """Whole-model floors (s per batch) from per-layer rows weighted by their counts.

    ``compute``/``memory``: all conv FLOPs at peak rate / all minimum bytes at peak bandwidth;
    ``per_layer``: each layer at its own roofline (the achievable bound for one kernel per conv).
    Pooling and the classifier are left out (well under 1% of either).
    """
    return {
        "compute": sum(r["count"] * r["compute_floor_s"] for r in rows),
        "memory": sum(r["count"] * r["memory_floor_s"] for r in rows),
        "per_layer": sum(r["count"] * r["floor_s"] for r in rows),
    }


# --------------------------------------------------------------------------------------------
# CLI


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
                             "fused-<backend> (or just the backend: cpu, cuda, triton, auto), "
                             "optionally '+graph' (default: reference + fused on CPU; all "
                             "baselines and fused backends on GPU, CUDA graphs at batch 1)")
    parser.add_argument("--compile", action="store_true",
                        help="add the torch.compile(max-autotune) baseline (slow on CPU)")
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

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    if device.type == "cuda":
        what = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cuDNN "
                f"{torch.backends.cudnn.version()}")
    else:
        what = f"CPU {cpu_model()}, {torch.get_num_threads()} threads"
    return f"{what}; torch {torch.__version__}, triton {triton_version}"


def measure_model(model: nn.Module, x: Tensor, variants: Sequence[str], warmup: int, reps: int,
                  ref: Tensor | None = None) -> list[dict]:
    """Builds, checks and times each variant; one result dict per variant (never raises for a
    single variant: ``status`` is ``ok``, ``skipped: ...`` or ``MISMATCH``).

    The timed reps are interleaved (one call of each variant per round) so that clock drift,
    thermal state and other load on a shared machine hit every variant alike; the speedup column
    compares like with like even when the absolute numbers are noisy.
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
    try:
        for _row, variant in ready:
            time_fn(variant.fn, x.device, warmup=0, reps=max(1, warmup))
        times: list[list[float]] = [[] for _ in ready]
        for _ in progress(range(reps), "timed rounds"):
            for i, (_row, variant) in enumerate(ready):
                times[i] += time_fn(variant.fn, x.device, warmup=0, reps=1).times
        for (row, _variant), t in zip(ready, times, strict=True):
            timing = Timing(t)
            row.update(status="ok", median_s=timing.median, min_s=timing.min,
                       stdev_s=timing.stdev, images_per_s=x.shape[0] / timing.median)
    finally:
        ready.clear()
        if "compile" in variants:
            torch._dynamo.reset()  # frees the compiled graph and its frozen weights
        if x.is_cuda:
            torch.cuda.empty_cache()
    return results


def run(args: argparse.Namespace) -> int:
    """``python -m resnet_fused bench``: 0 if every measured variant matched the reference."""
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print(f"--device {args.device}: no CUDA device is visible", file=sys.stderr)
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
          f"{args.size}x{args.size}, channels_last, {reps} reps after {warmup} warm-up")
    print(f"machine: {machine_summary(device)}")
    model = make_model(args.model, device, args.seed)
    x = make_input(batch, dtype, device, args.size, args.seed)
    results = measure_model(model, x, variants, warmup, reps)

    ref_ips = next((r.get("images_per_s") for r in results if r["variant"] == "reference"), None)
    rows = []
    for r in results:
        ips = r.get("images_per_s")
        rows.append([r["variant"], _fmt(ips, ",.1f"),
                     _fmt(r.get("median_s") and r["median_s"] * 1e3, ".2f"),
                     _fmt(r.get("min_s") and r["min_s"] * 1e3, ".2f"),
                     _fmt(ips / ref_ips if ips and ref_ips else None, ".2f"),
                     _fmt(r.get("rel_error"), ".2e"), _fmt(r.get("setup_s"), ".1f"),
                     r["status"]])
    print()
    _print_table(["variant", "images/s", "ms/batch", "best ms", "vs reference", "rel. error",
                  "setup s", "status"], rows)
    failed = any(r["status"] == "MISMATCH" for r in results)

    report: dict = {"model": args.model, "batch": batch, "dtype": str(dtype), "device": str(device),
                    "machine": machine_summary(device), "results": results}
    if args.roofline:
        report["roofline"] = _roofline_report(args.model, batch, dtype, device, args.size, results,
                                              warmup, reps)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    if failed:
        print("\nFAILED: at least one variant does not match the reference (see above)",
              file=sys.stderr)
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
        inputs = make_layer_inputs(layer, dtype, device)
        fn, what = layer_variant(f"fused-{backend}", layer, inputs)
        y = fn()
        ref = layer_reference(layer, inputs, what)
        errors[layer.name] = check_output(f"{layer.name} fused-{backend}", y, ref, dtype, device,
                                          scope="op")
        achieved[layer.name] = time_fn(fn, device, warmup, reps).median
        del inputs, y, ref
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
    convs_achieved = sum(r["count"] * r["achieved_s"] for r in rows)
    print(f"\nwhole model, batch {batch} (convs only; images/s at the floor):")
    print(f"  compute floor    {floor['compute'] * 1e3:9.3f} ms  "
          f"{batch / floor['compute']:>12,.0f} img/s")
    print(f"  memory floor     {floor['memory'] * 1e3:9.3f} ms  "
          f"{batch / floor['memory']:>12,.0f} img/s  (one fused kernel per conv)")
    print(f"  per-layer floor  {floor['per_layer'] * 1e3:9.3f} ms  "
          f"{batch / floor['per_layer']:>12,.0f} img/s")
    print(f"  sum of layers    {convs_achieved * 1e3:9.3f} ms  {batch / convs_achieved:>12,.0f} "
          f"img/s  = {floor['per_layer'] / convs_achieved:.1%} of the per-layer floor")
    whole = {}
    for r in results:
        if r.get("images_per_s") and r["variant"].startswith("fused-"):
            whole[r["variant"]] = r["median_s"]
            print(f"  {r['variant']:<16} {r['median_s'] * 1e3:9.3f} ms  "
                  f"{r['images_per_s']:>12,.0f} img/s  = "
                  f"{floor['per_layer'] / r['median_s']:.1%} of the per-layer floor")
    return {"peaks": dataclasses.asdict(peaks), "layers": rows, "floor_s": floor,
            "layers_sum_s": convs_achieved, "model_s": whole}
