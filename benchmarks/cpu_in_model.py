"""Two settings of one CPU fast-path switch, timed per layer inside a fused ResNet-50's forward.

The machinery behind ``cpu_winograd.py`` (``RESNET_FUSED_WINOGRAD``) and ``cpu_conv1x1.py``
(``RESNET_FUSED_CONV1X1``). Layers are timed where they run, inside the forward pass: a layer's
weight then comes cold from memory and its input from the layer before, as in real use (a layer
timed alone, back to back, keeps both in cache). Two fused copies of the same random network
(non-trivial BatchNorm statistics) are built, one per setting, each checked against the float64
(fp32) or fp32 (bf16) model, then called in alternating order, one forward each per round.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

# The checkout's resnet_fused (this file's repository), not whichever one is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _timed_layers(fused, select: Callable, times: dict, shapes: dict) -> None:
    """Wraps the forward of every fused conv of ``fused`` that ``select(module)`` picks to append
    its time to ``times`` and note its input's shape in ``shapes``."""
    from resnet_fused.fused import FusedConvBNAct

    for name, module in fused.named_modules():
        if isinstance(module, FusedConvBNAct) and select(module):
            forward = module.forward

            def timed(*args, _forward=forward, _name=name, **kwargs):
                shapes[_name] = tuple(args[0].shape)
                start = time.perf_counter()
                out = _forward(*args, **kwargs)
                times[_name].append(time.perf_counter() - start)
                return out

            module.forward = timed


def run_case(batch: int, dtype: torch.dtype, rounds: int, size: int, env: str,
             settings: dict[str, str], select: Callable) -> dict:
    """Times ``fuse(resnet50)`` under each of ``settings`` ({label: value of ``env``}).

    Returns ``{"fused": {label: model}, "layers": {label: {layer: [seconds per round]}},
    "inputs": {layer: input shape}, "model_s": {label: [seconds per round]}}``.
    """
    import resnet_fused
    from resnet_fused.testing import randomize_batchnorm_, relative_error, tolerance

    generator = torch.Generator().manual_seed(batch)
    model = randomize_batchnorm_(resnet_fused.resnet50(), generator).eval()
    x = torch.randn(batch, 3, size, size, generator=generator)
    with torch.no_grad():
        ref = (model.double()(x.double()) if dtype == torch.float32 else model(x))
        model.float()
    fused, layer_times, model_times, inputs = {}, {}, {}, {}
    previous = os.environ.get(env)
    try:
        for label, value in settings.items():
            os.environ[env] = value  # read when a conv is first prepared
            f = resnet_fused.fuse(model, backend="cpu", dtype=dtype)
            with torch.inference_mode():
                err = relative_error(f(x).float(), ref)
            bound = tolerance(dtype, "model")
            if not err <= bound:
                raise SystemExit(f"{env}={value}: relative error {err:.3g} > {bound:g}")
            fused[label] = f
            layer_times[label] = collections.defaultdict(list)
            model_times[label] = []
            _timed_layers(f, select, layer_times[label], inputs)
    finally:
        if previous is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = previous
    with torch.inference_mode():
        for _ in range(2):  # warm-up, untimed
            for f in fused.values():
                f(x)
        for times in layer_times.values():
            times.clear()
        for r in range(rounds):
            order = list(fused) if r % 2 == 0 else list(fused)[::-1]
            for label in order:
                start = time.perf_counter()
                fused[label](x)
                model_times[label].append(time.perf_counter() - start)
    return {"fused": fused, "layers": layer_times, "inputs": inputs, "model_s": model_times}


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios a / b (load that drifts between rounds cancels)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def parse_args(description: str, dtypes: list[str], argv: list[str] | None,
               check: Callable[[argparse.Namespace], str | None] | None = None
               ) -> argparse.Namespace:
    """The scripts' common command line: --batch, --dtype, --rounds, --size, --json; ``check``
    returns what else is wrong with the arguments (a usage error), or None."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=dtypes)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--json", default=None, help="also write every round's times here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if any(b < 1 for b in args.batch):
        parser.error(f"--batch values must be >= 1, got {args.batch}")
    problem = check(args) if check is not None else None
    if problem:
        parser.error(problem)
    return args


def run_all(args: argparse.Namespace, run_case: Callable, report: Callable) -> int:
    """Prints the header, runs ``run_case(batch, dtype, rounds, size)`` for every dtype and batch
    asked for, ``report(case)`` after each, and writes the JSON if asked."""
    print(header(args))
    cases = []
    for dtype_name in args.dtype:
        for batch in args.batch:
            case = run_case(batch, getattr(torch, dtype_name), args.rounds, args.size)
            cases.append(case)
            report(case)
    if args.json:
        write_json(args.json, cases)
    return 0


def header(args: argparse.Namespace) -> str:
    return (f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}; "
            f"{platform.processor() or platform.machine()}; torch {torch.__version__}; "
            f"{torch.get_num_threads()} threads; {args.rounds} rounds; "
            f"input {args.size}x{args.size}")


def write_json(path: str, cases: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"command": " ".join(sys.argv), "torch": torch.__version__,
                   "cpu": platform.processor() or platform.machine(), "cases": cases}, f,
                  indent=1)
