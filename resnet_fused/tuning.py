"""Per-shape choice among candidates (tile configs, implementations): verified, measured, cached.

A candidate is never chosen on trust. The first time a shape is seen, :func:`choose` runs every
candidate twice on random data with the call's exact layout (sizes, strides, and the pointers'
alignment, on which Triton specializes) and compares its output with the reference composition:
the per-op relative-L2 bound, every element within ``ELEMENTWISE_FACTOR`` times that bound of
the reference's RMS (a corrupted tile barely moves the L2 error), and the two runs bit for bit
equal (the kernels have no atomics: a difference is a race). Outputs are NaN-poisoned, so an
unwritten element fails too. A candidate that raises or fails is dropped and reported (a warning
and :data:`REJECTED`): compilers do miscompile (Triton 3.4-3.6 silently miscompiled Inductor's 3x3
conv template with ``num_warps=8``, pytorch issue 173068). The survivors are timed and the fastest
wins; a single survivor is chosen without timing. With ``first_passing`` (tuning off) the first
candidate that passes is taken and the rest are not run: a default with fall-through.

Choices are cached for the process and, for CUDA devices, on disk (``$RESNET_FUSED_CACHE_DIR``,
default ``~/.cache/resnet_fused/tuning.json``), keyed by the device, the versions of torch,
triton, CUDA and this package, a fingerprint of the candidates' code, and the shape. A cached
choice was verified when it was stored, under exactly that key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from .testing import ELEMENTWISE_FACTOR, elementwise_error, relative_error

__all__ = [
    "REJECTED",
    "ConvProblem",
    "Rejection",
    "cache_path",
    "choose",
    "clear",
    "lookup",
    "outside_tracing",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A candidate dropped by verification: where, which, and why."""

    namespace: str
    key: str
    candidate: str
    reason: str


# Every rejection this process has seen (tests and `resnet_fused info`-style reports read it).
REJECTED: list[Rejection] = []
_CHOSEN: dict[tuple[str, str], str] = {}


def cache_path() -> str:
    root = os.environ.get("RESNET_FUSED_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "resnet_fused")
    return os.path.join(root, "tuning.json")


def clear() -> None:
    """Forgets this process's choices and rejections (not the disk cache)."""
    _CHOSEN.clear()
    REJECTED.clear()


@functools.cache
def _device_fingerprint(device: torch.device) -> str:
    from . import __version__
    from .backends import triton_version

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{props.name} sm_{props.major}{props.minor} x{props.multi_processor_count}"
    else:
        what = device.type
    return (f"{what}|torch {torch.__version__}|cuda {torch.version.cuda}|triton {triton_version()}"
            f"|resnet_fused {__version__}")


def _disk_load() -> dict:
    try:
        with open(cache_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _disk_store(entry: str, choice: str) -> None:
    """Adds one entry to the JSON file: read-modify-write under a lock, atomic replace."""
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "w") as lock:
            try:
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX)  # torchrun ranks tune at the same time
            except ImportError:  # pragma: no cover - not POSIX
                pass
            data = _disk_load()
            data[entry] = choice
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
    except OSError as e:
        _warn_once(f"resnet_fused: cannot write the tuning cache {path} ({e}); choices are kept "
                   "for this process only")


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


@contextlib.contextmanager
def outside_tracing() -> Iterator[None]:
    """Real tensors and real kernel launches while torch.compile / opcheck trace an op.

    Tuning needs real data; while an op body is traced (fake tensors, functionalization, proxy
    modes) this suspends those modes, so the tuning work runs for real and stays out of the graph.
    """
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.utils._python_dispatch import _disable_current_modes

    with unset_fake_temporarily(), _disable_current_modes():
        yield


def wall_timer(fn: Callable[[], object], reps: int = 3) -> float:
    """Median seconds of ``fn()`` by the wall clock (CPU work), after one warm-up."""
    from .bench.timing import time_fn  # bench imports the models, which import this module

    return time_fn(fn, "cpu", warmup=1, reps=reps).median


def cuda_timer(fn: Callable[[], object], reps: int = 20,
               device: torch.device | None = None) -> float:
    """Median seconds of ``fn()`` on ``device``'s current stream (default: the current device):
    bench's CUDA-event timer (3 warm-ups, an untimed L2 flush before each rep, as the benchmarks
    measure)."""
    from .bench.timing import time_fn

    if device is None or device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return time_fn(fn, device, warmup=3, reps=reps).median


def choose(
    namespace: str,
    key: Sequence,
    candidates: Sequence[T],
    run: Callable[[T], Tensor],
    reference: Callable[[], Tensor],
    bound: float,
    device: torch.device,
    name: Callable[[T], str] = repr,
    timer: Callable[[Callable[[], object]], float] | None = None,
    fingerprint: str = "",
    launch: Callable[[T], object] | None = None,
    persist: bool | None = None,
    first_passing: bool = False,
    elementwise: float | None = None,
) -> T:
    """The verified, fastest candidate for ``key`` (see the module docstring).

    Args:
        namespace: what is being chosen, e.g. ``"triton.conv_bn_act"``.
        key: the shape key (hashable values with a stable ``repr``).
        candidates: in preference order; the first wins ties and is the only one timed never.
        run: runs one candidate on the problem's data and returns its output (poisoned before the
            launch by ``run`` itself, so unwritten elements show up as NaN).
        reference: computes the reference output once (compared in float64).
        bound: the largest relative L2 error a candidate may have.
        device: where the candidates run; CUDA choices are also cached on disk.
        name: a candidate's stable name (stored in the cache, shown in reports).
        timer: seconds per call of a zero-argument function; default: CUDA events on CUDA, the
            wall clock elsewhere.
        fingerprint: identifies the candidates' code (e.g. a kernel source hash), part of the key.
        launch: what is timed per candidate (default ``run``; pass one without the poisoning).
        persist: keep the choice in the disk cache too (default: for CUDA devices).
        first_passing: take the first candidate that passes verification, untimed (the ones
            after it are not even run): a default with fall-through when tuning is off.
        elementwise: the largest error of any element, as a fraction of the reference's RMS
            (default ``ELEMENTWISE_FACTOR * bound``); a wrong tile is off by about the RMS.

    Raises:
        RuntimeError: when no candidate passes verification (nothing is safe to run).
    """
    if not candidates:
        raise ValueError(f"{namespace}: no candidates for {key!r}")
    persist = device.type == "cuda" if persist is None else persist
    chosen = lookup(namespace, key, candidates, device, name, fingerprint, persist)
    if chosen is not None:
        return chosen
    # Candidates run, and are timed, on the problem's device, whichever one is current.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        return _verify_and_time(namespace, key, candidates, run, reference, bound, device, name,
                                timer, fingerprint, launch, persist, first_passing,
                                ELEMENTWISE_FACTOR * bound if elementwise is None else elementwise)


def _failure(out: Tensor, again: Tensor, ref: Tensor, bound: float, elementwise: float) -> str:
    """Why a candidate's two outputs (``out``, ``again``: two runs on the same data) fail, or ""."""
    err = relative_error(out, ref)
    if not err <= bound:  # NaN/inf never passes
        return f"relative error {err:.3e} > bound {bound:.1e}"
    worst = elementwise_error(out, ref)
    if not worst <= elementwise:
        return (f"worst element off by {worst:.3e} x the reference's RMS > {elementwise:.1e} "
                "(a wrong tile?)")
    if not torch.equal(out, again):
        return "two runs on the same data differ (a race? the kernels have no atomics)"
    return ""


def _verify_and_time(namespace, key, candidates, run, reference, bound, device, name, timer,
                     fingerprint, launch, persist, first_passing, elementwise):
    shape_key = repr(tuple(key))
    ref = reference()
    passed = []
    for cand in candidates:
        try:
            # `run` may hand back the same buffer each time: keep the first result apart.
            out = run(cand).clone()
            reason = _failure(out, run(cand), ref, bound, elementwise)
        except Exception as e:  # a launch failure (e.g. out of shared memory) drops the candidate
            reason = f"raised {type(e).__name__}: {e}"
        if not reason:
            passed.append(cand)
            if first_passing:
                break
            continue
        REJECTED.append(Rejection(namespace, shape_key, name(cand), reason))
        warnings.warn(f"resnet_fused: {namespace} candidate {name(cand)} failed verification for "
                      f"{shape_key} and is dropped: {reason}", stacklevel=2)
    del ref
    if not passed:
        raise RuntimeError(f"resnet_fused: every {namespace} candidate failed verification for "
                           f"{shape_key}: " + "; ".join(
                               f"{r.candidate}: {r.reason}" for r in REJECTED
                               if r.namespace == namespace and r.key == shape_key))
    best = passed[0]
    if len(passed) > 1:
        timer = timer or (functools.partial(cuda_timer, device=device) if device.type == "cuda"
                          else wall_timer)
        best_s = math.inf
        for cand in passed:
            seconds = timer(lambda cand=cand: (launch or run)(cand))
            if seconds < best_s:
                best, best_s = cand, seconds
    memo, entry = _cache_keys(namespace, key, device, fingerprint)
    _CHOSEN[memo] = name(best)
    if persist:
        _disk_store(entry, name(best))
    return best


def _cache_keys(namespace: str, key: Sequence, device: torch.device,
                fingerprint: str) -> tuple[tuple[str, str], str]:
    shape_key = repr(tuple(key))
    memo = (namespace, f"{device}|{fingerprint}|{shape_key}")
    return memo, f"{namespace}|{_device_fingerprint(device)}|{fingerprint}|{shape_key}"


def lookup(namespace: str, key: Sequence, candidates: Sequence[T], device: torch.device,
           name: Callable[[T], str] = repr, fingerprint: str = "",
           persist: bool | None = None) -> T | None:
    """The cached (already verified) choice for ``key``, or None; runs nothing on the device."""
    names = {name(c): c for c in candidates}
    memo, entry = _cache_keys(namespace, key, device, fingerprint)
    if _CHOSEN.get(memo) in names:
        return names[_CHOSEN[memo]]
    if device.type == "cuda" if persist is None else persist:
        cached = _disk_load().get(entry)
        if cached in names:
            _CHOSEN[memo] = cached
            return names[cached]
    return None


@dataclasses.dataclass
class ConvProblem:
    """Random data with exactly a conv_bn_act call's layout, to verify and time candidates on.

    Same sizes, strides, dtype and device as the call's tensors (so a candidate runs the same
    kernel specialization as the call), seeded, with non-trivial BatchNorm scale/shift; the
    caller's own data is never touched.
    """

    x: Tensor
    w: Tensor
    scale: Tensor
    shift: Tensor
    res: Tensor | None
    stride: list[int]
    padding: list[int]
    relu: bool
    out_sizes: list[int]

    @classmethod
    def like(cls, input: Tensor, weight: Tensor, residual: Tensor | None, stride, padding,
             relu: bool, out_sizes) -> ConvProblem:
        from .testing import random_bn_params

        gen = torch.Generator(device=input.device).manual_seed(0)
        c, r, s = weight.shape[1:]
        scale, shift = random_bn_params(weight.shape[0], torch.Generator().manual_seed(0))
        return cls(_like(input, gen), _like(weight, gen, std=(c * r * s) ** -0.5),
                   scale.to(input.device), shift.to(input.device),
                   None if residual is None else _like(residual, gen), list(stride),
                   list(padding), relu, list(out_sizes))

    @property
    def args(self) -> tuple:
        """conv_bn_act's arguments, in its schema's order."""
        return (self.x, self.w, self.scale, self.shift, self.res, self.stride, self.padding,
                self.relu)

    def reference(self) -> Tensor:
        """The reference composition: float64 on CPU; on a GPU fp32 with TF32 off (its error,
        ~1e-6, is far below every GPU bound, and fp64 convs there would take seconds)."""
        from .reference import conv_bn_act_reference
        from .testing import no_tf32

        ref_dt = torch.float64 if self.x.device.type == "cpu" else torch.float32
        with no_tf32():
            return conv_bn_act_reference(self.x.to(ref_dt), self.w.to(ref_dt), self.scale,
                                         self.shift, None if self.res is None else
                                         self.res.to(ref_dt), self.stride, self.padding,
                                         self.relu)

    @property
    def bound(self) -> float:
        from .testing import tolerance

        return tolerance(self.x.dtype, "op", self.x.device)


# Pointer alignments that change a kernel's specialization: Triton specializes on 16-byte
# alignment, vectorized loads on the element count that fits 16 bytes.
_ALIGN = 16


def _like(t: Tensor, gen: torch.Generator, std: float = 1.0) -> Tensor:
    """Random N(0, std^2) data with exactly ``t``'s sizes, strides, dtype and device, and its data
    pointer's offset from a 16-byte boundary (a sliced input is not 16-byte aligned, and the
    kernel specialized for it must be the one verified)."""
    misalign = t.data_ptr() % _ALIGN if t.numel() else 0
    if misalign % t.element_size():
        raise ValueError(f"a tensor whose data pointer is {misalign} bytes past a 16-byte "
                         f"boundary cannot hold {t.dtype} elements aligned")
    shift = misalign // t.element_size()
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(),
                                                                 strict=True)) if t.numel() else 0
    base = torch.empty(extent + _ALIGN, dtype=t.dtype, device=t.device)
    # Offset from the (aligned) allocation so that the view starts `misalign` bytes past 16.
    start = (-(base.data_ptr() % _ALIGN) // t.element_size()) % (_ALIGN // t.element_size())
    out = base.as_strided(t.shape, t.stride(), start + shift)
    out.copy_(torch.randn(t.shape, generator=gen, device=t.device) * std)
    return out
