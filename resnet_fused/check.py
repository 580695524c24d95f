"""``python -m resnet_fused check``: every backend's numerics against the reference, as a table.

Each row runs fresh random data (seeded) through one backend in one dtype: a set of conv shapes
covering every ResNet conv family, and a whole model with non-trivial BatchNorm statistics, each
compared with a higher-precision reference under docs/design.md's bounds.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import torch

from . import models
from .backends import available_backends
from .fused import fuse
from .progress import progress
from .sweep import Case, run_case
from .testing import randomize_batchnorm_, reference_dtype, relative_error, tolerance


def _case(index: int, c: int, k: int, r: int, stride: int, pad: int, h: int, w: int,
          residual: bool) -> Case:
    return Case(index, n=2, c=c, k=k, h=h, w=w, r=r, s=r, stride=(stride, stride),
                padding=(pad, pad), residual=residual, relu=True, dtype="float32",
                channels_last=True)


# The ResNet conv families, small; run through the sweep's case runner in each dtype.
OP_CASES = {
    "stem 7x7/s2, C_in=3": _case(0, 3, 16, 7, 2, 3, 33, 31, False),
    "3x3/s1": _case(1, 24, 20, 3, 1, 1, 15, 13, False),
    "3x3/s2, odd H/W": _case(2, 20, 36, 3, 2, 1, 17, 15, False),
    "1x1/s1 + residual": _case(3, 36, 40, 1, 1, 0, 9, 11, True),
    "1x1/s2 downsample": _case(4, 40, 24, 1, 2, 0, 13, 9, False),
}


@dataclass
class Row:
    backend: str
    dtype: torch.dtype
    what: str
    error: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.error <= self.bound  # NaN/inf errors never pass


def _model_error(backend: str, dtype: torch.dtype, device: torch.device, model_name: str,
                 batch: int, size: int, gen) -> float:
    model = randomize_batchnorm_(getattr(models, model_name)(), gen).eval()
    x = torch.randn(batch, 3, size, size, generator=gen)
    ref_dt = reference_dtype(dtype)
    # Reference: the eager model in higher precision, on the same low-precision weights and input.
    with torch.no_grad():
        lp = model.to(dtype)
        fused = fuse(lp, backend=backend).to(device)
        ref = lp.to(ref_dt)(x.to(dtype).to(ref_dt))
        y = fused(x.to(dtype).to(device))
    return relative_error(y.cpu(), ref)


def run_check(device: torch.device, backends: list[str] | None, dtypes: list[torch.dtype] | None,
              model_name: str = "resnet50", batch: int = 2, size: int = 64, seed: int = 0) -> int:
    """Prints the table; returns 0 if every row is within its bound, else 1."""
    if backends is None:
        backends = [b for b in available_backends()
                    if b not in (("cuda", "triton") if device.type == "cpu" else ("cpu",))]
    if dtypes is None:
        dtypes = ([torch.float32, torch.bfloat16] if device.type == "cpu" else
                  [torch.float32, torch.float16, torch.bfloat16])
    jobs = [(b, d, name) for b in backends for d in dtypes for name in [*OP_CASES, None]]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for backend, dtype, name in progress(jobs, f"check on {device}", unit="case"):
        if name is None:
            what = f"{model_name} {batch}x3x{size}x{size}"
            err = _model_error(backend, dtype, device, model_name, batch, size, gen)
            bound = tolerance(dtype, "model", device)
        else:
            what = name
            case = dataclasses.replace(OP_CASES[name], dtype=str(dtype).replace("torch.", ""))
            err = run_case(case, backend, device, seed)["error"]
            bound = tolerance(dtype, "op", device)
        rows.append(Row(backend, dtype, what, err, bound))

    print(f"Numerics on {device} (relative L2 error vs the reference; fp32 vs float64, "
          "fp16/bf16 vs fp32):")
    header = f"{'backend':<8} {'dtype':<9} {'case':<28} {'rel. error':>10} {'bound':>8}  result"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.backend:<8} {str(r.dtype).replace('torch.', ''):<9} {r.what:<28} "
              f"{r.error:>10.2e} {r.bound:>8.1e}  {'PASS' if r.ok else 'FAIL'}")
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .backends import BACKENDS

    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if visible)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                        help="backends to check (default: every available one)")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=None,
                        help="dtypes (default: float32 and bfloat16 on CPU, all three on GPU)")
    parser.add_argument("--model", choices=MODELS, default="resnet50")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from .backends import parse_device

    try:
        device = parse_device(args.device)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    dtypes = [DTYPES[d] for d in args.dtypes] if args.dtypes else None
    return run_check(device, args.backends, dtypes, model_name=args.model, batch=args.batch,
                     size=args.size, seed=args.seed)
