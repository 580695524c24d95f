"""Which algorithm each fused conv runs on the CPU fast path, per input shape, and why.

Candidates (a conv has those its shape and this CPU allow):

* ``onednn``: oneDNN's direct convolution, BatchNorm folded, ReLU and the residual as post-ops
  (AMX, AVX-512 or AVX2 kernels, whichever oneDNN picks for the CPU);
* ``winograd``: this package's Winograd F(m, 3) for 3x3 stride-1 convs (:mod:`.winograd`);
* ``winograd_amx``: the same in bfloat16 with its GEMMs on AMX tiles, where the CPU has them
  (:func:`.winograd.amx_path`; never chosen by rule, only measured);
* ``conv1x1``: this package's AVX-512 GEMM for 1x1 convs (:mod:`.conv1x1`);
* ``conv1x1_amx``: the same 1x1 convs in bfloat16 on AMX tiles, where the CPU has them
  (:func:`.conv1x1.amx_path`; never chosen by rule, only measured).

How one is chosen, ``RESNET_FUSED_CPU_CHOICE`` =

* ``auto`` (default): ``rule`` where the rules were measured, CPUs with AVX-512 and no AMX (AMD
  Zen 4 and Zen 5 in the committed runs); ``measure`` on every other CPU (AMX Xeons above all:
  their oneDNN convolutions run on AMX tiles, which the rules never met);
* ``rule``: fixed rules on the shape: the 1x1 GEMM wherever the CPU runs it, Winograd from
  :func:`.winograd.min_tiles` output tiles up, oneDNN otherwise. No timing, so every process on
  every machine of a kind computes with the same algorithms, bit for bit;
* ``measure``: each candidate is verified on random data against the float64 composition (the
  per-op bound, element by element, two runs bit-identical; :mod:`resnet_fused.tuning`), the
  survivors are timed on this CPU, and the fastest runs. Choices are cached on disk
  (``$RESNET_FUSED_CACHE_DIR``, default ``~/.cache/resnet_fused/tuning.json``) keyed by the CPU's
  model and ISA flags, the thread count, the versions and the shape: every process that reads
  the cache computes with the same algorithms. The first call of each new shape pays for it
  (about a second per conv shape at ResNet-50's sizes on 2 cores; ``python -m resnet_fused info
  --convs`` shows it).

``RESNET_FUSED_WINOGRAD=never`` / ``RESNET_FUSED_CONV1X1=never`` remove those candidates under
any choice; ``RESNET_FUSED_WINOGRAD=always`` forces Winograd wherever it applies.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..backends import env_choice
from .capability import cpu_capability

__all__ = ["CANDIDATES", "MODES", "Choice", "measure", "mode", "rules_measured_here"]

MODES = ("auto", "rule", "measure")
# The verification's bound on any one element, as a fraction of the reference's RMS: a wrong
# element or tile is off by about the RMS, while fp32 Winograd F(4,3)'s transforms round some
# elements to ~1.3e-4 of it (ResNet-50's 7x7 layers), above the GPU tuner's 8 x 1e-5.
ELEMENTWISE_FLOOR = 1e-2
# Every candidate, in the rules' order of preference (which never pick the AMX ones).
CANDIDATES = ("conv1x1", "conv1x1_amx", "winograd", "winograd_amx", "onednn")


@dataclass(frozen=True)
class Choice:
    """What a conv runs for one input shape, and why (``info --convs`` prints both), among which
    candidates."""

    algorithm: str
    why: str
    candidates: tuple[str, ...] = ()


def mode() -> str:
    """``rule`` or ``measure``: ``RESNET_FUSED_CPU_CHOICE``, with ``auto`` resolved for this CPU."""
    chosen = env_choice("RESNET_FUSED_CPU_CHOICE", MODES)
    if chosen == "auto":
        return "rule" if rules_measured_here() else "measure"
    return chosen


def rules_measured_here() -> bool:
    """True on the CPUs the rules were measured on: AVX-512 (F, BW, VL) without AMX tiles."""
    caps = cpu_capability()
    return (all(caps[f] for f in ("avx512_f", "avx512_bw", "avx512_vl"))
            and not caps["amx_tile"])


def _cpu_fingerprint() -> str:
    """What a measured choice depends on besides the shape and the versions (tuning adds those)."""
    caps = cpu_capability()
    flags = ",".join(k for k, v in caps.items() if v is True and k not in ("onednn",))
    return f"{caps['name']}|{flags}|{torch.get_num_threads()} threads"


def cpu_timer(fn: Callable[[], object], rounds: int = 5, min_s: float = 2e-3) -> float:
    """Median seconds per call of ``fn`` over ``rounds`` rounds of at least ``min_s`` each (a
    fast conv is repeated within a round: a single call is too short for the clock), after one
    warm-up call."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_s / once))
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def measure(key: Sequence, candidates: Sequence[str], run: Callable[[str], Tensor],
            launch: Callable[[str], object], reference: Callable[[], Tensor],
            dtype: torch.dtype) -> Choice:
    """The verified, fastest of ``candidates`` for shape ``key`` (see the module docstring).

    ``run(c)``: candidate ``c``'s output on the verification data (a new tensor); ``launch(c)``:
    what is timed (the call as the model makes it, e.g. summing in place into a scratch buffer);
    ``reference()``: the float64 composition on the same data.
    """
    from .. import tuning
    from ..testing import ELEMENTWISE_FACTOR, tolerance

    cpu, fingerprint = torch.device("cpu"), _cpu_fingerprint()
    cached = tuning.lookup("cpu.conv", key, candidates, cpu, name=str, fingerprint=fingerprint,
                           persist=True)
    if cached is not None:
        return Choice(cached, "measured on this CPU earlier (cached)")
    times: dict[str, float] = {}
    current = [""]  # the candidate the timed function last launched

    def launch_named(cand: str) -> object:
        current[0] = cand
        return launch(cand)

    def timer(fn: Callable[[], object]) -> float:
        seconds = cpu_timer(fn)
        times[current[0]] = seconds
        return seconds

    bound = tolerance(dtype, "op")
    best = tuning.choose("cpu.conv", key, candidates, run, reference, bound, cpu, name=str,
                         timer=timer, fingerprint=fingerprint, launch=launch_named, persist=True,
                         elementwise=max(ELEMENTWISE_FACTOR * bound, ELEMENTWISE_FLOOR))
    if not times:
        return Choice(best, "measured: the only candidate that passed verification")
    ranked = ", ".join(f"{c} {1e3 * s:.3f} ms"
                       for c, s in sorted(times.items(), key=lambda kv: kv[1]))
    return Choice(best, f"measured on this CPU: {ranked}")
