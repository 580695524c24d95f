"""Command line: ``python -m resnet_fused [info|check|bench]``.

With no sub-command it runs the main job: ``check`` (numerics of every available backend against
the reference) and then ``bench`` (throughput of the fused model against the reference), on the
current device.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from . import __version__
from .backends import BACKENDS, backend_status

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is visible")
    return device


def cmd_info(args: argparse.Namespace) -> int:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    rows = [
        ("resnet_fused", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", triton_version),
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
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .check import run_check

    device = _device(args.device)
    return run_check(device, args.backends, [DTYPES[d] for d in args.dtypes] if args.dtypes else
                     None, model_name=args.model, batch=args.batch, size=args.size, seed=args.seed)


def _bench_module():
    try:
        from . import bench
    except ImportError as e:  # pragma: no cover - bench.py ships with the package
        raise SystemExit(f"bench is unavailable: {e}") from e
    return bench


def cmd_bench(args: argparse.Namespace) -> int:
    return _bench_module().run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_fused",
        description="Fused conv+BN(+residual)+ReLU ResNet: info, numerics check, throughput. "
        "Without a sub-command: `check` then `bench` on the current device.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="versions and which backends this install has")

    check = sub.add_parser("check", help="numerics of each backend vs the reference (a table)")
    check.add_argument("--device", default=None, help="cpu or cuda (default: cuda if visible)")
    check.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                       help="backends to check (default: every available one)")
    check.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=None,
                       help="dtypes (default: float32 and bfloat16 on CPU, all three on GPU)")
    check.add_argument("--model", choices=MODELS, default="resnet50")
    check.add_argument("--batch", type=int, default=2)
    check.add_argument("--size", type=int, default=64, help="input height and width")
    check.add_argument("--seed", type=int, default=0)

    from . import sweep

    sweep.add_arguments(sub.add_parser(
        "sweep", help="seeded randomized conv_bn_act sweep of chosen backends vs the reference"))

    bench = sub.add_parser("bench", help="throughput of the fused model vs the reference")
    try:
        from . import bench as bench_module
    except ImportError:  # reported when `bench` runs, so `info`/`check` still work
        bench_module = None
    if bench_module is not None:
        bench_module.add_arguments(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return cmd_info(args)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "bench":
        return cmd_bench(args)
    if args.command == "sweep":
        from . import sweep

        return sweep.run(args)
    # The main job: prove the numbers, then measure.
    cmd_info(args)
    print()
    status = cmd_check(parser.parse_args(["check"]))
    print()
    bench_status = cmd_bench(parser.parse_args(["bench"]))
    return status or bench_status


if __name__ == "__main__":
    sys.exit(main())
