"""The CPU fast path of a fused model: each fused conv is one call, oneDNN's convolution with
post-ops or one of this package's CPU kernels (1x1 GEMM, Winograd 3x3).

``fuse()`` builds :class:`~resnet_fused.fused.FusedConvBNAct` modules that keep the source
network's numbers (the ``weight`` parameter, fp32 ``scale``/``shift`` buffers). On the CPU their
forward runs the oneDNN convolution that torch itself ships (no second copy of oneDNN), through
the registered ``torch.ops.mkldnn`` ops Inductor uses:

* BatchNorm folded into the convolution: ``weight * scale`` computed in fp32 and rounded once to the
  compute dtype, ``shift`` as the bias. In fp32 that changes each weight by at most half an ulp;
  in bf16 it is one more bf16 rounding of each weight (well inside the bf16 bounds).
* ReLU as an eltwise post-op; the residual as oneDNN's ``sum`` post-op, accumulating in place into
  the skip tensor when the caller no longer needs it, else as a ``binary add`` post-op.
* 1x1 convolutions run on this package's own AVX-512 kernel instead where the CPU has it
  (:mod:`resnet_fused.cpu.conv1x1`), the residual summed in place the same way; in bfloat16 on
  AMX CPUs also on its AMX kernel, where measured faster.
* The folded weight reordered into oneDNN's blocked layout once per input shape
  (``_reorder_convolution_weight``; oneDNN's preferred layout depends on the shape, and a weight in
  another layout would be reordered again on every call) and kept for later calls.
* Activations stay channels_last (NHWC) between layers: oneDNN reads and writes that layout
  directly, without reorders.
* Stride-1 3x3 convolutions may run as Winograd F(m, 3) instead (:mod:`resnet_fused.cpu.winograd`,
  this package's own op).
* Which of these runs is chosen per conv and input shape, by fixed rules or measured on this CPU
  (:mod:`resnet_fused.cpu.algorithms`); :attr:`OneDNNConv.choices` says what and why.

The prepared weights are derived state, not a cache that goes stale when the module's numbers
change through PyTorch: each call first checks that the module's ``weight``/``scale``/``shift``
are the tensors it prepared from, unchanged (same tensor, storage and version counter; every
in-place update through PyTorch bumps the version), and prepares again otherwise. Writes that
bypass the version counter (``.data``, NumPy views, in-place writes to inference tensors) need
``FusedResNet.refresh()``. The raw op
``resnet_fused::conv_bn_act`` keeps no state.

Dtypes: float32 always; bfloat16/float16 where oneDNN has kernels for them on this CPU
(:func:`.capability.fast_dtypes`, e.g. AVX512_BF16 or AMX for bf16). Other dtypes, CUDA tensors,
empty batches, ``torch.compile`` tracing, calls autograd records and inputs or numbers that are
not all finite use the raw op instead.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from ..folding import fold_scale
from . import algorithms, conv1x1, plan, winograd
from .algorithms import Choice
from .plan import RecordedOp

__all__ = ["OneDNNConv"]

# The overloads themselves: resolving an OpOverloadPacket by its arguments costs ~15 us a call.
# The ops a fused conv runs are recorded into forward plans (.plan): each is given with the
# positions of its activation arguments and, for in-place ops, of the tensor it writes.
_CONV = RecordedOp(torch.ops.mkldnn._convolution_pointwise.default, (0,))
_CONV_BINARY = RecordedOp(torch.ops.mkldnn._convolution_pointwise.binary, (0, 1))
_CONV_SUM_ = RecordedOp(torch.ops.mkldnn._convolution_pointwise_.binary, (0, 1), mutated=0)
_WINOGRAD = RecordedOp(torch.ops.resnet_fused.winograd_conv3x3.default, (0, 3))
# The Winograd algorithms: the pipeline with its own GEMMs, and with them on AMX tiles.
_WINOGRADS = ("winograd", "winograd_amx")
_CONV1X1 = RecordedOp(torch.ops.resnet_fused.conv1x1.default, (0,))
_CONV1X1_ = RecordedOp(torch.ops.resnet_fused.conv1x1_residual_.default, (0, 1), mutated=0)
_REORDER_WEIGHT = torch.ops.mkldnn._reorder_convolution_weight.default  # preparation only

_DILATION = [1, 1]
_BELOW_AUTOGRAD = torch._C._AutoDispatchBelowAutograd


def _fingerprint(t: Tensor) -> tuple:
    # Tensor identity, storage and version counter: any PyTorch write to t, a new tensor assigned
    # to the module, or a move/cast (which makes new tensors) changes one of them. Inference
    # tensors (made under torch.inference_mode, e.g. by a .to() there) have no version counter:
    # writes to those are only seen through refresh(), as for writes that bypass PyTorch.
    return (id(t), t.data_ptr(), -1 if t.is_inference() else t._version)


class OneDNNConv:
    """A fused conv's oneDNN form, prepared from its (weight, scale, shift) and reused per shape.

    ``conv.run(x, residual, relu, residual_is_scratch)`` computes the fused conv, or returns None
    for a call it does not handle (dtype, device, shapes): the caller then runs the raw op, which
    also names whatever is wrong with the arguments.
    """

    # Input shapes with a weight reordered for them; calls with yet other shapes reuse the most
    # recent one (still right: oneDNN then reorders it on the fly, as for any other layout).
    MAX_SHAPES = 4
    # Input shapes remembered at all (each entry is two references and a tuple).
    _MAX_ENTRIES = 64

    def __init__(self, weight: Tensor, scale: Tensor, shift: Tensor, stride, padding) -> None:
        self.stride = list(stride)
        self.padding = list(padding)
        self.dtype = weight.dtype
        self.out_channels, self.in_channels, self.kh, self.kw = weight.shape
        self._source = (weight, scale, shift)
        self._fingerprints = tuple(_fingerprint(t) for t in self._source)
        # oneDNN's ReLU post-op turns a NaN into 0: numbers that are not all finite make every
        # call fall back to the raw op, whose epilogue keeps NaN and infinity as torch does.
        self.finite = all(bool(torch.isfinite(t).all()) for t in self._source)
        # oneDNN's fused convolution wants the bias in the compute dtype.
        self.bias = shift.to(self.dtype)
        # x.shape -> [weight for it, expected residual/output shape, algorithm] (_entry)
        self._entries: dict[torch.Size, list] = {}
        self._packed: dict[tuple[int, int, int], Tensor] = {}  # (N, H, W) -> packed weight
        self._last: Tensor | None = None
        # Stride-1 3x3 convs may run as Winograd instead (.winograd), per input shape.
        self._winograd_eligible = winograd.eligible((self.kh, self.kw), self.stride, self.padding,
                                                    self.dtype)
        self._winograd_filter: Tensor | None = None  # built on first use; shape-independent
        # The bf16 pipeline's GEMMs on AMX tiles: a measured candidate beside it, where it runs.
        self._winograd_amx = self._winograd_eligible and winograd.amx_path(
            self.dtype, self.in_channels, self.out_channels)
        # (N, H, W) -> what runs and why, among which candidates, for every shape seen (reported
        # only; :attr:`algorithms` is derived from it).
        self._choices: dict[tuple[int, int, int], Choice] = {}
        # Whether this package's 1x1 kernel (resnet_fused.cpu.conv1x1) can take this conv; its
        # weight is packed on first use, and no oneDNN weight is made for shapes it runs.
        self._conv1x1 = conv1x1.path((self.kh, self.kw), self.stride, self.padding, self.dtype,
                                     self.in_channels, self.out_channels)
        self._conv1x1_weight: Tensor | None = None
        self._conv1x1_amx = self._conv1x1 and conv1x1.amx_path(self.dtype, self.in_channels)

    def is_prepared_from(self, weight: Tensor, scale: Tensor, shift: Tensor) -> bool:
        """True if these are the tensors this was prepared from, unchanged since."""
        source = self._source
        return (weight is source[0] and scale is source[1] and shift is source[2]
                and (_fingerprint(weight), _fingerprint(scale), _fingerprint(shift))
                == self._fingerprints)

    def _entry(self, shape: torch.Size, residual: bool = False, relu: bool = True) -> list | None:
        """[weight, output shape, algorithm] for inputs of this shape (``algorithm`` chosen by
        :meth:`_choose` for a call like this one, with or without a residual): the Winograd filter
        where Winograd runs, else the weight reordered for oneDNN, or None until a call needs it
        (:meth:`_reordered`; the 1x1 kernel never does); None if it is not a valid input (wrong
        rank or channels, empty batch, smaller than the kernel)."""
        if len(shape) != 4 or shape[1] != self.in_channels or shape[0] == 0:
            return None
        n, _, h, w = shape
        ho = (h + 2 * self.padding[0] - self.kh) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.kw) // self.stride[1] + 1
        if h + 2 * self.padding[0] < self.kh or w + 2 * self.padding[1] < self.kw:
            return None
        if self.dtype != torch.float32 and max(self.stride) > 1 and min(h, w) <= 2:
            # oneDNN's AMX bf16 convolution is wrong on these (csrc/cpu/conv_bn_act_cpu.cpp):
            # the raw op computes them in fp32. Tiny inputs: nothing to gain here anyway.
            return None
        out_shape = (n, self.out_channels, ho, wo)
        algorithm = self._choose(shape, out_shape, residual, relu)
        entry = [self._winograd_u() if algorithm in _WINOGRADS else None, out_shape, algorithm]
        if len(self._entries) < self._MAX_ENTRIES:
            self._entries[shape] = entry
        return entry

    def _reordered(self, shape: torch.Size) -> Tensor:
        """The weight in oneDNN's layout for inputs of this shape (reordered on first use)."""
        key = (shape[0], shape[2], shape[3])
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) < self.MAX_SHAPES:
                packed = self._packed[key] = _REORDER_WEIGHT(
                    self._fold(), self.padding, self.stride, _DILATION, 1, list(shape))
                self._last = packed
            else:
                packed = self._last
        return packed

    def _choose(self, shape: torch.Size, out_shape: tuple, residual: bool, relu: bool) -> str:
        """The algorithm for inputs of ``shape`` (:mod:`.algorithms`: by rule or measured);
        records it, and why, for :attr:`choices`."""
        n, _, h, w = shape
        key = (n, h, w)
        candidates = ["onednn"]
        if self._conv1x1:
            candidates[:0] = ["conv1x1", "conv1x1_amx"] if self._conv1x1_amx else ["conv1x1"]
        rule = winograd.policy()
        if (self._winograd_eligible and winograd.worthwhile(h, w, self.dtype)
                and rule != "never"):
            candidates[:0] = ["winograd", "winograd_amx"] if self._winograd_amx else ["winograd"]
        if len(candidates) == 1:
            choice = Choice("onednn", "the only algorithm for this conv here")
        elif "winograd" in candidates and rule == "always":
            choice = Choice("winograd", "RESNET_FUSED_WINOGRAD=always")
        elif algorithms.mode() == "measure":
            choice = self._measure(shape, out_shape, candidates, residual, relu)
        elif "conv1x1" in candidates:
            choice = Choice("conv1x1", "rule: 1x1 convs on the package's GEMM where the CPU "
                                       "runs it")
        else:
            use = winograd.by_rule(n, h, w, self.dtype, self.in_channels, self.out_channels)
            tiles = winograd.tiles(n, h, w, self.dtype)
            floor = winograd.min_tiles(self.dtype, self.in_channels, self.out_channels)
            choice = (Choice("winograd", f"rule: {tiles} output tiles >= {floor}") if use
                      else Choice("onednn", f"rule: {tiles} output tiles < {floor} for Winograd"))
        if len(self._choices) < self._MAX_ENTRIES:
            self._choices[key] = dataclasses.replace(choice, candidates=tuple(candidates))
        return choice.algorithm

    def _measure(self, shape: torch.Size, out_shape: tuple, candidates: list[str],
                 residual: bool, relu: bool) -> Choice:
        """Verifies and times ``candidates`` on seeded random data of this call's shape and
        layout, the module's own weights (:func:`.algorithms.measure`)."""
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(tuple(shape), generator=gen).to(self.dtype).contiguous(
            memory_format=torch.channels_last)
        r = None
        if residual:
            r = torch.randn(out_shape, generator=gen).to(self.dtype).contiguous(
                memory_format=torch.channels_last)
        scratch = [None if r is None else r.clone(memory_format=torch.channels_last)]

        def reference() -> Tensor:
            weight, scale, shift = self._source
            folded = weight.double() * scale.double().view(-1, 1, 1, 1)
            y = F.conv2d(x.double(), folded, shift.double(), self.stride, self.padding)
            y = y if r is None else y + r.double()
            return y.clamp_min(0) if relu else y

        def launch(cand: str) -> object:  # as the model calls it: summing in place
            return self._compute(cand, x, scratch[0], relu, in_place=True)

        key = (str(self.dtype), self.in_channels, self.out_channels, self.kh, self.kw,
               *self.stride, *self.padding, shape[0], shape[2], shape[3], residual)
        with torch.inference_mode(), plan.paused():
            choice = algorithms.measure(key, candidates, lambda c: self._compute(c, x, r, relu),
                                        launch, reference, self.dtype)
        self._drop_unused(choice.algorithm, (shape[0], shape[2], shape[3]))
        return choice

    def _drop_unused(self, chosen: str, key: tuple[int, int, int]) -> None:
        """Forgets what measuring prepared for the algorithms that lost: the oneDNN weight
        reordered for this shape, and the Winograd filter (4x a 3x3 weight in fp32) or the packed
        1x1 weight when no shape runs them. A later shape that picks one prepares it again."""
        runs = {c.algorithm for c in self._choices.values()} | {chosen}
        if chosen != "onednn" and self._packed.pop(key, None) is self._last:
            self._last = next(reversed(self._packed.values()), None)
        if not runs & set(_WINOGRADS):
            self._winograd_filter = None
        if not runs & {"conv1x1", "conv1x1_amx"}:
            self._conv1x1_weight = None

    def _winograd_u(self) -> Tensor:
        # The transformed filter: shape-independent, built on first use.
        if self._winograd_filter is None:
            weight, scale, _ = self._source
            u = winograd.transform_filter(weight, scale, self.dtype)
            if self.dtype == torch.bfloat16 and winograd.pipeline_path(
                    self.dtype, self.in_channels, self.out_channels):
                u = winograd.pack_filter(u)  # the op would pack it on every call otherwise
            self._winograd_filter = u
        return self._winograd_filter

    def _fold(self) -> Tensor:
        # fp32 fold, one rounding to the compute dtype; channels_last (K, R, S, C memory) is what
        # the reorder reads fastest. Not kept: a new shape is rare, the memory is not.
        weight, scale, _ = self._source
        return fold_scale(weight, scale, self.dtype).contiguous(memory_format=torch.channels_last)

    def run(self, x: Tensor, residual: Tensor | None, relu: bool,
            residual_is_scratch: bool = False) -> Tensor | None:
        """``act(conv(x, weight * scale) + shift (+ residual))``; None if this call is not
        handled here (see the class docstring). For calls autograd does not record (the caller
        checks): the ops run below autograd, skipping the Python autograd kernels that
        ``register_autograd`` gives this package's ops (~8 us a call on the 2-core development
        VM)."""
        with _BELOW_AUTOGRAD():
            return self._run(x, residual, relu, residual_is_scratch)

    def _run(self, x: Tensor, residual: Tensor | None, relu: bool,
             residual_is_scratch: bool) -> Tensor | None:
        if x.dtype != self.dtype or not x.is_cpu or not self.finite:
            return None
        entry = self._entries.get(x.shape) or self._entry(x.shape, residual is not None, relu)
        if entry is None:
            return None
        if residual is not None and (residual.shape != entry[1] or residual.dtype != self.dtype
                                     or not residual.is_cpu):
            return None
        in_place = (residual is not None and residual_is_scratch
                    and residual.is_contiguous(memory_format=torch.channels_last))
        return self._compute(entry[2], x, residual, relu, in_place, entry)

    def _compute(self, algorithm: str, x: Tensor, residual: Tensor | None, relu: bool,
                 in_place: bool = False, entry: list | None = None) -> Tensor:
        """The fused conv by ``algorithm`` (``in_place``: sum into ``residual``'s buffer where the
        algorithm can). ``entry``: the shape's :meth:`_entry`, for its prepared weight."""
        if algorithm in _WINOGRADS:  # the residual, if any, is read; the output is a new tensor
            u = entry[0] if entry is not None else self._winograd_u()
            kernel = "auto" if algorithm == "winograd" else conv1x1.AMX_KERNEL
            return _WINOGRAD(x, u, self._source[2], residual, relu, kernel)
        if algorithm in ("conv1x1", "conv1x1_amx"):  # this package's 1x1 kernels (.conv1x1)
            kernel = "avx512" if algorithm == "conv1x1" else conv1x1.AMX_KERNEL
            if residual is None:
                return _CONV1X1(x, self._conv1x1_packed(), self._source[2], self.stride, relu,
                                kernel)
            if not in_place:
                residual = residual.clone(memory_format=torch.channels_last)
            # residual = act(conv(x) + shift + residual), in place: no new activation.
            _CONV1X1_(residual, x, self._conv1x1_packed(), self._source[2], self.stride, relu,
                      kernel)
            return residual
        weight = entry[0] if entry is not None else None
        if weight is None:
            weight = self._reordered(x.shape)
            if entry is not None:
                entry[0] = weight
        if residual is None:
            return _CONV(x, weight, self.bias, self.padding, self.stride, _DILATION, 1,
                         "relu" if relu else "none", [], "")
        unary = "relu" if relu else None
        if not in_place:
            _, channels, height, width = residual.shape  # the output's shape
            if channels > 1 and height * width > 1:
                # A binary-add post-op reads the residual; the output is a new tensor.
                return _CONV_BINARY(x, residual, weight, self.bias, self.padding, self.stride,
                                    _DILATION, 1, "add", 1.0, unary, [], "")
            # One channel or one pixel: torch 2.11's binary post-op rejects these outputs'
            # NHWC strides ("could not create a memory"); sum into a copy instead.
            residual = residual.clone(memory_format=torch.channels_last)
        # residual += conv(x) (oneDNN's sum post-op), then ReLU, written into residual's buffer:
        # no new activation is allocated.
        return _CONV_SUM_(residual, x, weight, self.bias, self.padding, self.stride, _DILATION, 1,
                          "add", 1.0, unary, [], "")

    def _conv1x1_packed(self) -> Tensor:
        # conv1x1_residual_'s weight: shape-independent, packed on first use.
        if self._conv1x1_weight is None:
            weight, scale, _ = self._source
            self._conv1x1_weight = conv1x1.pack_weight(weight, scale, self.dtype)
        return self._conv1x1_weight

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """The (N, H, W) input shapes a weight is reordered for."""
        return list(self._packed)

    @property
    def choices(self) -> dict[tuple[int, int, int], Choice]:
        """What runs per (N, H, W) input shape seen, and why (:mod:`.algorithms`)."""
        return dict(self._choices)

    @property
    def algorithms(self) -> dict[tuple[int, int, int], str]:
        """The algorithm chosen per (N, H, W) input shape: ``"winograd"`` or ``"direct"``
        (convs and shapes that Winograd cannot take, e.g. images smaller than a tile, are not
        listed)."""
        return {key: "winograd" if c.algorithm in _WINOGRADS else "direct"
                for key, c in self._choices.items() if "winograd" in c.candidates}
