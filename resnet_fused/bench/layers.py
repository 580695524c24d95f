"""Per-layer measuring: the distinct conv shapes of a ResNet, inputs, variants and reference."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import CHOICES, backend_status
from ..testing import no_tf32, randomize_batchnorm_, reference_dtype
from .variants import Unavailable
from .workload import make_model


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


def conv_layers(model: nn.Module | str = "resnet50", batch: int = 1,
                size: int = 224) -> list[ConvLayer]:
    """The distinct fused conv layers of ``model`` at ``size`` x ``size``, in network order.

    Found by running the fused model (``backend="aten"``) once on the meta device (shapes only, no
    arithmetic) and recording each fused conv's input shape and whether a residual was passed to
    it, so it follows any ResNet depth. A model given by name is traced once per ``size``.
    """
    layers = (_named_model_layers(model, size) if isinstance(model, str)
              else _trace_conv_layers(model, size))
    return [layer.with_batch(batch) for layer in layers]


@functools.cache
def _named_model_layers(name: str, size: int) -> tuple[ConvLayer, ...]:
    return tuple(_trace_conv_layers(make_model(name), size))


@torch.no_grad()
def _trace_conv_layers(model: nn.Module, size: int) -> list[ConvLayer]:
    from ..fused import FusedConvBNAct, fuse

    fused = fuse(copy.deepcopy(model).float().to("meta"), backend="aten")
    seen: dict[tuple, ConvLayer] = {}

    def hook(module, args, _out, name):
        x = args[0]
        residual = len(args) > 1 and args[1] is not None
        k, c, r, s = module.weight.shape
        if module.stride[0] != module.stride[1] or module.padding[0] != module.padding[1]:
            raise ValueError(f"{name}: non-square stride/padding is not handled by the roofline")
        layer = ConvLayer(_source_name(name), 1, c, x.shape[2], x.shape[3], k, r, s,
                          module.stride[0], module.padding[0], residual, module.relu)
        key = dataclasses.astuple(dataclasses.replace(layer, name="", count=0))
        if key in seen:
            seen[key] = dataclasses.replace(seen[key], count=seen[key].count + 1)
        else:
            seen[key] = layer

    handles = [m.register_forward_hook(lambda mod, a, o, name=n: hook(mod, a, o, name))
               for n, m in fused.named_modules() if isinstance(m, FusedConvBNAct)]
    try:
        fused(torch.zeros(1, 3, size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return list(seen.values())


def make_layer_inputs(layer: ConvLayer, dtype: torch.dtype, device: torch.device | str,
                      seed: int = 0) -> dict:
    """Random channels_last input/weight/residual, and a random BN (module + folded scale/shift)."""
    from ..folding import fold_batchnorm

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
    ``onednn-conv`` (CPU): oneDNN's convolution alone with its weight already in oneDNN's layout
    for this shape, as the fused model's is: the floor for ``fused-onednn``.
    ``eager``: conv -> BatchNorm -> (+ residual) -> ReLU as separate PyTorch ops, in the layer's
    dtype (BN parameters cast too, as ``model.to(dtype)`` does).
    ``fused-<backend>``: ``resnet_fused.ops.conv_bn_act`` (the raw op).
    ``fused-onednn`` (CPU): the fused conv module ``fuse()`` builds, i.e. one oneDNN convolution
    with BN folded and ReLU / the residual add as post-ops, or for the stride-1 3x3 convs that
    ``RESNET_FUSED_WINOGRAD``'s policy picks, the Winograd op, and for the 1x1 convs that
    ``RESNET_FUSED_CONV1X1`` allows, this package's 1x1 op; as in the model, the residual is
    summed in place (each call accumulates into ``inputs["residual"]``: the first call's output
    is the checked one, later calls only cost the same).
    """
    from .. import ops

    x, w, res = inputs["input"], inputs["weight"], inputs["residual"]
    stride, pad = (layer.stride,) * 2, (layer.padding,) * 2
    if name == "conv":
        return (lambda: F.conv2d(x, w, None, stride, pad)), "conv"
    if name in ("onednn-conv", "fused-onednn"):
        from ..cpu import capability
        from ..fused import FusedConvBNAct

        if x.device.type != "cpu":
            raise Unavailable(f"{name} runs on CPU tensors only")
        if x.dtype not in capability.fast_dtypes():
            raise Unavailable(f"{name}: oneDNN has no {x.dtype} convolutions on this CPU")
        if name == "onednn-conv":
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w, list(pad), list(stride), [1, 1], 1, list(x.shape))
            conv = torch.ops.mkldnn._convolution_pointwise.default
            return (lambda: conv(x, packed, None, list(pad), list(stride), [1, 1], 1, "none", [],
                                 "")), "conv"
        module = FusedConvBNAct(w, inputs["scale"], inputs["shift"], stride, pad, layer.relu,
                                backend="cpu")
        module(x, None if res is None else res.clone())  # prepares (folds, reorders) untimed
        return (lambda: module(x, res, residual_is_scratch=True)), "op"
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
    from ..reference import conv_bn_act_reference

    x, w = inputs["input"], inputs["weight"]
    ref_dtype = reference_dtype(x.dtype)
    stride, pad = (layer.stride,) * 2, (layer.padding,) * 2
    with no_tf32():
        if what == "conv":
            return F.conv2d(x.to(ref_dtype), w.to(ref_dtype), None, stride, pad)
        res = inputs["residual"]
        return conv_bn_act_reference(x.to(ref_dtype), w.to(ref_dtype), inputs["scale"],
                                     inputs["shift"], None if res is None else res.to(ref_dtype),
                                     stride, pad, layer.relu)

