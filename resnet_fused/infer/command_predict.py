"""``python -m resnet_fused predict PATHS --weights CKPT --out FILE``: top-k classes per image."""

from __future__ import annotations

import argparse

from .cli import add_common_arguments, options_from, run_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, out_help="predictions: .csv (path, then class, [label,] prob per "
                                          "rank) or .jsonl; errors go to <FILE>.errors.csv")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", default=None, metavar="FILE",
                        help="class names, one per line (class 0 first); default: the ImageNet "
                             "class names for a 1000-class checkpoint, none otherwise")
    labels.add_argument("--no-labels", action="store_true",
                        help="class numbers only, even for a 1000-class checkpoint")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")


def run(args: argparse.Namespace) -> int:
    labels = False if args.no_labels else args.labels
    return run_options(options_from(args, "predict", labels=labels, topk=args.topk))
