"""``python -m resnet_fused info``: versions, the device, and which backends this install has;
with ``--convs``, what each conv of a fused model runs on this CPU, and why."""

from __future__ import annotations

import argparse
import platform

import torch

from .backends import backend_status, cuda_implementations, triton_version


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--convs", action="store_true",
                        help="also run a fused model once on the CPU (random weights) and list "
                             "what each conv runs there, and why (RESNET_FUSED_CPU_CHOICE)")
    parser.add_argument("--model", default="resnet50",
                        choices=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
                        help="with --convs: the network (default resnet50)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="with --convs: the batch (default 1)")
    parser.add_argument("--size", type=int, default=224,
                        help="with --convs: the image side in pixels (default 224)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="with --convs: the compute dtype (default float32)")


def run(args: argparse.Namespace | None = None) -> int:
    from . import __version__

    rows = [
        ("resnet_fused", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", triton_version()),
        ("torch CUDA", torch.version.cuda or "none (CPU build)"),
        ("cuDNN", str(torch.backends.cudnn.version()) if torch.cuda.is_available() else "n/a"),
        ("device", torch.cuda.get_device_name() if torch.cuda.is_available() else
         f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("\nbackends:")
    for name, why in backend_status().items():
        print(f"  {name:<7} {why}")
    print("\ncuda implementations (this build):")
    for name, status in cuda_implementations().items():
        print(f"  {name:<12} {status}")
    print("\ncpu fast path (oneDNN):")
    for key, value in cpu_rows():
        print(f"  {key:<9} {value}")
    if args is not None and args.convs:
        return print_convs(args.model, args.batch_size, args.size, getattr(torch, args.dtype))
    return 0


def print_convs(arch: str, batch: int, size: int, dtype: torch.dtype) -> int:
    """Fuses ``arch`` (random weights, non-trivial BatchNorm), runs it once on a CPU batch, and
    prints each conv's input shape, algorithm and the reason (:mod:`.cpu.algorithms`)."""
    from . import models
    from .cpu import algorithms
    from .cpu.capability import fast_dtypes
    from .fused import FusedConvBNAct, fuse
    from .testing import randomize_batchnorm_

    if batch < 1 or size < 1:
        print(f"error: --batch-size and --size must be positive, got {batch} and {size}")
        return 2
    if dtype not in fast_dtypes():
        print(f"\nconvs: {dtype} does not take the CPU fast path here (the raw op runs)")
        return 0
    gen = torch.Generator().manual_seed(0)
    model = randomize_batchnorm_(getattr(models, arch)(), gen).eval()
    fused = fuse(model, backend="cpu", dtype=dtype)
    print(f"\nconvs of {arch}, input ({batch}, 3, {size}, {size}) {dtype}, "
          f"{torch.get_num_threads()} threads, choice: {algorithms.mode()} "
          "(RESNET_FUSED_CPU_CHOICE):")
    with torch.inference_mode():
        fused(torch.randn(batch, 3, size, size, generator=gen))
    rows = []
    for name, module in fused.named_modules():
        if isinstance(module, FusedConvBNAct) and module._onednn is not None:
            for (n, h, w), choice in module._onednn.choices.items():
                kind = f"{module.weight.shape[2]}x{module.weight.shape[3]}/{module.stride[0]}"
                rows.append((name, f"{kind} {module.in_channels}->{module.out_channels}",
                             f"{n}x{h}x{w}", choice.algorithm, choice.why))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  " + "  ".join(f"{v:<{widths[i]}}" for i, v in enumerate(row[:4])) + "  " + row[4])
    return 0


def cpu_rows() -> list[tuple[str, str]]:
    """The CPU's capability as the ``cpu`` backend's fast path sees it (``info``'s last section)."""
    from .cpu.capability import cpu_capability, fast_dtypes

    caps = cpu_capability()

    def flags(*names: str) -> str:
        have = [n for n in names if caps[n]]
        return ", ".join(have) if have else "none"

    dtypes = sorted(str(d).removeprefix("torch.") for d in fast_dtypes())
    return [
        ("isa", f"{caps['isa']} ({flags('avx2', 'avx512_f', 'avx512_bw', 'avx512_vnni')})"),
        ("bf16", f"{flags('avx512_bf16', 'amx_bf16')}; oneDNN bf16 convs: "
                 f"{'yes' if caps['onednn_bf16'] else 'no'}"),
        ("fp16", f"{flags('avx512_fp16', 'amx_fp16')}; oneDNN fp16 convs: "
                 f"{'yes' if caps['onednn_fp16'] else 'no'}"),
        ("amx", "yes" if caps["amx_tile"] else "no"),
        ("dtypes", ", ".join(dtypes) + " (others run the raw op)" if dtypes else
         "none: torch was built without oneDNN; every dtype runs the raw op"),
        ("choice", _choice_row()),
        ("winograd", _winograd_row()),
        ("conv1x1", _conv1x1_row()),
        ("plans", _plan_row()),
    ]


def _choice_row() -> str:
    from .cpu import algorithms

    try:
        mode = algorithms.mode()
    except ValueError as err:
        return f"invalid setting: {err}"
    if mode == "rule":
        return ("rule (RESNET_FUSED_CPU_CHOICE): fixed rules per conv shape"
                + (", the CPUs they were measured on (AVX-512, no AMX)"
                   if algorithms.rules_measured_here() else ""))
    from .tuning import cache_path

    return ("measure (RESNET_FUSED_CPU_CHOICE): each conv shape's candidates verified, then "
            f"timed here, the fastest cached in {cache_path()}; `info --convs` lists them")


def _conv1x1_row() -> str:
    from .cpu import conv1x1

    try:
        rule = conv1x1.policy()
    except ValueError as err:
        return f"invalid setting: {err}"
    if rule == "never":
        return "never (RESNET_FUSED_CONV1X1): 1x1 convs run on oneDNN"
    dtypes = [str(d).removeprefix("torch.") for d in (torch.float32, torch.bfloat16)
              if conv1x1.available(d)]
    if not dtypes:
        return "auto (RESNET_FUSED_CONV1X1): unavailable (needs AVX-512), 1x1 convs run on oneDNN"
    amx = conv1x1.amx_status()
    amx = ("its AMX kernel (bfloat16) measured against it per shape" if amx == "available"
           else f"AMX kernel {amx}")
    return (f"auto (RESNET_FUSED_CONV1X1): 1x1 convs on this package's AVX-512 GEMM in "
            f"{' and '.join(dtypes)}, the residual summed in place; {amx}")


def _plan_row() -> str:
    from .cpu import plan

    try:
        rule = plan.policy()
    except ValueError as err:
        return f"invalid setting: {err}"
    if rule == "never":
        return "never (RESNET_FUSED_FORWARD_PLAN): every forward runs in Python"
    return ("auto (RESNET_FUSED_FORWARD_PLAN): a fused model's forward is recorded on the "
            "second call of an input shape and replayed from C++ after that (same bits)")


def _winograd_row() -> str:
    from .cpu import winograd

    try:
        rule = winograd.policy()
    except ValueError as err:
        return f"invalid setting: {err}"
    floor = (f"{winograd.MIN_TILES_F32_PIPELINE} (float32 on the AVX-512 pipeline) or "
             f"{winograd.MIN_TILES}" if winograd.pipelines_available() else str(winograd.MIN_TILES))
    meaning = {"auto": f"3x3 stride-1 convs with >= {floor} output tiles",
               "always": "every 3x3 stride-1 conv", "never": "off"}[rule]
    gemm = ("AVX-512 pipelines with their own GEMM for float32/bfloat16" if
            winograd.pipelines_available() else "ATen's GEMM (no AVX512_BF16)")
    return (f"{rule} (RESNET_FUSED_WINOGRAD): {meaning}; F(4,3) in float32, F(2,3) in "
            f"bfloat16/float16; {gemm}")
