"""Triton implicit-GEMM ``conv -> BN (scale/shift) -> (+ residual) -> (ReLU)``.

GEMM view over NHWC: row m = (n, ho, wo) in ``[0, N*Ho*Wo)``, column = output channel k, and the
reduction runs over (r, s, c). The K loop is ONE flat loop over (r, s, c-block) steps so Triton
can software-pipeline it (nested r/s loops would leave a 1-step innermost loop for C = 64 and
nothing to pipeline). Channels are the innermost reduction index, so for channels_last
activations and channels_last (K, R, S, C) weights every tile load is a run of contiguous
channels. All tensors are addressed through their strides, so any memory format is *correct*;
channels_last is merely *fast*.

Epilogue, in fp32: ``acc * scale[k] + shift[k] (+ residual) (ReLU)``, stored in the input dtype
into a channels_last output (so the output address of (m, k) is simply ``m * C_out + k``).

fp32 precision: ``tl.dot`` uses TF32 iff ``torch.backends.cudnn.allow_tf32`` (PyTorch's default
True). This is a convolution, and that is the flag that governs cuDNN convolutions, so a model
gives the same class of numerics on every backend; set it False for IEEE fp32. Under the
interpreter the dot is always IEEE (exact tests). The flag is read when the op runs (or, under
``torch.compile``, when it is traced).
"""

import contextlib
import functools
import hashlib
import inspect
import warnings

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from .. import poison, tuning
from ..autograd import register_conv_bn_act_autograd
from ..checks import check_conv_bn_act_args
from . import configs
from .configs import ConvConfig
from .launch import interpreter_fake_launch, is_tracing, launcher, on_device_of

__all__ = ["conv_bn_act_launch", "triton_conv_bn_act"]

_INT32_LIMIT = 2**31 - 1


@triton.jit
def _conv_bn_act_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, res_ptr, y_ptr,
    M, C, H, W, K, Ho, Wo,
    sxn, sxc, sxh, sxw,
    swk, swc, swr, sws,
    srn, srk, srh, srw,
    conv_sh, conv_sw, pad_h, pad_w,
    R: tl.constexpr, S: tl.constexpr,
    HAS_RES: tl.constexpr, RELU: tl.constexpr,
    GEMM: tl.constexpr, RES_FLAT: tl.constexpr, INT64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped tile order: GROUP_M row-tiles share each weight column-tile while it is hot in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(K, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    if INT64:
        # Promote the index vectors once; every offset derived from them is then 64-bit.
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    m_mask = offs_m < M
    n_mask = offs_n < K

    # Spatial decomposition of the rows, once per tile (outside the K loop).
    hw = Ho * Wo
    n_idx = offs_m // hw
    rem = offs_m - n_idx * hw
    ho = rem // Wo
    wo = rem - ho * Wo
    h0 = ho * conv_sh - pad_h
    w0 = wo * conv_sw - pad_w
    x_img = n_idx * sxn
    if GEMM:
        # 1x1 / stride 1 / pad 0 with (n, h, w) collapsible into one stride: row m of the GEMM is
        # at m * sxw, a plain matrix; no halo masks, no per-step address math.
        x_row = offs_m * sxw

    w_col = offs_n * swk
    c_blocks = tl.cdiv(C, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, R * S * c_blocks):
        rs = step // c_blocks
        cs = (step - rs * c_blocks) * BLOCK_K + offs_k
        r = rs // S
        s = rs - r * S
        c_mask = cs < C
        if GEMM:
            a_ptrs = x_ptr + x_row[:, None] + cs[None, :] * sxc
            a_mask = m_mask[:, None] & c_mask[None, :]
        else:
            hi = h0 + r
            wi = w0 + s
            # Zero padding = masked loads; also masks the stem's C_in=3 inside a 16-wide K block.
            row_ok = m_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            a_ptrs = x_ptr + (x_img + hi * sxh + wi * sxw)[:, None] + cs[None, :] * sxc
            a_mask = row_ok[:, None] & c_mask[None, :]
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        b_ptrs = w_ptr + (w_col[None, :] + r * swr + s * sws) + cs[:, None] * swc
        b = tl.load(b_ptrs, mask=c_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    # Fused epilogue in fp32 (BN stays out of the weights so low-precision weights are exact).
    scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
    shift = tl.load(shift_ptr + offs_n, mask=n_mask, other=0.0)
    out = acc * scale[None, :] + shift[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_RES:
        if RES_FLAT:
            res_row = offs_m * srw
        else:
            res_row = n_idx * srn + ho * srh + wo * srw
        res = tl.load(res_ptr + res_row[:, None] + offs_n[None, :] * srk, mask=out_mask, other=0.0)
        out += res.to(tl.float32)
    if RELU:
        # where(x < 0, 0, x) keeps NaN as NaN, like torch.relu (max(x, 0) may drop it).
        out = tl.where(out < 0.0, 0.0, out)
    y_ptrs = y_ptr + offs_m[:, None] * K + offs_n[None, :]
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=out_mask)


def _extent(t: Tensor) -> int:
    """One past the largest element offset ``t`` addresses (0 for an empty tensor)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))


def _channels_innermost(t: Tensor) -> Tensor:
    """``t`` itself if its channel dim (dim 1) has unit stride, else a channels_last copy."""
    return t if t.stride(1) == 1 else t.contiguous(memory_format=torch.channels_last)


def _rows_collapse(t: Tensor) -> bool:
    """(n, h, w) of a 4-D (N, C, H, W) tensor fold into one row index with row stride stride(3)."""
    n, _, h, w = t.shape
    sn, _, sh, sw = t.stride()
    return (h == 1 or sh == w * sw) and (n == 1 or sn == h * w * sw)


def _precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "tf32"  # ignored for 16-bit operands; it is tl.dot's default
    if configs.interpreting():
        return "ieee"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def conv_bn_act_launch(
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Tensor | None,
    stride: list[int],
    padding: list[int],
    relu: bool,
    out: Tensor,
    config: ConvConfig,
    force_int64: bool = False,
) -> None:
    """Launches the kernel once into ``out`` (channels_last, the op's output sizes).

    Internal: arguments are assumed valid (the op validates). ``config`` and ``force_int64`` let
    the tests run every table entry and the 64-bit path on small shapes.
    """
    n, c, h, w = input.shape
    k, _, r, s = weight.shape
    ho, wo = out.shape[2], out.shape[3]
    m = n * ho * wo
    if m == 0:
        return
    # Constexprs must be plain Python values: bool()/int() specialize symbolic shapes (dynamic
    # torch.compile) instead of passing SymBools/SymInts into the kernel's compile key.
    gemm = bool(r == 1 and s == 1 and stride[0] == 1 and stride[1] == 1 and padding[0] == 0
                and padding[1] == 0 and _rows_collapse(input))
    has_res = residual is not None
    # A dummy pointer when there is no residual; HAS_RES=False compiles the load away.
    res = residual if has_res else out
    res_flat = bool(has_res and _rows_collapse(res))
    int64 = bool(force_int64 or max(_extent(t) for t in (input, weight, res, out)) > _INT32_LIMIT)
    grid = (triton.cdiv(m, config.BLOCK_M) * triton.cdiv(k, config.BLOCK_N),)
    launcher(_conv_bn_act_kernel)[grid](
        input, weight, scale, shift, res, out,
        m, c, h, w, k, ho, wo,
        *input.stride(), *weight.stride(), *res.stride(),
        stride[0], stride[1], padding[0], padding[1],
        R=int(r), S=int(s), HAS_RES=has_res, RELU=relu, GEMM=gemm, RES_FLAT=res_flat, INT64=int64,
        PRECISION=_precision(input.dtype),
        BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, BLOCK_K=config.BLOCK_K,
        GROUP_M=config.GROUP_M, num_warps=config.num_warps, num_stages=config.num_stages,
    )


def _config_key(input, weight, residual, stride, padding, relu) -> tuple | None:
    """The tuning key, or None when a size is symbolic (dynamic torch.compile: nothing to run)."""
    dims = (*input.shape, *weight.shape, *stride, *padding)
    if not all(type(d) is int for d in dims):
        return None
    return (
        tuple(input.shape), tuple(weight.shape), str(input.dtype), _precision(input.dtype),
        tuple(stride), tuple(padding), residual is not None, relu,
        input.is_contiguous(memory_format=torch.channels_last),
        weight.is_contiguous(memory_format=torch.channels_last),
    )


def _candidates(input, weight, out_sizes) -> tuple[ConvConfig, ...]:
    m = input.shape[0] * out_sizes[2] * out_sizes[3]
    if configs.interpreting():
        return (configs.interpreter_conv_config(m, weight.shape[1], weight.shape[0]),)
    family = configs.conv_family(m, weight.shape[1], weight.shape[0], *weight.shape[2:])
    return configs.conv_candidates(family, input.dtype)


def _verified_config(input, weight, residual, stride, padding, relu, out_sizes, key,
                     candidates) -> ConvConfig:
    """Runs resnet_fused.tuning.choose on random data with this call's exact layout (the same
    kernel specialization), so a config is verified before it can be chosen (see tuning.py)."""
    problem = tuning.ConvProblem.like(input, weight, residual, stride, padding, relu, out_sizes)
    out = torch.empty(out_sizes, dtype=input.dtype, device=input.device,
                      memory_format=torch.channels_last)

    def launch(cfg: ConvConfig) -> Tensor:
        conv_bn_act_launch(*problem.args, out, cfg)
        return out

    def run(cfg: ConvConfig) -> Tensor:
        out.fill_(float("nan"))  # an element the kernel does not write fails the check
        return launch(cfg)

    # Tuning off: the default, or the next candidate that passes where it fails verification.
    return tuning.choose(
        "triton.conv_bn_act", key, candidates, run=run, launch=launch,
        reference=problem.reference, bound=problem.bound, device=input.device,
        name=_config_name, timer=_timer(input.device), fingerprint=_kernel_fingerprint(),
        first_passing=not configs.autotune_enabled())


def _choose_config(input, weight, residual, stride, padding, relu, out_sizes) -> ConvConfig:
    """The config for this call: a verified (and, with several candidates, the fastest) one.

    The first call of a shape verifies the candidates on random data (tuning.py); later calls,
    traced or not, reuse that choice. While a CUDA graph is being captured nothing can be run or
    synchronized: an unseen shape then gets its default config unverified, with a warning (warm
    up eagerly before capturing, as torch.cuda.graphs recommends).
    """
    candidates = _candidates(input, weight, out_sizes)
    key = _config_key(input, weight, residual, stride, padding, relu)
    if key is None:
        _warn_unverified("its sizes are symbolic (dynamic shapes)")
        return candidates[0]
    if input.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        chosen = tuning.lookup("triton.conv_bn_act", key, candidates, input.device,
                               name=_config_name, fingerprint=_kernel_fingerprint())
        if chosen is None:
            _warn_unverified(f"the shape {key} was first seen during CUDA graph capture")
            return candidates[0]
        return chosen
    with tuning.outside_tracing() if is_tracing(input) else contextlib.nullcontext():
        return _verified_config(input, weight, residual, stride, padding, relu, out_sizes, key,
                                candidates)


def _config_name(cfg: ConvConfig) -> str:
    return (f"{cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K}/w{cfg.num_warps}/s{cfg.num_stages}"
            f"/g{cfg.GROUP_M}")


@functools.cache
def _kernel_fingerprint() -> str:
    """Changes whenever the kernel's source does: a cached choice is for this exact kernel."""
    src = inspect.getsource(_conv_bn_act_kernel.fn)
    return "conv_bn_act:" + hashlib.sha256(src.encode()).hexdigest()[:16]


def _timer(device: torch.device):
    if device.type != "cuda":
        return None  # the interpreter: tuning's wall-clock default (only tests give it several)

    def do_bench_seconds(fn) -> float:
        from triton.testing import do_bench

        return do_bench(fn, warmup=5, rep=25) / 1e3

    return do_bench_seconds


@functools.cache
def _warn_unverified(why: str) -> None:
    warnings.warn(f"resnet_fused: a Triton conv_bn_act config runs unverified because {why}",
                  stacklevel=4)


@triton_op("resnet_fused::triton_conv_bn_act", mutates_args=())
def triton_conv_bn_act(
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Tensor | None,
    stride: list[int],
    padding: list[int],
    relu: bool,
) -> Tensor:
    """Triton backend of ``resnet_fused::conv_bn_act`` (see ``resnet_fused.ops.conv_bn_act``).

    This body is also the op's fake implementation (triton_op traces it), so everything before
    the launch is shape logic that works on fake tensors.
    """
    sizes = check_conv_bn_act_args(input, weight, scale, shift, residual, stride, padding)
    out = torch.empty(sizes, dtype=input.dtype, device=input.device,
                      memory_format=torch.channels_last)
    if out.numel() == 0:
        return out  # N = 0: nothing to launch
    if poison.enabled() and not is_tracing(input):
        out.fill_(float("nan"))  # checks: an unwritten element stays NaN (resnet_fused.poison)
    if interpreter_fake_launch(input, "triton_conv_bn_act"):
        # The interpreter runs kernels on real host memory; under fake tensors (opcheck's fake
        # test, dynamo's shape propagation) only the already-correct metadata matters.
        return out
    # The kernel reads scale/shift with unit stride (a no-op for fuse()'s buffers).
    scale = scale.contiguous()
    shift = shift.contiguous()
    # Channels must be innermost (unit stride): with a strided channel dim the tile loads cannot
    # be vectorized and the kernel spills registers (.ci/compile_triton.py shows it), so such
    # layouts are copied once to channels_last, as the CUDA backend does. fuse()'s activations and
    # weights are channels_last already: no copy on that path.
    input, weight = _channels_innermost(input), _channels_innermost(weight)
    if residual is not None:
        residual = _channels_innermost(residual)
    with on_device_of(input):
        cfg = _choose_config(input, weight, residual, stride, padding, relu, sizes)
        conv_bn_act_launch(input, weight, scale, shift, residual, stride, padding, relu, out, cfg)
    return out


register_conv_bn_act_autograd("resnet_fused::triton_conv_bn_act")
