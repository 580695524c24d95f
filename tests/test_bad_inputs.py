"""Bad inputs raise a clear ValueError/TypeError/RuntimeError naming the argument, never a crash.

Checked on both the C++ path (``cpu``: csrc/checks.h) and the Python path (``aten``:
resnet_fused/checks.py), on the raw ``torch.ops`` op, on ``add_relu`` and on a fused model.
"""

from __future__ import annotations

import pytest
import torch

import resnet_fused
from resnet_fused import backends, ops
from resnet_fused.testing import random_bn_params

ERRORS = (ValueError, TypeError, RuntimeError)
BACKENDS = ["cpu", "aten"]


@pytest.fixture
def good(generator):
    """Valid arguments for conv_bn_act: 3x3, stride 1, padding 1, with a residual."""
    x = torch.randn(2, 5, 8, 7, generator=generator)
    w = torch.randn(6, 5, 3, 3, generator=generator) * 0.2
    scale, shift = random_bn_params(6, generator)
    res = torch.randn(2, 6, 8, 7, generator=generator)
    return {"input": x, "weight": w, "scale": scale, "shift": shift, "residual": res,
            "stride": 1, "padding": 1, "relu": True}


def _call(args, backend):
    return ops.conv_bn_act(**args, backend=backend)


def test_good_arguments_work(good):
    for backend in BACKENDS:
        assert _call(good, backend).shape == (2, 6, 8, 7)


BAD_CONV = {
    # name: (how to break the arguments, pattern the message must contain)
    "input-3d": (lambda a: a.update(input=a["input"][0]), r"input must be 4-D"),
    "input-5d": (lambda a: a.update(input=a["input"][None]), r"input must be 4-D"),
    "weight-3d": (lambda a: a.update(weight=a["weight"][:, :, 0]), r"weight must be 4-D"),
    "channels": (lambda a: a.update(input=a["input"][:, :4]), r"input\.size\(1\)"),
    "weight-dtype": (lambda a: a.update(weight=a["weight"].half()), r"weight dtype"),
    "input-float64": (lambda a: a.update(input=a["input"].double(), weight=a["weight"].double(),
                                         residual=a["residual"].double()),
                      r"input must be float32, float16 or bfloat16"),
    "input-int": (lambda a: a.update(input=a["input"].int(), weight=a["weight"].int(),
                                     residual=a["residual"].int()),
                  r"input must be float32, float16 or bfloat16"),
    "residual-dtype": (lambda a: a.update(residual=a["residual"].bfloat16()), r"residual dtype"),
    "scale-fp16": (lambda a: a.update(scale=a["scale"].half()), r"scale must be float32"),
    "shift-fp64": (lambda a: a.update(shift=a["shift"].double()), r"shift must be float32"),
    "scale-bf16-model": (lambda a: a.update(input=a["input"].bfloat16(),
                                            weight=a["weight"].bfloat16(),
                                            residual=a["residual"].bfloat16(),
                                            scale=a["scale"].bfloat16()),
                         r"scale must be float32"),
    "scale-short": (lambda a: a.update(scale=a["scale"][:5]), r"scale must be 1-D with C_out = 6"),
    "shift-long": (lambda a: a.update(shift=torch.cat([a["shift"], a["shift"]])),
                   r"shift must be 1-D with C_out = 6"),
    "scale-2d": (lambda a: a.update(scale=a["scale"][None]), r"scale must be 1-D"),
    "stride-0": (lambda a: a.update(stride=0), r"stride"),
    "stride-negative": (lambda a: a.update(stride=(1, -2)), r"stride"),
    "stride-3": (lambda a: a.update(stride=(1, 1, 1)), r"stride"),
    "stride-empty": (lambda a: a.update(stride=()), r"stride"),
    "stride-none": (lambda a: a.update(stride=None), r"stride"),
    "stride-bool": (lambda a: a.update(stride=True), r"stride"),
    "padding-negative": (lambda a: a.update(padding=-1), r"padding"),
    "padding-3": (lambda a: a.update(padding=[0, 1, 2]), r"padding"),
    "too-small": (lambda a: a.update(input=a["input"][:, :, :2, :2], padding=0, residual=None),
                  r"smaller than the kernel"),
    "residual-shape": (lambda a: a.update(residual=a["residual"][:, :, :7]), r"residual must have"),
    "residual-channels": (lambda a: a.update(residual=a["residual"][:, :5]),
                          r"residual must have"),
    "residual-batch": (lambda a: a.update(residual=a["residual"][:1]), r"residual must have"),
    "residual-stride-shape": (lambda a: a.update(stride=2), r"residual must have"),
    "weight-device": (lambda a: a.update(weight=a["weight"].to("meta")), r"weight is on meta"),
    "scale-device": (lambda a: a.update(scale=a["scale"].to("meta")), r"scale is on meta"),
    "shift-device": (lambda a: a.update(shift=a["shift"].to("meta")), r"shift is on meta"),
    "residual-device": (lambda a: a.update(residual=a["residual"].to("meta")),
                        r"residual is on meta"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(BAD_CONV))
def test_conv_bn_act_bad_arguments(name, backend, good):
    breaker, match = BAD_CONV[name]
    breaker(good)
    with pytest.raises(ERRORS, match=match):
        _call(good, backend)




@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "value",
    [
        2.5,
        1.0,
        (2.5, 1),
        "12",
    ],
    ids=["float", "float-integral", "float-pair", "str"],
)
@pytest.mark.parametrize("arg", ["stride", "padding"])
def test_non_integer_stride_padding(arg, value, backend, good):
    good[arg] = value
    with pytest.raises((TypeError, ValueError), match=arg):
        _call(good, backend)


RAW_BAD = {
    "channels": (lambda a: a.update(input=a["input"][:, :4]), r"input\.size\(1\)"),
    "scale-fp16": (lambda a: a.update(scale=a["scale"].half()), r"scale must be float32"),
    "stride-0": (lambda a: a.update(stride=[0, 1]), r"stride"),
    "padding-negative": (lambda a: a.update(padding=[1, -1]), r"padding"),
    "residual-shape": (lambda a: a.update(residual=a["residual"][:, :, :7]), r"residual"),
    "input-3d": (lambda a: a.update(input=a["input"][0]), r"input must be 4-D"),
}


@pytest.mark.parametrize("name", list(RAW_BAD))
def test_raw_op_bad_arguments(name, good):
    """torch.ops.resnet_fused.conv_bn_act (no Python wrapper): the C++ checks alone."""
    good["stride"], good["padding"] = [1, 1], [1, 1]
    breaker, match = RAW_BAD[name]
    breaker(good)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.resnet_fused.conv_bn_act(*good.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_tensor_input(backend, good):
    good["input"] = good["input"].numpy()
    with pytest.raises(TypeError, match="input must be a Tensor"):
        _call(good, backend)
    with pytest.raises(TypeError, match="x must be a Tensor"):
        ops.add_relu([1.0, 2.0], torch.ones(2), backend=backend)


# --- add_relu ----------------------------------------------------------------------------------

BAD_ADD_RELU = {
    "shape": (lambda x, r: (x, r[:, :, :3]), r"residual sizes"),
    "rank": (lambda x, r: (x, r[0]), r"residual sizes"),
    "dtype": (lambda x, r: (x, r.half()), r"residual dtype"),
    "int": (lambda x, r: (x.int(), r.int()), r"x must be float32, float16 or bfloat16"),
    "float64": (lambda x, r: (x.double(), r.double()), r"x must be float32, float16 or bfloat16"),
    "device": (lambda x, r: (x, r.to("meta")), r"residual is on meta"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(BAD_ADD_RELU))
def test_add_relu_bad_arguments(name, backend, generator):
    x = torch.randn(2, 3, 4, 5, generator=generator)
    r = torch.randn(2, 3, 4, 5, generator=generator)
    breaker, match = BAD_ADD_RELU[name]
    with pytest.raises(ERRORS, match=match):
        ops.add_relu(*breaker(x, r), backend=backend)


# --- backend names and availability ------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpu", "CUDA", "Cpu", "", "tensorrt", None])
def test_unknown_backend(name, good, generator):
    with pytest.raises(ValueError, match="backend must be one of"):
        _call(good, name)
    x = torch.randn(2, 2, generator=generator)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.add_relu(x, x, backend=name)
    with pytest.raises(ValueError, match="backend"):
        resnet_fused.fuse(resnet_fused.resnet18(), backend=name)


def test_available_backends_on_this_machine():
    status = resnet_fused.backend_status()
    assert set(status) == {"cpu", "cuda", "triton", "aten"}
    available = resnet_fused.available_backends()
    assert "cpu" in available and "aten" in available
    assert all(status[name] == "available" for name in available)
    assert all(status[name] != "available" for name in set(status) - set(available))


@pytest.mark.skipif(resnet_fused.backend_status()["cuda"] == "available",
                    reason="this install has working CUDA kernels")
def test_cuda_backend_unavailable_says_why_and_how(good):
    why = resnet_fused.backend_status()["cuda"]
    assert why != "available"
    with pytest.raises(RuntimeError, match="backend='cuda' is unavailable") as info:
        _call(good, "cuda")
    message = str(info.value)
    if not torch.cuda.is_available() and not backends._CUDA_KERNELS_BUILT:
        assert "rebuild" in message and "CUDA" in message and "nvcc" in message
    with pytest.raises(RuntimeError, match="backend='cuda' is unavailable"):
        ops.add_relu(good["input"], good["input"], backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_fused_model_unavailable_says_why(generator):
    """Either fuse() or the first forward refuses, with the reason, never a crash."""
    model = resnet_fused.resnet18(num_classes=4).eval()
    with pytest.raises(RuntimeError, match="backend='cuda'"):
        resnet_fused.fuse(model, backend="cuda")(torch.randn(1, 3, 32, 32, generator=generator))


def test_cpu_backend_refuses_other_devices(good):
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in good.items()}
    with pytest.raises(ValueError, match="backend='cpu' needs CPU tensors"):
        _call(meta, "cpu")


def test_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ERRORS, match="triton"):
        backends.resolve_backend("triton", torch.device("cpu"))


# --- the fused model's forward -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fused18():
    return {backend: resnet_fused.fuse(resnet_fused.resnet18(num_classes=4), backend=backend)
            for backend in BACKENDS}


BAD_MODEL_INPUTS = {
    "3d": (lambda g: torch.randn(3, 32, 32, generator=g), ValueError, r"4-D"),
    "5d": (lambda g: torch.randn(1, 1, 3, 32, 32, generator=g), ValueError, r"4-D"),
    "1-channel": (lambda g: torch.randn(1, 1, 32, 32, generator=g), ValueError,
                  r"3 channels"),
    "4-channels": (lambda g: torch.randn(2, 4, 32, 32, generator=g), ValueError,
                   r"3 channels"),
    "channels-last-dim": (lambda g: torch.randn(1, 32, 32, 3, generator=g), ValueError,
                          r"3 channels"),
    "int": (lambda g: torch.randint(0, 255, (1, 3, 32, 32), generator=g, dtype=torch.uint8),
            TypeError, r"floating-point"),
    "numpy": (lambda g: torch.randn(1, 3, 32, 32, generator=g).numpy(), TypeError, r"Tensor"),
    # another device than the model's (meta stands in for a GPU on a CPU-only machine)
    "other-device": (lambda g: torch.randn(1, 3, 32, 32, generator=g).to("meta"), ValueError,
                     r"input is on meta but the model is on cpu"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(BAD_MODEL_INPUTS))
def test_fused_model_bad_input(name, backend, fused18, generator):
    make, error, match = BAD_MODEL_INPUTS[name]
    model = fused18[backend]
    with pytest.raises(error, match=match):
        model(make(generator))
    with pytest.raises(error, match=match):
        model.forward_features(make(generator))
