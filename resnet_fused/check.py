"""``python -m resnet_fused check``: every backend's numerics against the reference, as a table.

Each row runs fresh random data (seeded) through one backend in one dtype: a set of conv shapes
covering every ResNet conv family, and a whole model with non-trivial BatchNorm statistics, each
compared with a higher-precision reference under DESIGN.md's bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import models, ops
from .backends import available_backends
from .fused import fuse
from .reference import conv_bn_act_reference
from .testing import (
    random_bn_params,
    randomize_batchnorm_,
    reference_dtype,
    relative_error,
    tolerance,
)

# (name, C_in, C_out, kernel, stride, padding, H, W, residual): the ResNet conv families, small.
OP_CASES = [
    ("stem 7x7/s2, C_in=3", 3, 16, 7, 2, 3, 33, 31, False),
    ("3x3/s1", 24, 20, 3, 1, 1, 15, 13, False),
    ("3x3/s2, odd H/W", 20, 36, 3, 2, 1, 17, 15, False),
    ("1x1/s1 + residual", 36, 40, 1, 1, 0, 9, 11, True),
    ("1x1/s2 downsample", 40, 24, 1, 2, 0, 13, 9, False),
]


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


def _op_error(backend: str, dtype: torch.dtype, device: torch.device, case, gen) -> float:
    _, c, k, r, stride, pad, h, w, with_res = case
    n = 2
    x = torch.randn(n, c, h, w, generator=gen)
    wt = torch.randn(k, c, r, r, generator=gen) / math.sqrt(c * r * r)
    scale, shift = random_bn_params(k, gen)
    ho, wo = (h + 2 * pad - r) // stride + 1, (w + 2 * pad - r) // stride + 1
    res = torch.randn(n, k, ho, wo, generator=gen) if with_res else None
    ref_dt = reference_dtype(dtype)

    def cast(t, dt, dev):
        return None if t is None else t.to(device=dev, dtype=dt)

    # The reference sees the same low-precision-rounded inputs as the backend.
    x_lp, w_lp, res_lp = (cast(t, dtype, "cpu") for t in (x, wt, res))
    ref = conv_bn_act_reference(cast(x_lp, ref_dt, "cpu"), cast(w_lp, ref_dt, "cpu"), scale,
                                shift, cast(res_lp, ref_dt, "cpu"), [stride] * 2, [pad] * 2, True)
    y = ops.conv_bn_act(cast(x_lp, dtype, device), cast(w_lp, dtype, device), scale.to(device),
                        shift.to(device), cast(res_lp, dtype, device), stride, pad, True,
                        backend=backend)
    return relative_error(y.cpu(), ref)


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
    jobs = [(b, d, case) for b in backends for d in dtypes for case in [*OP_CASES, None]]
    try:
        from tqdm import tqdm

        progress = tqdm(jobs, desc=f"check on {device}", unit="case", leave=False)
    except ImportError:  # tqdm is a dependency, but never fail a check over a progress bar
        progress = jobs
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for backend, dtype, case in progress:
        if case is None:
            what = f"{model_name} {batch}x3x{size}x{size}"
            err = _model_error(backend, dtype, device, model_name, batch, size, gen)
            bound = tolerance(dtype, "model", device)
        else:
            what = case[0]
            err = _op_error(backend, dtype, device, case, gen)
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
