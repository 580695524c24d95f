"""Ahead-of-time compile of every Triton kernel in resnet_fused/triton for real GPU targets.

Runs on a machine without a GPU: ``triton.compile`` with an explicit ``GPUTarget`` drives the whole
CUDA pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin, with the ``ptxas`` shipped in the triton
wheel), so type errors, ``tl.dot`` shape/dtype constraints, shared memory and register use of every
tile config are checked without ever launching a kernel.

The kernel arguments are the launcher's own: ``conv_bn_act_launch`` and ``triton_add_relu`` are
called on CPU tensors with ``wrap_triton`` swapped for a recorder, and the recorded call goes
through Triton's own JIT binder for the target. So the constexprs (R/S, HAS_RES, RELU, GEMM,
RES_FLAT, INT64, PRECISION, tiles) and Triton's specializations (ints equal to 1 become
constexprs, 16-divisible ints/pointers get ``tt.divisibility``) are exactly what a launch of that
shape would compile.

Coverage, per target (sm_90, sm_80):
- conv_bn_act: every config of ``configs.CONV_CONFIGS`` x its dtypes (fp32 with TF32 and with IEEE
  dots, fp16, bf16), once on a ResNet layer shape of that config's family (checked against
  ``configs.conv_family``) and once in the heaviest variant (NCHW tensors, so no 1x1 fast path and
  non-flat residual; residual + ReLU; 64-bit offsets); plus, with each family's default config, a
  1x1 GEMM without residual and a strided 1x1 downsample without ReLU.
- add_relu: both eltwise configs x fp32/fp16/bf16 x 32/64-bit offsets. The 64-bit variant needs
  more than 2**31 elements, so it is derived from a recorded launch (numel and INT64 replaced).

Fails (exit 1) on a compile error, shared memory over the target's per-block limit (227 KiB on
sm_90, 163 KiB on sm_80), register spills (reported by ``ptxas -v``; ``--allow-spills`` makes them
warnings), or a block needing more registers than an SM has.

Usage: python .ci/compile_triton.py [--arch 90 80] [--jobs N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile, never interpret

# Max dynamic shared memory per block (opt-in) and 32-bit registers per SM.
SMEM_LIMIT = {90: 232448, 80: 166912}
REGS_PER_SM = 65536


@dataclass
class Job:
    kernel: str
    arch: int
    config: str
    dtype: str
    variant: str
    binding: object  # resnet_fused.triton.aot.Binding


@dataclass
class Result:
    job: Job
    seconds: float = 0.0
    shared: int | None = None
    regs: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    errors: list[str] = field(default_factory=list)
    spills: str = ""  # a failure unless --allow-spills (or on the 64-bit-offset variant)


@dataclass(frozen=True)
class ConvShape:
    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: int
    pad: int
    residual: bool
    relu: bool
    channels_last: bool = True
    force_int64: bool = False


# A ResNet layer of each family (batch 8, or 1 for the late-stage "small" grid).
FAMILY_SHAPES = {
    "stem": ConvShape("conv1 7x7/2 3->64 @224", 8, 3, 224, 224, 64, 7, 7, 2, 3, False, True),
    "1x1": ConvShape("bottleneck conv3 1x1 64->256 @56 +res", 8, 64, 56, 56, 256, 1, 1, 1, 0,
                     True, True),
    "3x3": ConvShape("3x3 64->64 @56", 8, 64, 56, 56, 64, 3, 3, 1, 1, False, True),
    "small": ConvShape("layer4 3x3 512->512 @7 +res", 1, 512, 7, 7, 512, 3, 3, 1, 1, True, True),
}
# Run with each family's default config only: the remaining flag combinations.
EXTRA_SHAPES = (
    ("1x1", ConvShape("bottleneck conv1 1x1 256->64 @56", 8, 256, 56, 56, 64, 1, 1, 1, 0,
                      False, True)),
    ("1x1", ConvShape("downsample 1x1/2 256->512 @56 no-relu", 8, 256, 56, 56, 512, 1, 1, 2, 0,
                      False, False)),
)
# (label, dtype name, cudnn.allow_tf32 while launching); the launcher reads the flag for fp32.
DTYPES = (("fp32/tf32", "float32", True), ("fp32/ieee", "float32", False),
          ("fp16", "float16", True), ("bf16", "bfloat16", True))


def _conv_launch(shape: ConvShape, dtype, allow_tf32: bool, cfg):
    import torch

    from resnet_fused.checks import conv_output_size
    from resnet_fused.triton import aot
    from resnet_fused.triton import conv_bn_act as mod

    fmt = torch.channels_last if shape.channels_last else torch.contiguous_format
    x = torch.empty(shape.n, shape.c, shape.h, shape.w, dtype=dtype, memory_format=fmt)
    w = torch.empty(shape.k, shape.c, shape.r, shape.s, dtype=dtype, memory_format=fmt)
    stride, padding = [shape.stride] * 2, [shape.pad] * 2
    sizes = conv_output_size(x, w, stride, padding)
    out = torch.empty(sizes, dtype=dtype, memory_format=torch.channels_last)  # as the op does
    res = torch.empty(sizes, dtype=dtype, memory_format=fmt) if shape.residual else None
    scale = torch.empty(shape.k, dtype=torch.float32)
    shift = torch.empty(shape.k, dtype=torch.float32)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        (launch,) = aot.record_launches(lambda: mod.conv_bn_act_launch(
            x, w, scale, shift, res, stride, padding, shape.relu, out, cfg,
            force_int64=shape.force_int64))
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    return launch


def _conv_variant(kw) -> str:
    flags = [name.lower() for name in ("HAS_RES", "RELU", "GEMM", "RES_FLAT", "INT64") if kw[name]]
    return f"{kw['R']}x{kw['S']} {kw['PRECISION']} " + ("+".join(flags) or "-")


def _conv_jobs(arches) -> list[Job]:
    import torch

    from resnet_fused.triton import aot, configs

    jobs = []

    def add(family, index, cfg, shape, dtype_label, dtype_name, allow_tf32):
        dtype = getattr(torch, dtype_name)
        m = shape.n * ((shape.h + 2 * shape.pad - shape.r) // shape.stride + 1) * (
            (shape.w + 2 * shape.pad - shape.s) // shape.stride + 1)
        got = configs.conv_family(m, shape.c, shape.k, shape.r, shape.s)
        if got != family:
            raise SystemExit(f"{shape.name}: launcher family is {got!r}, expected {family!r}")
        launch = _conv_launch(shape, dtype, allow_tf32, cfg)
        kw = launch.kwargs
        if dtype_name == "float32" and kw["PRECISION"] != dtype_label.split("/")[1]:
            raise SystemExit(f"launcher passed PRECISION={kw['PRECISION']} for {dtype_label}")
        name = (f"{family}#{index} {cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K} "
                f"w{cfg.num_warps} s{cfg.num_stages} g{cfg.GROUP_M}")
        variant = f"{_conv_variant(kw)} [{shape.name}]"
        for arch in arches:
            jobs.append(Job("conv_bn_act", arch, name, dtype_label, variant,
                            aot.bind(launch, arch)))

    for (family, cls), candidates in configs.CONV_CONFIGS.items():
        base = FAMILY_SHAPES[family]
        # The op hands the kernel channels-innermost tensors only (it copies other layouts), so
        # the heaviest real variant is channels_last + residual + ReLU + 64-bit offsets.
        heavy = ConvShape(f"{base.name} +res int64", base.n, base.c, base.h, base.w, base.k,
                          base.r, base.s, base.stride, base.pad, True, True,
                          channels_last=True, force_int64=True)
        for label, dtype_name, allow_tf32 in DTYPES:
            if configs.dtype_class(getattr(torch, dtype_name)) != cls:
                continue
            for i, cfg in enumerate(candidates):
                add(family, i, cfg, base, label, dtype_name, allow_tf32)
                add(family, i, cfg, heavy, label, dtype_name, allow_tf32)
            for extra_family, shape in EXTRA_SHAPES:
                if extra_family == family:
                    add(family, 0, candidates[0], shape, label, dtype_name, allow_tf32)
    return jobs


def _add_relu_jobs(arches) -> list[Job]:
    import torch

    from resnet_fused.triton import add_relu as mod
    from resnet_fused.triton import aot, configs

    jobs = []
    saved = configs.ADD_RELU_CONFIG
    try:
        for cfg_name in ("ADD_RELU_CONFIG", "INTERPRETER_ADD_RELU_CONFIG"):
            cfg = getattr(configs, cfg_name)
            configs.ADD_RELU_CONFIG = cfg  # what the (non-interpreter) launcher reads
            for label, dtype_name, _ in DTYPES[1:]:
                x = torch.empty(8, 256, 56, 56, dtype=getattr(torch, dtype_name),
                                memory_format=torch.channels_last)
                (launch,) = aot.record_launches(lambda x=x: mod.triton_add_relu(x, x))
                args, kw = launch.args, launch.kwargs
                if kw["BLOCK"] != cfg.BLOCK or kw["num_warps"] != cfg.num_warps:
                    raise SystemExit(f"add_relu launcher did not use {cfg_name}: {kw}")
                big = (*args[:3], 2**31 + cfg.BLOCK)  # > 2**31 elements: INT64, i64 numel
                for a, k, var in ((args, kw, "numel=8*256*56*56"),
                                  (big, {**kw, "INT64": True}, "numel=2**31+BLOCK (synthesized)")):
                    variant = f"{'int64' if k['INT64'] else 'int32'} [{var}]"
                    name = f"{cfg_name} BLOCK={cfg.BLOCK} w{cfg.num_warps}"
                    for arch in arches:
                        jobs.append(Job("add_relu", arch, name, label.split("/")[0], variant,
                                        aot.bind(aot.Launch("add_relu", a, k), arch)))
    finally:
        configs.ADD_RELU_CONFIG = saved
    return jobs


# ----------------------------------------------------------------------------- compiling (workers)


def _compile(job: Job) -> Result:
    from triton import knobs

    from resnet_fused.triton import aot

    knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v output to stdout
    result = Result(job)
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            kernel = aot.compile_binding(job.binding)
    except Exception as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        result.errors.append(f"compile failed: {type(e).__name__}: " + " | ".join(lines[:12]))
        result.seconds = time.perf_counter() - t0
        return result
    result.seconds = time.perf_counter() - t0
    text = log.getvalue()
    result.shared = int(kernel.metadata.shared)
    if m := re.search(r"Used (\d+) registers", text):
        result.regs = int(m.group(1))
    if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      text):
        result.stack, result.spill_stores, result.spill_loads = map(int, m.groups())

    limit = SMEM_LIMIT[job.arch]
    if result.shared > limit:
        result.errors.append(f"shared memory {result.shared} B > sm_{job.arch} limit {limit} B")
    if result.regs is None or result.spill_stores is None:
        result.errors.append("no ptxas register/spill report")
    else:
        if result.spill_stores or result.spill_loads:
            result.spills = (f"register spills: {result.spill_stores} B stores, "
                             f"{result.spill_loads} B loads")
        threads = kernel.metadata.num_warps * 32
        per_block = -(-result.regs // 8) * 8 * threads  # allocated per warp in 256-reg units
        if per_block > REGS_PER_SM:
            result.errors.append(f"{per_block} registers per block > {REGS_PER_SM} per SM")
    return result


def _worker_init():
    import resnet_fused.triton  # noqa: F401  (import torch/triton/the kernels once per worker)


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SMEM_LIMIT))
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--allow-spills", action="store_true",
                        help="report register spills as warnings instead of failing")
    opts = parser.parse_args()

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="triton-aot-") as cache:
        # A fresh cache: every kernel really goes through ptxas (its -v log gives regs/spills).
        os.environ["TRITON_CACHE_DIR"] = cache
        jobs = _conv_jobs(opts.arch) + _add_relu_jobs(opts.arch)
        # Long conv compiles first so the pool does not end on a straggler.
        order = sorted(range(len(jobs)), key=lambda i: jobs[i].kernel != "conv_bn_act")
        print(f"compiling {len(jobs)} kernels for {', '.join(f'sm_{a}' for a in opts.arch)} "
              f"with {opts.jobs} processes", flush=True)
        with ProcessPoolExecutor(opts.jobs, mp_context=get_context("spawn"),
                                 initializer=_worker_init) as pool:
            results = list(pool.map(_compile, [jobs[i] for i in order]))
    for r in results:
        # Spills fail the check on the paths real ResNet tensors take. The 64-bit-offset variant
        # only runs for tensors of more than 2^31 elements, where a few spilled bytes per thread
        # cost far less than the memory traffic: reported, not failed.
        if r.spills and not opts.allow_spills and "int64" not in r.job.variant.split(" [")[0]:
            r.errors.append(r.spills)

    header = (f"{'kernel':<12} {'target':<6} {'config':<44} {'dtype':<9} {'smem B':>7} "
              f"{'regs':>4} {'spill st/ld':>11} {'stack':>5} {'sec':>5}  variant")
    print(header)
    print("-" * len(header))
    for r in results:
        j = r.job
        spills = "-" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}"
        print(f"{j.kernel:<12} sm_{j.arch:<3} {j.config:<44} {j.dtype:<9} "
              f"{r.shared if r.shared is not None else '-':>7} "
              f"{r.regs if r.regs is not None else '-':>4} {spills:>11} "
              f"{r.stack if r.stack is not None else '-':>5} {r.seconds:5.1f}  {j.variant}"
              + ("  FAIL: " + "; ".join(r.errors) if r.errors else "")
              + ("  WARN: " + r.spills if r.spills and r.spills not in r.errors else ""))

    print()
    failed = [r for r in results if r.errors]
    for arch in opts.arch:
        mine = [r for r in results if r.job.arch == arch]
        ok = [r for r in mine if r.shared is not None]
        top = max(ok, key=lambda r: r.shared, default=None)
        top_regs = max((r for r in ok if r.regs is not None), key=lambda r: r.regs, default=None)
        line = f"sm_{arch}: {len(ok)}/{len(mine)} compiled"
        if top is not None:
            line += (f"; max shared {top.shared} B of {SMEM_LIMIT[arch]} "
                     f"({top.job.kernel} {top.job.config} {top.job.dtype})")
        if top_regs is not None:
            line += (f"; max regs {top_regs.regs} "
                     f"({top_regs.job.kernel} {top_regs.job.config} {top_regs.job.dtype})")
        print(line)
    spilled = sum(1 for r in results if r.spills)
    print(f"{len(results) - len(failed)}/{len(results)} kernels OK, {len(failed)} failed "
          f"({spilled} with register spills{', allowed' if opts.allow_spills else ''}), "
          f"{time.perf_counter() - t_start:.0f} s")
    for r in failed:
        j = r.job
        print(f"FAILED {j.kernel} sm_{j.arch} {j.config} {j.dtype} {j.variant}: "
              + "; ".join(r.errors))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
