"""The CPU peers as baselines: ONNX Runtime and OpenVINO running the same model, same weights.

Both read the model as ONNX, exported from the eval-mode source model with
``torch.onnx.export(dynamo=True, opset 18)``:

``onnxruntime``  ONNX Runtime's CPU provider (MLAS: blocked direct convolutions with ReLU and Add
                 fused), all graph optimizations, ``torch.get_num_threads()`` intra-op threads,
                 and its worker threads told to stop spinning after each run
                 (``session.force_spinning_stop``), which would otherwise take the cores from the
                 next variant of an interleaved run. float32 only: its CPU provider has no
                 bfloat16 convolutions.
``openvino``     OpenVINO's CPU plugin (oneDNN inside: AMX, AVX-512 or AVX2 kernels by the CPU),
                 latency hint, one stream, the same threads, ``INFERENCE_PRECISION_HINT`` f32 or
                 bf16 (its bf16 runs the whole graph in bf16 where the CPU has the instructions).

Install them with ``pip install "resnet_fused[peers]"``; :func:`peer_status` says what is
missing. Each takes float32 input (a bfloat16 batch is handed over as the same values in fp32)
and returns float32 logits as a torch tensor.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

PEERS = ("onnxruntime", "openvino")
# What each peer needs imported (the exporter needs onnx and onnxscript).
_MODULES = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
            "openvino": ("openvino", "onnx", "onnxscript")}
_OPENVINO_PRECISION = {torch.float32: "f32", torch.bfloat16: "bf16"}


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (not installed, a dtype it lacks); the message says why."""


def peer_status(name: str) -> str:
    """``"available"``, or why ``name`` cannot run (e.g. what to install)."""
    missing = [m for m in _MODULES[name] if importlib.util.find_spec(m) is None]
    if missing:
        return (f"not installed ({', '.join(missing)} missing): "
                "pip install \"resnet_fused[peers]\"")
    return "available"


def export_onnx(model: nn.Module, x: Tensor, path: str) -> None:
    """The eval-mode ``model`` in float32 as ONNX (opset 18, dynamo exporter), batch ``x``."""
    model = copy.deepcopy(model).float().eval()
    # The exporter logs a line per torchvision op it cannot register when torchvision is absent,
    # and a deprecation warning of torch's own: none of it concerns a ResNet.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(model, (x.float().contiguous(),), dynamo=True,
                                        opset_version=18, verbose=False)
    finally:
        exporter_log.setLevel(level)
    program.save(path)


def build_peer(name: str, model: nn.Module, x: Tensor) -> tuple[Callable[[], Tensor], str]:
    """``(fn, note)``: ``fn()`` runs peer ``name`` on ``x`` and returns its float32 logits."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {PEERS}")
    why = peer_status(name)
    if why != "available":
        raise PeerUnavailable(f"{name}: {why}")
    if x.device.type != "cpu":
        raise PeerUnavailable(f"{name} runs here as a CPU baseline only")
    if name == "onnxruntime" and x.dtype != torch.float32:
        raise PeerUnavailable("onnxruntime: its CPU provider has no bfloat16 convolutions")
    if name == "openvino" and x.dtype not in _OPENVINO_PRECISION:
        raise PeerUnavailable(f"openvino: no {x.dtype} precision hint")
    data = x.float().contiguous().numpy()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model, x, path)
        if name == "onnxruntime":
            return _onnxruntime(path, data, threads)
        return _openvino(path, data, threads, _OPENVINO_PRECISION[x.dtype])


def _onnxruntime(path: str, data, threads: int) -> tuple[Callable[[], Tensor], str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.force_spinning_stop", "1")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: data}

    def run() -> Tensor:
        return torch.from_numpy(session.run(None, feed)[0])

    return run, f"onnxruntime {ort.__version__}, CPUExecutionProvider, {threads} threads"


def _openvino(path: str, data, threads: int, precision: str) -> tuple[Callable[[], Tensor], str]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    request = compiled.create_infer_request()

    def run() -> Tensor:
        request.infer({0: data})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run, (f"openvino {ov.get_version().split('-')[0]}, CPU plugin, "
                 f"INFERENCE_PRECISION_HINT={precision}, {threads} threads")
