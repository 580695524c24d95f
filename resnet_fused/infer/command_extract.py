"""``python -m resnet_fused extract PATHS --weights CKPT --out FILE.npy``: pooled features."""

from __future__ import annotations

import argparse

from .cli import add_common_arguments, options_from, run_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, out_help="features: .npy, float32 (images, features) in input "
                                          "order, with <FILE>.index.csv (row, path); errors go "
                                          "to <FILE>.errors.csv")


def run(args: argparse.Namespace) -> int:
    return run_options(options_from(args, "extract"))
