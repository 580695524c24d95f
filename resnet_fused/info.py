"""``python -m resnet_fused info``: versions, the device, and which backends this install has."""

from __future__ import annotations

import argparse
import platform

import torch

from .backends import backend_status, cuda_implementations, triton_version


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


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
    return 0
