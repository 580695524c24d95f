"""``python -m resnet_fused sweep``: a seeded randomized sweep of ``conv_bn_act`` per backend.

Each case draws kernel size, stride, padding, odd H/W, channel counts that are not multiples of 8
(3 included), batch 0..300, residual/ReLU on/off, dtype and input memory format, then compares the
backend with the reference composition in higher precision (float64 for fp32, fp32 for fp16/bf16)
under docs/design.md's per-op bounds. On CUDA the ops NaN-fill their outputs first
(:func:`resnet_fused.poison.poisoned_outputs`), so an element the kernel fails to write
fails the case. The same seed and size always give the same cases. ``--backends cuda`` runs each
case through every CUDA implementation the build has that takes it (``cuda:<impl>`` rows).
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import asdict, dataclass

import torch

from . import ops
from .backends import BACKENDS, resolve_backend
from .cuda import selection
from .poison import poisoned_outputs
from .progress import progress
from .reference import conv_bn_act_reference
from .testing import random_bn_params, reference_dtype, relative_error, tolerance

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Bound each case's input size so a 500-case sweep stays within minutes on one GPU.
_MAX_INPUT_ELEMENTS = 2_000_000


@dataclass
class Case:
    index: int
    n: int
    c: int
    k: int
    h: int
    w: int
    r: int
    s: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    residual: bool
    relu: bool
    dtype: str
    channels_last: bool


def draw_cases(count: int, seed: int, dtypes: list[str]) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        r = rng.choice([1, 1, 3, 3, 3, 5, 7])
        s = r if rng.random() < 0.85 else rng.choice([1, 3])
        stride = (rng.choice([1, 2]), rng.choice([1, 2])) if rng.random() < 0.2 else (
            (st := rng.choice([1, 1, 2])), st)
        padding = (rng.randint(0, r // 2 + 1), rng.randint(0, s // 2 + 1))
        c = rng.choice([3, rng.randint(1, 24), rng.randint(25, 160), 8 * rng.randint(1, 32)])
        k = rng.choice([rng.randint(1, 24), rng.randint(25, 200), 8 * rng.randint(1, 32)])
        n = rng.choice([0, 1, 1, 2, 3, rng.randint(4, 32), rng.randint(33, 300)])
        h = rng.randint(max(1, r - 2 * padding[0]), 40)
        w = rng.randint(max(1, s - 2 * padding[1]), 40)
        if n * c * h * w > _MAX_INPUT_ELEMENTS:  # keep big batches small in space
            h = max(r - 2 * padding[0], 1, min(h, int(math.sqrt(_MAX_INPUT_ELEMENTS / (n * c)))))
            w = max(s - 2 * padding[1], 1, min(w, int(math.sqrt(_MAX_INPUT_ELEMENTS / (n * c)))))
        if h + 2 * padding[0] < r or w + 2 * padding[1] < s:
            continue
        cases.append(Case(len(cases), n, c, k, h, w, r, s, stride, padding, rng.random() < 0.5,
                          rng.random() < 0.7, rng.choice(dtypes), rng.random() < 0.6))
    return cases


@dataclass
class Prepared:
    """A case's data on the device and its reference (computed once, shared by the backends)."""

    args: tuple  # conv_bn_act's (input, weight, scale, shift, residual) on the device
    ref: torch.Tensor
    out_sizes: tuple[int, int, int, int]


def prepare(case: Case, device: torch.device, seed: int) -> Prepared:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + case.index)
    dtype = DTYPES[case.dtype]
    x = torch.randn(case.n, case.c, case.h, case.w, generator=gen)
    w = torch.randn(case.k, case.c, case.r, case.s, generator=gen) / math.sqrt(
        case.c * case.r * case.s)
    scale, shift = random_bn_params(case.k, gen)
    ho = (case.h + 2 * case.padding[0] - case.r) // case.stride[0] + 1
    wo = (case.w + 2 * case.padding[1] - case.s) // case.stride[1] + 1
    res = torch.randn(case.n, case.k, ho, wo, generator=gen) if case.residual else None
    # Round to the case's dtype once: the reference sees exactly the backend's inputs.
    x, w = x.to(dtype), w.to(dtype)
    res = res.to(dtype) if res is not None else None
    ref_dt = reference_dtype(dtype)
    ref = conv_bn_act_reference(x.to(ref_dt), w.to(ref_dt), scale, shift,
                                None if res is None else res.to(ref_dt), case.stride,
                                case.padding, case.relu)
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    args = (x.to(device).contiguous(memory_format=fmt), w.to(device), scale.to(device),
            shift.to(device), None if res is None else res.to(device).contiguous(
                memory_format=fmt))
    return Prepared(args, ref, (case.n, case.k, ho, wo))


def check(case: Case, backend: str, prepared: Prepared, device: torch.device) -> dict | None:
    """The prepared case through ``backend`` (or ``cuda:<impl>``, one CUDA implementation); None
    when that implementation does not take the case."""
    args, dtype = prepared.args, DTYPES[case.dtype]
    stride, padding = list(case.stride), list(case.padding)
    if backend.startswith("cuda:"):
        # One CUDA implementation, by name (the sweep runs each, not just the fastest).
        why = torch.ops.resnet_fused.cuda_impl_supports(args[0], args[1], args[4], stride,
                                                        padding, backend.removeprefix("cuda:"))
        if why:
            return None  # this implementation does not take this case: not a result
    with poisoned_outputs():  # GPU ops NaN-fill their outputs: an unwritten element fails
        if backend.startswith("cuda:"):
            y = selection.run(backend, *args, stride, padding, case.relu)
        else:
            y = ops.conv_bn_act(*args, stride=stride, padding=padding, relu=case.relu,
                                backend=backend)
    err = relative_error(y.cpu(), prepared.ref) if y.numel() else 0.0
    bound = tolerance(dtype, "op", device)
    strides_ok = y.stride() == torch.empty(
        y.shape, memory_format=torch.channels_last).stride() and y.dtype == dtype
    ok = (err <= bound) and strides_ok and tuple(y.shape) == prepared.out_sizes
    return {**asdict(case), "backend": backend, "error": err, "bound": bound, "ok": ok}


def run_case(case: Case, backend: str, device: torch.device, seed: int) -> dict | None:
    """One case through one backend: :func:`prepare`, then :func:`check`."""
    return check(case, backend, prepare(case, device, seed), device)


# Exit statuses of `python -m resnet_fused sweep`.
EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 3, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, required=True)
    parser.add_argument("--cases", type=int, default=500, help="cases per backend (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=None,
                        help="default: all three on CUDA, float32 and bfloat16 on CPU")
    parser.add_argument("--device", default=None, help="default: cuda if visible, else cpu")
    parser.add_argument("--json", default=None,
                        help="write every case's result to this file, one JSON object per line, "
                             "as each case finishes (a cut run keeps what it finished)")
    parser.epilog = (f"exit status: {EXIT_OK} all passed, {EXIT_FAILED} a case failed, "
                     f"{EXIT_UNAVAILABLE} a backend cannot run on the device, {EXIT_INTERRUPTED} "
                     "interrupted (the table of the finished cases is printed first)")


def _unavailable(backends: list[str], device: torch.device) -> dict[str, str]:
    """Backends that cannot run on ``device``, each with the reason (said once, not per case)."""
    why = {}
    for backend in backends:
        try:
            resolve_backend(backend, device)
        except (RuntimeError, ValueError) as e:
            why[backend] = str(e)
    return why


def summarize(results: list[dict], backends: list[str], dtypes: list[str]) -> int:
    """Prints the per-backend/dtype table and the failed cases; returns the number failed."""
    width = max(8, *(len(b) for b in backends))
    print(f"{'backend':<{width}} {'dtype':<9} {'cases':>6} {'failed':>7} {'worst rel. error':>17}")
    for backend in backends:
        for dt in dtypes:
            rows = [r for r in results if r["backend"] == backend and r["dtype"] == dt]
            if rows:
                worst = max(r["error"] for r in rows)
                failed = sum(not r["ok"] for r in rows)
                print(f"{backend:<{width}} {dt:<9} {len(rows):>6} {failed:>7} {worst:>17.3e}")
    failed = [r for r in results if not r["ok"]]
    for r in failed[:20]:
        print("FAILED:", {k: r[k] for k in r if k not in ("ok",)})
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return len(failed)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unavailable = _unavailable(args.backends, device)
    for backend, why in unavailable.items():
        print(f"sweep: backend {backend!r} cannot run on {device}: {why}", file=sys.stderr)
    if unavailable:
        return EXIT_UNAVAILABLE
    dtypes = args.dtypes or (list(DTYPES) if device.type == "cuda" else ["float32", "bfloat16"])
    cases = draw_cases(args.cases, args.seed, dtypes)
    # `cuda` is swept through each implementation the build has (mma.sync, each sm_90a CUTLASS
    # configuration), so every one is validated, not only the one measured fastest per shape.
    backends = [name for b in args.backends for name in (
        [f"cuda:{impl}" for impl in selection._cuda_impls()] if b == "cuda" else [b])]
    results: list[dict] = []
    sink = open(args.json, "w") if args.json else None
    status = EXIT_OK
    try:
        for case in progress(cases, f"sweep {' '.join(backends)} on {device}", unit="case"):
            prepared = None
            for backend in backends:
                try:
                    prepared = prepared or prepare(case, device, args.seed)
                    result = check(case, backend, prepared, device)
                except Exception as e:  # a crash is a failed case, reported with the case
                    result = {**asdict(case), "backend": backend, "error": math.inf,
                              "bound": 0.0, "ok": False, "exception": repr(e)}
                if result is None:
                    continue
                results.append(result)
                if sink:
                    sink.write(json.dumps(result) + "\n")
                    sink.flush()
    except KeyboardInterrupt:  # SIGINT from a step's timeout: report what finished
        print(f"\nsweep: interrupted after {len(results)} of "
              f"{len(cases) * len(backends)} cases; results so far:", file=sys.stderr)
        status = EXIT_INTERRUPTED
    finally:
        if sink:
            sink.close()
    failed = summarize(results, backends, dtypes)
    return EXIT_FAILED if failed else status
