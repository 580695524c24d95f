"""Every CUDA kernel path of the ``cuda`` backend, once each, small: the script compute-sanitizer
runs (memcheck and racecheck) in the GPU session.

Paths (csrc/cuda/conv_bn_act_kernel.cu): the mma.sync implicit GEMM with each tile (large 128x128
when C_out > 64 and it still fills every SM, medium 128x64, small 64x64) for fp16, bf16 and fp32
as TF32; the fp32 FMA path (TF32 off); the direct fallback (forced with
RESNET_FUSED_CUDA_CONV_PATH=direct); the stem's channel padding; residual and no residual;
add_relu (flat and relayout); and, when the build has it, every other implementation named by
``torch.ops.resnet_fused.cuda_impls()`` through ``conv_bn_act_cuda_impl``, on the cases its plan
takes (the others are listed as skipped, with the reason). Each output is poisoned first and
checked against the reference, so the run also fails on a wrong result.

    python3 benchmarks/cuda_paths.py            # on a GPU: run every case (exit 1 on a failure)
    python3 benchmarks/cuda_paths.py --list     # anywhere: the cases, nothing run
    compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/cuda_paths.py
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys

import torch

# H100/H200: 132 SMs; the tile heuristic picks the largest tile that still gives each SM a CTA.
SMS = 132


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    n: int
    c: int
    h: int
    k: int
    r: int
    stride: int
    residual: bool
    dtype: str
    path: str = "auto"  # auto | direct | fma (fp32 with TF32 off)
    impl: str = ""  # a conv_bn_act_cuda_impl implementation, "" for the default op

    @property
    def pad(self) -> int:
        return self.r // 2


def _tiles(m: int, k: int, bm: int, bn: int) -> int:
    return -(-m // bm) * -(-k // bn)


def cases(impls: list[str]) -> list[Case]:
    out = []
    for dtype in ("float16", "bfloat16", "float32"):
        # 1x1 s1 at 56x56: M = 6 * 3136 = 18816 rows; C_out 128 -> 147 large tiles (>= 132).
        out.append(Case(f"large tile {dtype}", 6, 64, 56, 128, 1, 1, True, dtype))
        # C_out 64 skips the large tile; 147 medium tiles.
        out.append(Case(f"medium tile {dtype}", 6, 64, 56, 64, 1, 1, False, dtype))
        # 3x3 at 14x14, N 2: too few tiles for medium -> small.
        out.append(Case(f"small tile 3x3 {dtype}", 2, 96, 14, 80, 3, 1, True, dtype))
        out.append(Case(f"stem 7x7/2 C=3 (padded) {dtype}", 1, 3, 32, 64, 7, 2, False, dtype))
        out.append(Case(f"direct fallback {dtype}", 1, 20, 9, 24, 3, 2, True, dtype, "direct"))
    out.append(Case("fp32 FMA (TF32 off)", 2, 64, 14, 72, 3, 1, True, "float32", "fma"))
    out.append(Case("fp32 FMA stem", 1, 3, 32, 64, 7, 2, False, "float32", "fma"))
    for impl in impls:
        if impl == "mma_sync":
            continue  # the default op above
        for dtype in ("float16", "bfloat16"):
            out += [Case(f"{impl} 1x1 s1 {dtype}", 4, 256, 28, 512, 1, 1, True, dtype, impl=impl),
                    Case(f"{impl} 1x1 s2 {dtype}", 4, 256, 28, 512, 1, 2, False, dtype,
                         impl=impl),
                    Case(f"{impl} 3x3 {dtype}", 4, 128, 28, 128, 3, 1, False, dtype, impl=impl),
                    Case(f"{impl} stem {dtype}", 2, 3, 64, 64, 7, 2, False, dtype, impl=impl)]
    return out


def plan_refusal(case: Case) -> str:
    """"" if the implementation named by ``case.impl`` takes the case, else why not, from the
    sm90 plan (csrc/sm90/conv_plan.h, answered on any machine). The default op and mma_sync take
    every case: it is they that a refusal falls back to."""
    if not case.impl.startswith("sm90_cutlass"):
        return ""
    config = case.impl.split(":", 1)[1] if ":" in case.impl else ""
    lines = torch.ops.resnet_fused._sm90_conv_plan(
        [case.n, case.c, case.h, case.h], [case.k, case.c, case.r, case.r], [case.stride] * 2,
        [case.pad] * 2, getattr(torch, case.dtype), case.residual, True, 90, config)
    plan = dict(line.split("=", 1) for line in lines)
    return "" if plan["ok"] == "1" else plan["why"]


def runnable(todo: list[Case]) -> tuple[list[Case], list[tuple[Case, str]]]:
    """The cases their implementation takes, and the others with the reason: an implementation
    that refuses a call is not a memory error, and must not make the sanitizer run fail."""
    keep, dropped = [], []
    for case in todo:
        why = plan_refusal(case)
        if why:
            dropped.append((case, why))
        else:
            keep.append(case)
    return keep, dropped


@contextlib.contextmanager
def _path(case: Case):
    saved_env = os.environ.get("RESNET_FUSED_CUDA_CONV_PATH")
    saved_tf32 = torch.backends.cudnn.allow_tf32
    if case.path == "direct":
        os.environ["RESNET_FUSED_CUDA_CONV_PATH"] = "direct"
    torch.backends.cudnn.allow_tf32 = case.path != "fma"  # the CUDA backend follows this flag
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved_tf32
        if saved_env is None:
            os.environ.pop("RESNET_FUSED_CUDA_CONV_PATH", None)
        else:
            os.environ["RESNET_FUSED_CUDA_CONV_PATH"] = saved_env


def run_case(case: Case, gen: torch.Generator) -> float:
    from resnet_fused.reference import conv_bn_act_reference
    from resnet_fused.testing import no_tf32, random_bn_params, relative_error, tolerance

    dtype = getattr(torch, case.dtype)
    x = torch.randn(case.n, case.c, case.h, case.h, generator=gen)
    w = torch.randn(case.k, case.c, case.r, case.r, generator=gen) / (case.c * case.r ** 2) ** 0.5
    scale, shift = random_bn_params(case.k, gen)
    ho = (case.h + 2 * case.pad - case.r) // case.stride + 1
    res = torch.randn(case.n, case.k, ho, ho, generator=gen) if case.residual else None
    x, w = x.to(dtype), w.to(dtype)
    res = None if res is None else res.to(dtype)
    with no_tf32():
        ref = conv_bn_act_reference(x.float(), w.float(), scale, shift,
                                    None if res is None else res.float(),
                                    [case.stride] * 2, [case.pad] * 2, True)
    cl = torch.channels_last
    args = (x.cuda().contiguous(memory_format=cl), w.cuda().contiguous(memory_format=cl),
            scale.cuda(), shift.cuda(),
            None if res is None else res.cuda().contiguous(memory_format=cl),
            [case.stride] * 2, [case.pad] * 2, True)
    from resnet_fused.poison import poisoned_outputs

    with _path(case), poisoned_outputs():  # the op NaN-fills its output before the launch
        if case.impl:
            y = torch.ops.resnet_fused.conv_bn_act_cuda_impl(*args, case.impl)
        else:
            y = torch.ops.resnet_fused.conv_bn_act(*args)
        torch.cuda.synchronize()
    err = relative_error(y.float().cpu(), ref)
    bound = tolerance(dtype, "op", "cuda")
    if not err <= bound:
        raise AssertionError(f"{case.name}: relative error {err:.3e} > {bound:.1e}")
    return err


def run_add_relu(gen: torch.Generator) -> None:
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.randn(2, 24, 7, 9, generator=gen).to(dtype).cuda()
        for res in (torch.randn(2, 24, 7, 9, generator=gen).to(dtype).cuda(),  # flat
                    torch.randn(2, 24, 7, 9, generator=gen).to(dtype).cuda().contiguous(
                        memory_format=torch.channels_last)):  # relayout first
            y = torch.ops.resnet_fused.add_relu(x, res)
            torch.cuda.synchronize()
            expected = torch.relu(x.float() + res.float()).to(dtype)
            if not torch.equal(y, expected):
                raise AssertionError(f"add_relu {dtype}: wrong result")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the cases; run nothing")
    args = parser.parse_args(argv)
    import resnet_fused  # noqa: F401  (loads the ops)

    impls = list(torch.ops.resnet_fused.cuda_impls()) if hasattr(
        torch.ops.resnet_fused, "cuda_impls") else []
    todo, dropped = runnable(cases(impls))
    for c, why in dropped:
        print(f"skip  {c.name:<34} the implementation does not take it: {why}")
    if args.list or not torch.cuda.is_available():
        for c in todo:
            m = c.n * ((c.h + 2 * c.pad - c.r) // c.stride + 1) ** 2
            print(f"{c.name:<34} N={c.n} C={c.c} {c.h}x{c.h} K={c.k} {c.r}x{c.r}/s{c.stride} "
                  f"M={m} large/medium tiles {_tiles(m, c.k, 128, 128)}/{_tiles(m, c.k, 128, 64)}"
                  f"{' +res' if c.residual else ''}")
        print(f"{len(todo)} conv cases + add_relu; implementations in this build: {impls or '-'}")
        if not args.list:
            print("no CUDA device: nothing run")
        return 0
    gen = torch.Generator().manual_seed(0)
    failed = 0
    for c in todo:
        try:
            print(f"ok    {c.name:<34} rel. error {run_case(c, gen):.2e}", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL  {c.name:<34} {type(e).__name__}: {e}", flush=True)
    try:
        run_add_relu(gen)
        print("ok    add_relu (flat and relayout, 3 dtypes)")
    except Exception as e:
        failed += 1
        print(f"FAIL  add_relu: {type(e).__name__}: {e}")
    print(f"{len(todo) + 1 - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
