"""Fused inference modules and ``fuse()``, the converter from a torchvision-style ResNet.

A fused ResNet is the same network with every ``conv -> BN (-> ReLU)`` and
``conv -> BN -> +skip -> ReLU`` chain replaced by one :class:`FusedConvBNAct`: one call of
``resnet_fused.ops.conv_bn_act``, or on the CPU one oneDNN convolution with the epilogue as
post-ops (:mod:`resnet_fused.cpu.onednn`). Pooling and the classifier are the original modules,
except with the ``cpu``/``auto`` backend, where the stem's max-pool, a global average pool and a
linear classifier become :mod:`resnet_fused.cpu.pooling`'s drop-in equivalents.

Fused models compute what the source model computes in eval mode, also under autograd: while
gradients are recorded (an input or a parameter that requires grad, grad mode on) every conv
runs the raw op, whose backward is registered (:mod:`resnet_fused.autograd`); BatchNorm stays
frozen (folded), so ``train(True)`` is refused. NaN and Inf stay visible: the CPU fast path's
oneDNN ReLU post-op would turn a NaN into 0, so a forward whose input is not all finite, and a
conv whose weight or BatchNorm numbers are not, run the raw op, whose epilogue keeps them.

On the CPU fast path a fused ResNet records the ops of each input shape's forward once and then
replays them from C++ (:mod:`resnet_fused.cpu.plan`): the same ops and bits, without the Python
between them, for as long as nothing they were recorded against changes.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn

from . import ops
from .backends import CHOICES
from .checks import SUPPORTED_DTYPES
from .cpu import capability, onednn
from .cpu.plan import PlanCache
from .cpu.pooling import GlobalAvgPool, MaxPool, PackedLinear
from .cuda import channels
from .folding import fold_batchnorm, is_batchnorm

__all__ = ["FusedBlock", "FusedConvBNAct", "FusedResNet", "fuse"]

# Modules that are the identity in eval mode and may sit inside a block (timm adds some).
_EVAL_IDENTITY = {"Identity", "Dropout", "DropPath", "DropBlock2d"}

_ALL_FINITE = torch.ops.resnet_fused.all_finite.default

_NOT_TRACEABLE = ("torch.jit.trace cannot record resnet_fused's fused models (their ops are "
                  "custom ops that TorchScript does not know); use torch.export.export(model, "
                  "(x,)) or torch.compile(model), which both trace them")


def all_finite(*tensors: Tensor | None) -> bool:
    """True if no tensor holds a NaN or an infinity: ``resnet_fused::all_finite``, one read on
    one thread (CPU tensors of the supported dtypes, as the fast path has)."""
    return all(t is None or bool(_ALL_FINITE(t.detach())) for t in tensors)


def records_grad(*tensors: Tensor | None) -> bool:
    """True if autograd records an op on these tensors (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check_cast(module: nn.Module, fn, dtype: torch.dtype, device: torch.device) -> None:
    """Refuses a ``.to()``/``.double()``/... that would give the module an unsupported compute
    dtype, before anything is changed (``fn`` is tried on an empty tensor)."""
    new = fn(torch.empty(0, dtype=dtype, device=device))
    if new.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{type(module).__name__} cannot compute in {new.dtype}: fused models run "
                        f"in {', '.join(str(d) for d in SUPPORTED_DTYPES)}; fuse the source model "
                        "again with fuse(model, dtype=...) or cast to one of those")


class FusedConvBNAct(nn.Module):
    """One fused ``conv -> BatchNorm (-> + residual) (-> ReLU)``; BN kept as fp32 scale/shift.

    ``weight`` (a parameter, frozen by :func:`fuse`) and the ``scale``/``shift`` buffers are the
    source network's numbers. With the ``cpu`` (or ``auto``) backend on CPU tensors, a call runs
    oneDNN's convolution with BN folded into a prepared weight
    (:class:`resnet_fused.cpu.onednn.OneDNNConv`, built from them and rebuilt whenever they change);
    otherwise, while ``torch.compile`` traces, while autograd records (its backward is the raw
    op's) and for inputs that are not all finite, it calls the raw op.
    """

    def __init__(self, weight: Tensor, scale: Tensor, shift: Tensor, stride, padding,
                 relu: bool, backend: str = "auto") -> None:
        super().__init__()
        # channels_last (K, R, S, C memory) is the layout every backend's kernel reads fastest:
        # packing it once here keeps the per-call path free of weight copies.
        # clone, not .contiguous(): the fused model must never share storage with the source model
        # (a (K, C, 1, 1) weight already counts as channels_last, and .contiguous would alias it).
        # A parameter, so that fine-tuning finds it (fuse() freezes it); BatchNorm stays frozen.
        self.weight = nn.Parameter(weight.detach().clone(memory_format=torch.channels_last),
                                   requires_grad=False)
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("shift", shift.detach().float().clone())
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.relu = relu
        self.backend = backend
        self._onednn: onednn.OneDNNConv | None = None  # derived state, see _onednn_conv
        # Derived too: on a GPU, the weight with the channels the CUDA kernels pad to (the stem's
        # 3 -> 8), made once instead of by the op on every call.
        self._padded_weight = channels.PaddedWeight()

    @classmethod
    def from_conv_bn(cls, conv: nn.Module, bn: nn.Module, relu: bool, backend: str,
                     dtype: torch.dtype, name: str) -> FusedConvBNAct:
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"cannot convert {name}: expected nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or tuple(conv.dilation) != (1, 1):
            raise ValueError(f"cannot convert {name}: groups={conv.groups}, dilation="
                             f"{tuple(conv.dilation)}; only groups=1, dilation=1 are supported")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"cannot convert {name}: padding={conv.padding!r}, padding_mode="
                             f"{conv.padding_mode!r}; only explicit zero padding is supported")
        if not is_batchnorm(bn, dims=2):
            raise TypeError(f"cannot convert {name}: expected nn.BatchNorm2d or "
                            f"FrozenBatchNorm2d after the conv, got {type(bn).__name__}")
        channels = bn.running_mean.numel() if bn.running_mean is not None else bn.num_features
        if channels != conv.out_channels:
            raise ValueError(f"cannot convert {name}: BatchNorm has {channels} channels, "
                             f"the conv has {conv.out_channels} outputs")
        scale, shift = fold_batchnorm(bn, conv.bias, name=name)
        return cls(conv.weight.detach().to(dtype), scale, shift, conv.stride, conv.padding,
                   relu, backend)

    def _apply(self, fn, recurse=True):
        _check_cast(self, fn, self.weight.dtype, self.weight.device)
        # BatchNorm stays fp32 whatever dtype the module is cast to (`.half()`, `.to(bf16)`):
        # keep the exact fp32 values and only follow the move to another device.
        scale, shift = self.scale, self.shift
        self._onednn = None  # prepared from the old tensors; don't keep them alive
        self._padded_weight.clear()
        super()._apply(fn, recurse)
        self.scale = scale.to(self.scale.device)
        self.shift = shift.to(self.shift.device)
        return self

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: Tensor, residual: Tensor | None = None,
                residual_is_scratch: bool = False, relu: bool | None = None,
                inputs_finite: bool | None = None) -> Tensor:
        """``act(BN(conv(x)) (+ residual))``, channels_last.

        ``residual_is_scratch``: the caller will not read ``residual`` again, so the CPU fast path
        may accumulate into its buffer (oneDNN's in-place sum) instead of allocating the output.
        ``relu``: overrides the module's own ``relu`` for this call (see :class:`FusedBlock`).
        ``inputs_finite``: whether ``x`` and ``residual`` are known to be all finite (a fused
        model checks its input once); None: the CPU fast path checks them itself.
        """
        if torch.jit.is_tracing():
            raise RuntimeError(_NOT_TRACEABLE)
        relu = self.relu if relu is None else relu
        buffers = self._buffers
        weight = self._parameters["weight"]
        if (self.backend in ("cpu", "auto") and not torch.compiler.is_compiling()
                and not records_grad(x, weight, residual, buffers["scale"], buffers["shift"])):
            conv = self._onednn_conv(x)
            if conv is not None and (inputs_finite or (inputs_finite is None
                                                       and all_finite(x, residual))):
                y = conv.run(x, residual, relu, residual_is_scratch)
                if y is not None:
                    return y
        pad_to = channels.needs_padding(x, self.backend)
        if pad_to is not None and x.dtype == weight.dtype and x.shape[1] == weight.shape[1]:
            x, weight = channels.pad_channels(x, pad_to), self._padded_weight.get(weight, pad_to)
        return ops.conv_bn_act(x, weight, buffers["scale"], buffers["shift"], residual,
                               self.stride, self.padding, relu, self.backend)

    def _onednn_conv(self, x: Tensor) -> onednn.OneDNNConv | None:
        """The oneDNN form of this conv, prepared from the current buffers; None where the fast
        path cannot run (not a CPU tensor, a dtype oneDNN lacks here, buffers elsewhere)."""
        buffers = self._buffers  # not self.scale: nn.Module.__getattr__ is slow on a hot path
        weight, scale, shift = self._parameters["weight"], buffers["scale"], buffers["shift"]
        conv = self._onednn
        if conv is not None and conv.is_prepared_from(weight, scale, shift):
            return conv
        if not (x.is_cpu and weight.is_cpu and x.dtype == weight.dtype
                and x.dtype in capability.fast_dtypes()):
            return None
        conv = self._onednn = onednn.OneDNNConv(weight, scale, shift, self.stride, self.padding)
        return conv

    @property
    def keeps_finite(self) -> bool:
        """False if the numbers the CPU fast path last prepared from (weight, scale, shift) hold a
        NaN or an infinity: then this conv's output may not be finite even for a finite input.
        Current after each call that could take the fast path, which is when it matters."""
        conv = self._onednn
        return conv is None or conv.finite

    def refresh(self) -> None:
        """Drops the prepared weights (oneDNN's, the padded one; rebuilt on the next call)."""
        self._onednn = None
        self._padded_weight.clear()

    def __getstate__(self) -> dict:
        # The prepared weights are derived (and oneDNN-layout tensors cannot be pickled):
        # copies and pickles rebuild them on their first call.
        state = self.__dict__.copy()
        state["_onednn"] = None
        state["_padded_weight"] = channels.PaddedWeight()
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_padded_weight", channels.PaddedWeight())  # pickled before it existed
        super().__setstate__(state)

    def extra_repr(self) -> str:
        k, c, r, s = self.weight.shape
        return (f"{c}, {k}, kernel_size=({r}, {s}), stride={self.stride}, padding={self.padding}, "
                f"relu={self.relu}, dtype={self.weight.dtype}, backend={self.backend!r}")


class FusedBlock(nn.Module):
    """A residual block: ``convs`` in sequence, the last one adding the skip path before ReLU.

    With a downsample conv on the skip path and the ``cpu``/``auto`` backend on CPU tensors, the
    order is swapped: the last conv runs without ReLU, and the downsample conv then adds its own
    output to that one (in place) and applies the ReLU. Same sum, computed as Inductor does: the sum
    post-op then lands on a tensor that was just written, still partly in cache, instead of the
    downsample's output from three convolutions earlier (measured: ~0.2 ms per stage at batch 1).
    """

    def __init__(self, convs: list[FusedConvBNAct], skip: FusedConvBNAct | None) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.skip = skip

    def forward(self, x: Tensor, consume_input: bool = False,
                inputs_finite: bool | None = None) -> Tensor:
        """``consume_input``: the caller will not read ``x`` again, so an identity skip path may
        be overwritten by the residual sum (the block's own intermediates always may).
        ``inputs_finite``: see :meth:`FusedConvBNAct.forward` (it holds for the block's
        intermediates too: finite inputs through finite weights)."""
        *body, last = self.convs
        skip = self.skip
        # An activation is known finite while every conv before it had finite numbers.
        finite = inputs_finite
        out = x
        if skip is not None and last.backend in ("cpu", "auto") and x.is_cpu:
            for conv in body:
                out = conv(out, inputs_finite=finite)
                finite = finite and conv.keeps_finite
            out = last(out, relu=False, inputs_finite=finite)
            finite = finite and last.keeps_finite
            return skip(x, out, residual_is_scratch=True, relu=last.relu, inputs_finite=finite)
        identity = x
        if skip is not None:
            identity = skip(x, inputs_finite=finite)
            finite = finite and skip.keeps_finite
        for conv in body:
            out = conv(out, inputs_finite=finite)
            finite = finite and conv.keeps_finite
        return last(out, identity, residual_is_scratch=consume_input or skip is not None,
                    inputs_finite=finite)

    @property
    def keeps_finite(self) -> bool:
        """See :attr:`FusedConvBNAct.keeps_finite`: true for every conv of the block."""
        return all(conv.keeps_finite for conv in self.convs) and (
            self.skip is None or self.skip.keeps_finite)


class FusedResNet(nn.Module):
    """A fused ResNet: same outputs as the source model in eval mode, gradients included.

    Takes (N, C, H, W) input of any memory format and dtype (cast to the model's dtype), returns
    logits (or, from :meth:`forward_features`, the pooled features before the classifier, or
    from :meth:`forward_stages`, the four stages' outputs).

    BatchNorm is folded into fixed per-channel numbers, so the model is always in eval mode:
    ``train(True)`` raises. Fine-tuning with frozen BatchNorm works as for the source model in
    eval mode: ``model.requires_grad_(True)`` (``fuse()`` returns it frozen), then the usual
    optimizer over ``model.parameters()`` (conv weights and classifier).
    """

    def __init__(self, stem: FusedConvBNAct, maxpool: nn.Module, stages: nn.Sequential,
                 pool: nn.Module, fc: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.maxpool = maxpool
        self.stages = stages
        self.pool = pool
        self.fc = fc
        self._plans = PlanCache()  # derived state: CPU forward plans per input shape

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: the weights' (follows `.half()`, `.to(torch.bfloat16)` as well)."""
        return self.stem.weight.dtype

    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"input must be 4-D (N, C, H, W), got {x.dim()}-D with sizes "
                             f"{list(x.shape)}")
        if x.shape[1] != self.stem.in_channels:
            raise ValueError(f"input must have {self.stem.in_channels} channels (dim 1), got "
                             f"{x.shape[1]} (sizes {list(x.shape)})")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        if x.device != self.stem.weight.device:
            raise ValueError(f"input is on {x.device} but the model is on "
                             f"{self.stem.weight.device}; move one of them (e.g. model.to(device))")
        # Cast first, then lay out: for an fp32 NCHW image into bf16 NHWC the two passes take
        # 73 us, torch's one combined copy 171 us (batch 1, one Zen 5 core). Same values.
        return x.to(dtype=self.dtype).contiguous(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> FusedResNet:
        if mode:
            raise RuntimeError(
                "a fused ResNet cannot be put in training mode: its BatchNorms are folded into "
                "fixed per-channel scale and shift, so batch statistics cannot be computed. To "
                "fine-tune it with frozen BatchNorm (as detection and transfer-learning backbones "
                "are), keep it in eval mode and enable gradients: fused.requires_grad_(True). To "
                "train BatchNorm too, train the source model and fuse() it again afterwards.")
        return super().train(False)

    def _apply(self, fn, recurse=True):
        _check_cast(self, fn, self.dtype, self.stem.weight.device)
        self._plans.clear()  # recorded with the old tensors; don't keep them alive
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        # Plans are derived (and hold C++ objects that cannot be copied): copies and pickles
        # record their own.
        state = self.__dict__.copy()
        state["_plans"] = PlanCache()
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_plans", PlanCache())  # pickled before plans existed
        super().__setstate__(state)

    def _body(self, x: Tensor, stages: bool) -> list[Tensor]:
        """The input checked and cast, through the stem, its max-pool and the stages: the four
        stages' outputs (``stages``), or the last one. On the CPU fast path, from the forward
        plan of this input shape once there is one (:mod:`resnet_fused.cpu.plan`)."""
        if torch.jit.is_tracing():
            raise RuntimeError(_NOT_TRACEABLE)
        x = self._check_input(x)
        # One cheap read of the input decides for the whole forward whether the CPU fast path,
        # whose oneDNN ReLU would turn a NaN into 0, may run (only the CPU path asks).
        finite = (x.is_cpu and self.stem.backend in ("cpu", "auto")
                  and not torch.compiler.is_compiling() and all_finite(x))
        if not finite:
            return self._run_body(x, False, stages)[0]
        key = (stages, x.shape, x.stride(), x.dtype)
        return self._plans.run(key, x, self._planned_modules,
                               lambda: self._run_body(x, True, stages))

    def _run_body(self, x: Tensor, finite: bool, stages: bool) -> tuple[list[Tensor], bool]:
        """:meth:`_body` in Python; also whether the activations stayed known finite
        (:meth:`FusedConvBNAct.forward`'s ``inputs_finite``)."""
        x = self.stem(x, inputs_finite=finite)
        finite = finite and self.stem.keeps_finite
        x = self.maxpool(x)
        outputs = []
        for stage in self.stages:
            for j, block in enumerate(stage):
                # Blocks may overwrite their input where it is the model's own activation: a
                # returned stage output is not (the next stage's first block must keep it).
                x = block(x, consume_input=j > 0 or not stages, inputs_finite=finite)
                finite = finite and block.keeps_finite
            if stages:
                outputs.append(x)
        return (outputs if stages else [x]), finite

    def _planned_modules(self) -> list[nn.Module]:
        """The modules a forward plan runs (and the model, whose children it checks)."""
        return [self, *self.stem.modules(), *self.maxpool.modules(), *self.stages.modules()]

    def forward_stages(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """The outputs of the four stages, ``layer1`` .. ``layer4`` (C2-C5, strides 4 to 32), as
        a feature pyramid network takes them (the keys are the source model's module names)."""
        return OrderedDict((f"layer{i + 1}", y) for i, y in enumerate(self._body(x, True)))

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features before the classifier, shape (N, num_features)."""
        x = self.pool(self._body(x, False)[0])
        return torch.flatten(x, 1) if x.dim() > 2 else x

    def refresh(self) -> None:
        """Rebuilds the CPU fast path's prepared weights on the next call.

        Not needed after updates made through PyTorch (``load_state_dict``, in-place ops,
        assigning new tensors, ``.to()``): those are detected. Needed after writes that bypass
        the tensors' version counters, e.g. through ``.data`` or a NumPy view.
        """
        self._plans.clear()
        for m in self.modules():
            if isinstance(m, (FusedConvBNAct, PackedLinear)):
                m.refresh()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def _child(module: nn.Module, names: tuple[str, ...], path: str, what: str) -> nn.Module | None:
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(f"cannot convert {path or 'model'}: no {what} (looked for "
                     f"{', '.join(repr(n) for n in names)})")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert_block(block: nn.Module, path: str, backend: str, dtype: torch.dtype) -> FusedBlock:
    children = dict(block.named_children())
    n_convs = 0
    while f"conv{n_convs + 1}" in children:
        n_convs += 1
    if n_convs not in (2, 3):
        raise ValueError(f"cannot convert {path}: a residual block needs conv1, conv2 (and conv3 "
                         f"for a bottleneck) with bn1..bnN; found {n_convs} convs in "
                         f"{type(block).__name__}")
    convs = []
    for i in range(1, n_convs + 1):
        if f"bn{i}" not in children:
            raise ValueError(f"cannot convert {path}: conv{i} has no bn{i}")
        convs.append(FusedConvBNAct.from_conv_bn(
            children[f"conv{i}"], children[f"bn{i}"], relu=True, backend=backend, dtype=dtype,
            name=_join(path, f"conv{i}")))
    used = {f"{kind}{i}" for kind in ("conv", "bn") for i in range(1, n_convs + 1)}

    skip_name, skip_module = None, None
    for name, child in children.items():
        if name in used or isinstance(child, nn.ReLU) or type(child).__name__ in _EVAL_IDENTITY:
            continue
        if isinstance(child, nn.Sequential):
            if skip_name is not None:
                raise ValueError(f"cannot convert {path}: two candidate skip paths, "
                                 f"{skip_name!r} and {name!r}")
            skip_name, skip_module = name, child
            continue
        raise ValueError(f"cannot convert {_join(path, name)}: a {type(child).__name__} inside a "
                         "residual block is not supported (expected convs, BatchNorms, ReLUs and "
                         "a skip path of nn.Sequential(conv, bn) or nn.Sequential())")

    skip = None
    if skip_module is not None and len(skip_module) > 0:
        if len(skip_module) != 2:
            raise ValueError(f"cannot convert {_join(path, skip_name)}: a skip path must be "
                             f"nn.Sequential(conv, bn) or empty, got {len(skip_module)} modules")
        skip = FusedConvBNAct.from_conv_bn(skip_module[0], skip_module[1], relu=False,
                                           backend=backend, dtype=dtype,
                                           name=_join(path, f"{skip_name}.0"))
    else:
        strided = any(s != 1 for c in convs for s in c.stride)
        if convs[0].in_channels != convs[-1].out_channels or strided:
            raise ValueError(f"cannot convert {path}: its skip path is the identity, but the block "
                             f"maps {convs[0].in_channels} -> {convs[-1].out_channels} channels"
                             f"{' with a stride' if strided else ''}")
    convs[-1].relu = True
    return FusedBlock(convs, skip)


def fuse(model: nn.Module, backend: str = "auto", dtype: torch.dtype | None = None) -> FusedResNet:
    """Converts a torchvision-style ResNet into a :class:`FusedResNet` (the input is not modified).

    Args:
        model: a ResNet from this package, torchvision or timm, or a hand-written one with the same
            structure (stem ``conv1/bn1/relu/maxpool``, ``layer1..4`` of blocks with
            ``conv1/bn1/conv2/bn2[/conv3/bn3]`` and a skip path that is ``nn.Sequential(conv, bn)``,
            an empty ``nn.Sequential()`` or ``None`` under any attribute name, ``avgpool``/
            ``global_pool`` and ``fc``).
        backend: ``"auto"`` (per call: ``cuda``, then ``triton`` on GPU; ``cpu`` on CPU), or one of
            ``"cpu"``, ``"cuda"``, ``"triton"``, ``"aten"``.
        dtype: compute dtype for weights and activations (float32, float16, bfloat16); default: the
            model's. BatchNorm is always folded in fp32.

    On a CPU (``cpu``/``auto`` backend) the fused convs run as oneDNN convolutions with BN folded
    into prepared weights (:mod:`resnet_fused.cpu.onednn`); their weights are reordered on the first
    call with each input shape, so time a model after one warm-up call.

    Returns:
        A new eval-mode :class:`FusedResNet` on the model's device.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be an nn.Module, got {type(model).__name__}")
    # Called under torch.inference_mode, the copies would be inference tensors, which have no
    # version counter: the CPU fast path could not see later in-place updates of the weights.
    with torch.inference_mode(False):
        return _fuse(model, backend, dtype)


def _fuse(model: nn.Module, backend: str, dtype: torch.dtype | None) -> FusedResNet:
    if backend not in CHOICES:
        raise ValueError(f"fuse: backend must be one of {CHOICES}, got {backend!r}")
    stem_conv = _child(model, ("conv1",), "", "stem convolution")
    if dtype is None:
        dtype = stem_conv.weight.dtype if isinstance(stem_conv, nn.Conv2d) else torch.float32
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"fuse: dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")

    stem = FusedConvBNAct.from_conv_bn(stem_conv, _child(model, ("bn1",), "", "stem BatchNorm"),
                                       relu=True, backend=backend, dtype=dtype, name="conv1")
    act = getattr(model, "relu", getattr(model, "act1", None))
    if act is not None and not isinstance(act, nn.ReLU):
        raise ValueError(f"cannot convert the stem: its activation is {type(act).__name__}, "
                         "only ReLU is supported")
    # The CPU path also runs pooling and the classifier its own way (resnet_fused.cpu.pooling);
    # the reference path (aten) keeps the source's modules.
    own_head = backend in ("cpu", "auto")
    maxpool = _child(model, ("maxpool",), "", "stem max-pool")
    maxpool = (MaxPool.from_module(maxpool) if own_head and MaxPool.convertible(maxpool)
               else copy.deepcopy(maxpool))
    stages = []
    for i in range(1, 5):
        layer = _child(model, (f"layer{i}",), "", f"stage layer{i}")
        if not isinstance(layer, nn.Sequential):
            raise TypeError(f"cannot convert layer{i}: expected nn.Sequential of residual blocks, "
                            f"got {type(layer).__name__}")
        blocks = [_convert_block(block, f"layer{i}.{j}", backend, dtype)
                  for j, block in enumerate(layer)]
        stages.append(nn.Sequential(*blocks))
    pool = _child(model, ("avgpool", "global_pool"), "", "global pool")
    pool = GlobalAvgPool() if own_head and GlobalAvgPool.convertible(pool) else copy.deepcopy(pool)
    fc = _child(model, ("fc",), "", "classifier")
    fc = PackedLinear.from_linear(fc) if own_head and type(fc) is nn.Linear else copy.deepcopy(fc)
    fused = FusedResNet(stem, maxpool, nn.Sequential(*stages), pool, fc.to(dtype))
    return fused.to(stem_conv.weight.device).eval().requires_grad_(False)
