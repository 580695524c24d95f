"""The GPU session's plan, sized from counted work, and a parallel warm-up of Triton's cache.

GPU time is scarce (15 minutes of device time a session in all, the machine's start, idle time and
every try counted; at most 10 minutes a command; a bare machine without network), and the
Triton steps are dominated by compiling: each distinct kernel specialization is one compile
of 0.4-2.5 s. This script counts, on any machine (no GPU needed), the distinct compiles each
Triton step will need, with Triton's own binder (``resnet_fused.triton.aot``): the launches an op
call would make are recorded on CPU tensors and bound for sm_90 exactly as the JIT would.

    python3 benchmarks/gpu_plan.py show [--call first|validation|performance] [--dry-run]
    python3 benchmarks/gpu_plan.py env --call validation [--dry-run]   # lines for gpu_session.sh
    python3 benchmarks/gpu_plan.py warm STEP... [--jobs N] [--max N]    # into Triton's cache

``warm`` compiles a step's kernels ahead, in parallel processes, into Triton's on-disk cache
(``~/.triton/cache``, or ``$TRITON_CACHE_DIR``), where the JIT finds them when the step launches
them: on a 16-core GPU machine that turns minutes of serial compiling inside the GPU steps into
seconds, and the GPU steps start from a warm cache. A binding that differs from the real launch
only costs the JIT compile it would have cost anyway.

The plan (steps, their order, limits and sizes) lives here, in :data:`CALLS`, and
``benchmarks/gpu_session.sh`` reads it with ``env``; ``show`` prints it with the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import math
import os
import pathlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: bind and compile for real

REPO = pathlib.Path(__file__).resolve().parents[1]
ARCH = 90  # H100 / H200
# Serial seconds per Triton compile used for planning: the worst of what was measured for this
# kernel (.ci/compile_triton.py's per-kernel times: 0.4-2.5 s on this project's machines).
SECONDS_PER_COMPILE = 2.5
# Parallel compile processes on the GPU machine (16 cores; two left for the GPU steps).
GPU_MACHINE_JOBS = 14
SWEEP_TRITON_MIN_CASES = 150


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    limit_s: int
    what: str


# Every call starts on a bare machine: say what is there, then make sure _C loads.
_SETUP = (
    Step("info", 40, "versions, nvidia-smi, the prebuilt _C loads (or build), this plan"),
    Step("build", 240, "only if the prebuilt _C does not load: nvcc build on the GPU machine"),
)

# Each call's steps in order, with their time limits (seconds). A call's budget is what one
# device command may run (600 s) less a margin for the transfers back.
CALLS: dict[str, tuple[Step, ...]] = {
    # A session's one call (15 minutes of device time in all, the machine's start included):
    # ordered by value, so a cut call has returned what matters most. What it does not reach, a
    # later session's `validation` / `performance` calls take up.
    "first": (
        *_SETUP,
        Step("warm-triton", 150, "AOT-compile the Triton steps' kernels in parallel (background)"),
        Step("tests-cuda", 110, "pytest GPU tier: CUDA backend, models, fuse (not the slow ones)"),
        Step("sweep-cuda", 40, "randomized conv_bn_act sweep, cuda backend, 200 cases"),
        Step("sanitizer", 60, "compute-sanitizer memcheck + racecheck over every CUDA path"),
        Step("tests-triton", 90, "pytest GPU tier: Triton backend (warm cache; not the slow ones)"),
        Step("sweep-triton", 40, "randomized sweep, triton backend, 200 cases at most"),
        Step("bench-model", 120, "ResNet-50 bf16 batch 256 then 1 side by side: eager, "
             "cudnn-fused, fused-cuda/-triton/-auto (CUDA graphs at batch 1)"),
    ),
    "validation": (
        *_SETUP,
        Step("warm-triton", 150, "AOT-compile the Triton steps' kernels in parallel (background)"),
        Step("tests-cuda", 150, "pytest GPU tier: CUDA backend, models (torchvision/timm), fuse"),
        Step("sweep-cuda", 75, "randomized conv_bn_act sweep, cuda backend, 500 cases"),
        Step("sanitizer", 60, "compute-sanitizer memcheck + racecheck over every CUDA path"),
        Step("tests-triton", 120, "pytest GPU tier: Triton backend (warm cache)"),
        Step("sweep-triton", 90, "randomized sweep, triton backend, cases sized by compiles"),
    ),
    "performance": (
        *_SETUP,
        Step("warm-triton", 60, "AOT-compile the benchmarks' Triton kernels (all candidates)"),
        Step("bench-model", 150, "ResNet-50 bf16 batch 256 then 1: baselines, fused-*, graphs"),
        Step("bench-layers", 100, "every distinct conv shape at batch 256: cuDNN vs fused"),
        Step("roofline", 60, "measured peaks, per-layer floors and fractions (CLI)"),
        Step("bench-compile", 130, "torch.compile(max-autotune, freezing) at batch 256 and 1"),
        Step("report", 30, "tables and plots from the JSON"),
    ),
    # The user's job end to end (JPEG files in, features out) against the model alone, then
    # whatever the session has left for ncu on the layers furthest from their floor.
    "pipeline": (
        *_SETUP,
        Step("bench-infer", 240, "predict/extract job vs model alone: bf16, batch 256, CPU and "
             "GPU JPEG decode"),
    ),
}
# Seconds each call's steps may take: what one device command may run (600 s) less a margin for
# the transfers back; the first call less still, so that the machine's start (a minute or two),
# the call and a give-back fit the session's 15 minutes with room for a short second call.
CALL_BUDGET_S = {"first": 500, "validation": 570, "performance": 570, "pipeline": 570}
SWEEP_CUDA_CASES = {"first": 200, "validation": 500}
# The most sweep-triton cases a call runs (its step limit, not the warm step's compile budget,
# is what binds in the first call).
SWEEP_TRITON_MAX_CASES = {"first": 200}
# Calls whose warm-triton step runs in the background (beside the CUDA steps, which need the GPU
# but not the CPUs).
BACKGROUND_WARM = ("first", "validation")
BENCH_MODELS = (("resnet50", 256, "bfloat16"), ("resnet50", 1, "bfloat16"))


# ------------------------------------------------------------------------------------ counting


def conv_bindings(x, w, res, stride, padding, relu, autotune: bool, arch: int = ARCH) -> set:
    """The compiles one ``triton_conv_bn_act`` call needs on its first call of a shape: every
    candidate config it verifies (the launcher's own layout handling and flags). With tuning off
    that is the default alone (the next candidate compiles only where the default fails)."""
    import torch

    from resnet_fused.checks import check_conv_bn_act_args
    from resnet_fused.triton import aot
    from resnet_fused.triton import conv_bn_act as rt

    k = w.shape[0]
    scale = torch.empty(k, dtype=torch.float32)
    shift = torch.empty(k, dtype=torch.float32)
    sizes = check_conv_bn_act_args(x, w, scale, shift, res, list(stride), list(padding))
    if math.prod(sizes) == 0:
        return set()  # N = 0: the op returns before launching
    x, w = rt._channels_innermost(x), rt._channels_innermost(w)
    res = None if res is None else rt._channels_innermost(res)
    out = torch.empty(sizes, dtype=x.dtype, memory_format=torch.channels_last)
    candidates = rt._candidates(x, w, sizes)
    if not autotune:
        candidates = candidates[:1]
    found = set()
    for cfg in candidates:
        launches = aot.record_launches(lambda cfg=cfg: rt.conv_bn_act_launch(
            x, w, scale, shift, res, list(stride), list(padding), relu, out, cfg))
        found.update(aot.bind(launch, arch) for launch in launches)
    return found


def _empty(sizes, dtype, channels_last: bool):
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(sizes, dtype=dtype, memory_format=fmt)


@functools.cache
def _sweep_prefix_bindings(cases: int, seed: int = 0) -> tuple[frozenset, ...]:
    """For each prefix length 1..cases of the sweep's cases, the distinct compiles so far (the
    first n of a draw are the same cases whatever the count: one pass sizes every choice)."""
    import torch

    from resnet_fused import sweep

    found: set = set()
    prefixes = []
    for c in sweep.draw_cases(cases, seed, list(sweep.DTYPES)):
        dtype = getattr(torch, c.dtype)
        ho = (c.h + 2 * c.padding[0] - c.r) // c.stride[0] + 1
        wo = (c.w + 2 * c.padding[1] - c.s) // c.stride[1] + 1
        x = _empty((c.n, c.c, c.h, c.w), dtype, c.channels_last)
        w = torch.empty(c.k, c.c, c.r, c.s, dtype=dtype)  # run_case moves w as drawn (KCRS)
        res = _empty((c.n, c.k, ho, wo), dtype, c.channels_last) if c.residual else None
        found |= conv_bindings(x, w, res, c.stride, c.padding, c.relu, autotune=False)
        prefixes.append(frozenset(found))
    return tuple(prefixes)


def sweep_bindings(cases: int, seed: int = 0) -> set:
    """``sweep --backends triton`` on a GPU: all three dtypes, autotuning off (as the step runs).
    """
    return set(_sweep_prefix_bindings(max(cases, 500), seed)[cases - 1])


def model_bindings(model: str, batch: int, dtype_name: str, size: int = 224,
                   autotune: bool = True) -> set:
    """The fused model's convs (fuse() packs weights channels_last; activations are NHWC)."""
    import torch

    from resnet_fused import bench

    dtype = getattr(torch, dtype_name)
    found = set()
    for layer in bench.conv_layers(model, batch, size):
        x = _empty((batch, layer.c, layer.h, layer.w), dtype, True)
        w = _empty((layer.k, layer.c, layer.r, layer.s), dtype, True)
        res = _empty((batch, layer.k, layer.ho, layer.wo), dtype, True) if layer.residual else None
        found |= conv_bindings(x, w, res, (layer.stride,) * 2, (layer.padding,) * 2, layer.relu,
                               autotune)
    return found


def _test_module():
    spec = importlib.util.spec_from_file_location("_planned_test_triton",
                                                  REPO / "tests" / "test_triton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Without a GPU the test module asks for the interpreter; this process binds for real.
    os.environ.pop("TRITON_INTERPRET", None)
    return module


@functools.cache
def tests_triton_bindings() -> frozenset:
    """The Triton GPU tests (marker ``triton``): tests/test_triton.py from its own cases, and
    tests/test_gpu_models.py's Triton models. tests/test_triton.py: the sweep over
    GPU_CASES in three dtypes and every table config (autotuning off, as those tests set it),
    the autotune test's candidates, the two whole models. The remaining GPU tests (add_relu,
    opcheck, compile/graph chains) reuse these shapes or compile a handful of eltwise kernels."""
    import torch

    from resnet_fused.triton import configs

    t = _test_module()
    gen = torch.Generator().manual_seed(0)
    found = set()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for case in t.GPU_CASES:
            x, w, _, _, res, stride, padding = t._make_case(case, dtype, "cpu", gen)
            found |= conv_bindings(x, w, res, stride, padding, case["relu"], autotune=False)
    case = t._case((3, 72, 15, 13), 136, 3, 1, 1, True, True, "cl")
    for dtype in (torch.float32, torch.bfloat16):
        x, w, _, _, res, stride, padding = t._make_case(case, dtype, "cpu", gen)
        for cfg in configs.all_conv_configs(dtype):
            found |= _one_config(x, w, res, stride, padding, True, cfg)
    case = t._case((4, 64, 28, 28), 64, 3, 1, 1, True, True, "cl")
    x, w, _, _, res, stride, padding = t._make_case(case, torch.float16, "cpu", gen)
    found |= conv_bindings(x, w, res, stride, padding, True, autotune=True)
    found |= model_bindings("resnet50", 4, "bfloat16", size=160, autotune=False)
    found |= model_bindings("resnet18", 2, "float16", size=64, autotune=False)
    # tests/test_gpu_models.py (triton and auto): ResNet-50 at 224 in three dtypes, batch 1/7/256.
    for dtype in ("float32", "float16", "bfloat16"):
        for batch in (1, 7, 256):
            found |= model_bindings("resnet50", batch, dtype, autotune=False)
    return frozenset(found)


def _one_config(x, w, res, stride, padding, relu, cfg) -> set:
    import torch

    from resnet_fused.checks import conv_output_size
    from resnet_fused.triton import aot
    from resnet_fused.triton import conv_bn_act as rt

    sizes = conv_output_size(x, w, stride, padding)
    out = torch.empty(sizes, dtype=x.dtype, memory_format=torch.channels_last)
    scale = torch.empty(w.shape[0])
    launches = aot.record_launches(lambda: rt.conv_bn_act_launch(
        x, w, scale, scale, res, stride, padding, relu, out, cfg))
    return {aot.bind(launch, ARCH) for launch in launches}


@functools.cache
def bench_bindings() -> frozenset:
    found = set()
    for model, batch, dtype in BENCH_MODELS:
        found |= model_bindings(model, batch, dtype, autotune=True)
    return frozenset(found)


def step_bindings(step: str, sweep_cases: int) -> set:
    if step == "tests-triton":
        return tests_triton_bindings()
    if step == "sweep-triton":
        return sweep_bindings(sweep_cases)
    if step == "bench":
        return bench_bindings()
    raise ValueError(f"no Triton compile set for step {step!r}")


SWEEP_SIZES = (150, 200, 250, 300, 350, 400, 450, 500)


def sweep_triton_cases(warm_limit_s: int, jobs: int) -> tuple[int, dict[int, int]]:
    """The most sweep-triton cases whose compiles, with the Triton tests', fit the warm step:
    (tests + sweep compiles) x SECONDS_PER_COMPILE / jobs <= its limit; never under the floor."""
    tests = tests_triton_bindings()
    counts = {n: len(sweep_bindings(n)) for n in SWEEP_SIZES}
    fits = [n for n in SWEEP_SIZES
            if len(tests | sweep_bindings(n)) * SECONDS_PER_COMPILE / jobs <= warm_limit_s]
    return max(fits, default=SWEEP_TRITON_MIN_CASES), counts


# ------------------------------------------------------------------------------------ warming


def _compile_worker(binding) -> tuple[str, float, str]:
    from resnet_fused.triton import aot

    t0 = time.perf_counter()
    try:
        aot.compile_binding(binding)
    except Exception as e:  # reported; the step's own JIT compile will show the real error
        return binding.kernel, time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:200]
    return binding.kernel, time.perf_counter() - t0, ""


def warm(bindings: set, jobs: int) -> int:
    t0 = time.perf_counter()
    print(f"warm: compiling {len(bindings)} Triton kernels for sm_{ARCH} with {jobs} processes "
          f"into {os.environ.get('TRITON_CACHE_DIR', '~/.triton/cache')}", flush=True)
    done, failed, serial = 0, 0, 0.0
    try:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_compile_worker, b) for b in bindings]
            for future in as_completed(futures):
                kernel, seconds, error = future.result()
                done, serial = done + 1, serial + seconds
                if error:
                    failed += 1
                    print(f"warm: {kernel}: compile failed: {error}", flush=True)
                if done % 25 == 0:
                    print(f"warm: {done}/{len(bindings)} ({time.perf_counter() - t0:.0f} s)",
                          flush=True)
    except KeyboardInterrupt:
        print(f"warm: interrupted after {done}/{len(bindings)}", flush=True)
        return 130
    print(f"warm: {done} compiled ({failed} failed) in {time.perf_counter() - t0:.0f} s wall, "
          f"{serial:.0f} s of compile time ({serial / max(done, 1):.2f} s each)")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------ plan


def plan_env(call: str, dry_run: bool) -> dict[str, str]:
    """What gpu_session.sh needs: the steps in order, each limit, the sweep sizes."""
    steps = CALLS[call]
    env = {"STEPS": " ".join(s.name for s in steps), "BUDGET_S": str(CALL_BUDGET_S[call])}
    for s in steps:
        env[f"T_{s.name.upper().replace('-', '_')}"] = str(s.limit_s)
    if dry_run:
        env.update(SWEEP_CUDA_CASES="5", SWEEP_TRITON_CASES="3")
    else:
        warm_limit = next((s.limit_s for s in steps if s.name == "warm-triton"), 120)
        n, _ = sweep_triton_cases(warm_limit, GPU_MACHINE_JOBS)
        n = min(n, SWEEP_TRITON_MAX_CASES.get(call, n))
        env.update(SWEEP_CUDA_CASES=str(SWEEP_CUDA_CASES.get(call, 500)),
                   SWEEP_TRITON_CASES=str(n))
    return env


def show(call: str | None, dry_run: bool) -> None:
    calls = [call] if call else list(CALLS)
    print(f"GPU plan (device budget: 15 min a session in all, 10 min a command; call 'first' "
          f"is the one to run; Triton compiles counted with Triton's binder for sm_{ARCH}, "
          f"planned at {SECONDS_PER_COMPILE} s each over {GPU_MACHINE_JOBS} processes)")
    warm_limit = next(s.limit_s for s in CALLS["validation"] if s.name == "warm-triton")
    n_sweep, counts = sweep_triton_cases(warm_limit, GPU_MACHINE_JOBS)
    tests = len(tests_triton_bindings())
    bench = len(bench_bindings())
    print(f"  distinct Triton compiles: tests-triton {tests}; sweep-triton "
          + ", ".join(f"{n} cases {c}" for n, c in counts.items())
          + f" (autotuning off); benchmarks (ResNet-50 bf16 batch 256 + 1, every candidate) "
            f"{bench}")
    for name in calls:
        env = plan_env(name, dry_run)
        background = {"warm-triton"} if name in BACKGROUND_WARM else set()
        total = sum(s.limit_s for s in CALLS[name] if s.name not in {"build", *background})
        print(f"\ncall '{name}': steps within {env['BUDGET_S']} s (sum of the foreground limits "
              f"without build: {total} s"
              + ("; warm-triton runs in the background beside the CUDA steps)" if background
                 else ")"))
        for s in CALLS[name]:
            print(f"  {s.name:<14} {s.limit_s:>4} s  {s.what}")
        if name in BACKGROUND_WARM:
            print(f"  sizes: sweep-cuda {env['SWEEP_CUDA_CASES']} cases, sweep-triton "
                  f"{env['SWEEP_TRITON_CASES']} cases (>= {SWEEP_TRITON_MIN_CASES}; {n_sweep} "
                  "fit the warm step's compile budget)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="the plan with its counted compiles")
    p.add_argument("--call", choices=tuple(CALLS), default=None)
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("env", help="shell assignments for gpu_session.sh")
    p.add_argument("--call", choices=tuple(CALLS), required=True)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--plan-file", default=None, help="also write `show`'s table to this file")
    p = sub.add_parser("warm", help="compile steps' Triton kernels into Triton's cache")
    p.add_argument("steps", nargs="+", choices=("tests-triton", "sweep-triton", "bench"))
    p.add_argument("--sweep-cases", type=int, default=SWEEP_TRITON_MIN_CASES)
    p.add_argument("--jobs", type=int, default=GPU_MACHINE_JOBS)
    p.add_argument("--max", type=int, default=None, help="compile at most this many (dry runs)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.command == "show":
        show(args.call, args.dry_run)
        return 0
    if args.command == "env":
        # An environment variable already set wins (a caller's override).
        for k, v in plan_env(args.call, args.dry_run).items():
            print(f'export {k}="${{{k}:-{v}}}"')
        if args.plan_file:
            with open(args.plan_file, "w") as f, contextlib.redirect_stdout(f):
                show(args.call, args.dry_run)
        return 0
    # gpu_session.sh starts `warm` in the background, where SIGINT arrives ignored: without this
    # its step's `timeout -s INT` could not make it report and stop.
    from resnet_fused.signals import honor_sigint

    honor_sigint()
    bindings = set()
    for step in args.steps:
        found = step_bindings(step, args.sweep_cases)
        print(f"warm: {step}: {len(found)} distinct compiles", flush=True)
        bindings |= found
    if args.max is not None:
        bindings = set(sorted(bindings, key=lambda b: b.key)[:args.max])
    return warm(bindings, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
