"""Command line: ``python -m resnet_fused [COMMAND]`` (also installed as ``resnet-fused``).

With no command it runs the main job: ``info``, then ``check`` (numerics of every available
backend against the reference), then ``bench`` (throughput of the fused model against the
reference, with its spread and a verdict), on the current device.

Each command lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status); :data:`COMMANDS` maps names to those modules.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .signals import honor_sigint

# name -> (module under resnet_fused, one-line help). Modules are imported when the parser is
# built, so `--help` lists every option; a module that fails to import is reported by name.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("info", "versions, the device, and which backends this install has"),
    "check": ("check", "numerics of each backend vs the reference (a table)"),
    "bench": ("bench.cli", "throughput of the fused model vs the baselines (progress bar)"),
    "sweep": ("sweep", "seeded randomized conv_bn_act sweep of chosen backends vs the reference"),
    "predict": ("infer.command_predict", "top-k classes of every image in files/folders/globs"),
    "extract": ("infer.command_extract", "pooled features of every image in files/folders/globs"),
}
MAIN_JOB = ("info", "check", "bench")


def _module(name: str):
    return importlib.import_module(f"resnet_fused.{COMMANDS[name][0]}")


def build_parser() -> argparse.ArgumentParser:
    # Installed as `resnet-fused` too: the usage line names the way it was started.
    prog = "resnet-fused" if os.path.basename(sys.argv[0]) == "resnet-fused" else \
        "python -m resnet_fused"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fused conv+BN(+residual)+ReLU ResNet. Without a command, runs the main job: "
        f"{', then '.join(MAIN_JOB)} on the current device (defaults of each).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        _module(name).add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    honor_sigint()  # long commands stop on SIGINT with what they finished, even from `cmd &`
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is not None:
        return _module(args.command).run(args)
    # The main job: say what runs here, prove the numbers, then measure.
    status = 0
    for i, name in enumerate(MAIN_JOB):
        if i:
            print()
        status = _module(name).run(parser.parse_args([name])) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
