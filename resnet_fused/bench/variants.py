"""The whole-model variants: the baselines the fused model is compared with, and the fused ones.

``reference``       the eager model, channels_last (``cudnn.benchmark=True`` on GPU)
``cudnn-fused``     GPU only: BN folded into conv weight/bias, ``torch.cudnn_convolution_relu`` /
                    ``torch.cudnn_convolution_add_relu`` (the best cuDNN can do without us)
``compile``         ``torch.compile`` with inductor freezing (BN folded, weights prepacked): mode
                    ``max-autotune`` on GPU, the default mode on CPU (there Inductor's convolutions
                    are oneDNN's whatever the mode, and max-autotune only adds compile time);
                    compile time is reported separately (CPU: only on request)
``fused-<backend>`` ``resnet_fused.fuse(model, backend=...)`` for each available backend
``<variant>+graph`` the same, replayed from a CUDA graph (GPU; the default for batch 1)
``onnxruntime``     CPU: ONNX Runtime on the model exported to ONNX (:mod:`.peers`)
``openvino``        CPU: OpenVINO on the same ONNX model, in float32 or bfloat16 (:mod:`.peers`)
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import CHOICES, backend_status
from .peers import PEERS, PeerUnavailable, build_peer
from .timing import synchronize, time_fn
from .workload import make_input

FUSED_BACKENDS = ("cuda", "triton", "cpu", "auto", "aten")


class Unavailable(RuntimeError):
    """A variant cannot run on this machine (the message says why)."""



# --------------------------------------------------------------------------------------------
# Baseline: BN folded into cuDNN's fused conv(+add)+ReLU


def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype):
    from ..folding import fold_batchnorm

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

    CPU: ``reference`` and ``fused-cpu`` (``compile`` only when asked: ~30 s to compile).
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
    known = ("reference", "cudnn-fused", "compile", *(f"fused-{b}" for b in FUSED_BACKENDS),
             *PEERS)
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
    elif base in PEERS:
        try:
            fn, note = build_peer(base, model, x)
        except PeerUnavailable as e:
            raise Unavailable(str(e)) from e
    elif base == "compile":
        module = copy.deepcopy(model).to(dtype=dtype, memory_format=torch.channels_last)
        try:
            import torch._inductor.config as inductor_config
        except ImportError as e:  # pragma: no cover - inductor ships with torch
            raise Unavailable(f"torch inductor is not importable: {e}") from e
        mode = "max-autotune" if device.type == "cuda" else None
        compiled = torch.compile(module, mode=mode)
        call = _no_grad_call(compiled, x)
        # Freezing constant-folds the (frozen) weights: that is how inductor does its own BN
        # folding, so without it this baseline would be unfairly weak. Compilation is lazy: the
        # first calls must happen inside the patch.
        with inductor_config.patch(freezing=True):
            call()
            call()
        fn = call
        note = f"mode={mode or 'default'}, freezing=True"
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
        from ..fused import fuse

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

