"""Which implementation runs a conv_bn_act call on a GPU, per shape: verified, measured, cached.

``backend="cuda"`` chooses among the CUDA implementations this build contains that can take the
call (``torch.ops.resnet_fused.cuda_impls`` / ``cuda_impl_supports``: the hand-written mma.sync
kernel on sm_80+, and on sm_90 each sm_90a CUTLASS configuration); ``backend="auto"`` chooses
among those and the Triton backend. The first eager call of a shape runs every candidate on
random data of that shape, drops any that misses the numerics bound, and keeps the fastest
(:mod:`resnet_fused.tuning`: cached in the process and on disk, keyed by device, versions and
shape). Nothing is chosen from guesses.

While torch.compile traces or a CUDA graph is captured nothing can be measured: a shape seen
before (in this process) keeps its choice, an unseen one runs the default, ``cuda:mma_sync``
(or ``triton`` when the build has no CUDA kernels), which the tests and sweeps validate.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import backends, poison, tuning

MMA_SYNC = "cuda:mma_sync"
TRITON = "triton"

# (backend, shape key) -> candidate name, for this process. A plain dict of plain tuples, so
# torch.compile can trace the lookup (the disk cache is read only by eager calls).
_MEMO: dict[tuple, str] = {}


def default(backend: str) -> str:
    return MMA_SYNC if backend == "cuda" or backends._CUDA_KERNELS_BUILT else TRITON


def _key(backend, input, weight, residual, stride, padding, relu) -> tuple | None:
    dims = (*input.shape, *weight.shape, *stride, *padding)
    if not all(type(d) is int for d in dims):
        return None  # symbolic sizes (dynamic shapes): no measuring, the default
    tf32 = input.dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    return (backend, tuple(input.shape), tuple(weight.shape), input.dtype, tf32,
            tuple(stride), tuple(padding), residual is not None, relu,
            input.is_contiguous(memory_format=torch.channels_last),
            weight.is_contiguous(memory_format=torch.channels_last),
            None if residual is None else residual.is_contiguous(
                memory_format=torch.channels_last))


def candidates(backend, input, weight, residual, stride, padding) -> list[str]:
    """Candidate names for this call: ``cuda:<impl>`` per CUDA implementation that takes it, and
    ``triton`` for ``auto``. Never empty."""
    names = []
    if backends._CUDA_KERNELS_BUILT:
        for impl in _cuda_impls():
            why = torch.ops.resnet_fused.cuda_impl_supports(input, weight, residual, stride,
                                                            padding, impl)
            if not why:
                names.append(f"cuda:{impl}")
    if backend == "auto" and backends._TRITON_IMPORTABLE:
        names.append(TRITON)
    return names or [default(backend)]


@functools.cache
def _cuda_impls() -> tuple[str, ...]:
    # mma_sync first: the default, and the winner of a tie.
    impls = list(torch.ops.resnet_fused.cuda_impls())
    return tuple(sorted(impls, key=lambda n: n != "mma_sync"))


def run(name: str, input, weight, scale, shift, residual, stride, padding, relu) -> Tensor:
    """conv_bn_act through one candidate."""
    args = (input, weight, scale, shift, residual, stride, padding, relu)
    if name == TRITON:
        from .. import triton as _triton  # noqa: F401  (registers the Triton ops on first use)

        return torch.ops.resnet_fused.triton_conv_bn_act(*args)
    if name == MMA_SYNC:
        return torch.ops.resnet_fused.conv_bn_act(*args)
    return torch.ops.resnet_fused.conv_bn_act_cuda_impl(*args, name.removeprefix("cuda:"))


def choose(backend: str, input, weight, scale, shift, residual, stride, padding,
           relu: bool) -> str:
    """The candidate that runs this call (see the module docstring)."""
    key = _key(backend, input, weight, residual, stride, padding, relu)
    if key is None:
        return default(backend)
    chosen = _MEMO.get(key)
    if chosen is not None:
        return chosen
    if torch.compiler.is_compiling() or (input.device.type == "cuda"
                                         and torch.cuda.is_current_stream_capturing()):
        return default(backend)
    names = candidates(backend, input, weight, residual, stride, padding)
    if len(names) == 1 and names[0] == TRITON:
        chosen = TRITON  # the Triton op verifies and tunes its own configs
    else:
        chosen = _measure(backend, key, names, input, weight, residual, stride, padding, relu)
    _MEMO[key] = chosen
    return chosen


def _measure(backend, key, names, input, weight, residual, stride, padding, relu) -> str:
    from ..checks import conv_output_size

    out_sizes = conv_output_size(input, weight, list(stride), list(padding))
    problem = tuning.ConvProblem.like(input, weight, residual, stride, padding, relu, out_sizes)

    def launch(name: str) -> Tensor:
        return run(name, *problem.args)

    def poisoned_run(name: str) -> Tensor:
        with poison.poisoned_outputs():  # an element the kernel does not write stays NaN
            return launch(name)

    return tuning.choose(f"conv_bn_act.{backend}", key[1:], names, run=poisoned_run,
                         launch=launch, reference=problem.reference, bound=problem.bound,
                         device=input.device, name=str, fingerprint=_build_fingerprint())


@functools.cache
def _build_fingerprint() -> str:
    """Changes with the compiled extension (a rebuilt _C is re-measured)."""
    import hashlib
    import os

    from .. import _C

    path = _C.__file__
    stat = os.stat(path)
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"_C:{digest}|impls:{','.join(_cuda_impls())}"
