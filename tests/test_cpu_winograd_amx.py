"""Winograd's AMX GEMMs: ``resnet_fused::winograd_conv3x3`` with ``kernel="amx"`` (the bf16 F(2,3)
pipeline of csrc/cpu/winograd_avx512.cpp with its 16 GEMMs on the tiles of csrc/cpu/amx_tiles.h).

Every test runs the kernel through the tiles' software model (``kernel="amx_model"``: the same
tile configuration, instruction sequence, addresses and strides, each instruction computed as the
Intel SDM defines it), so its logic is checked on CPUs without AMX too; where this process can
run AMX (``conv1x1.amx_status()``), the numerics tests also run the hardware. Covered:

* numerics against the float32 reference composition with the per-op bound, random data and
  non-trivial BatchNorm: tile counts that leave a short last group of 32 tiles, one group and
  several, C_in from one 32-channel step to 16, C_out from one 32-column block to 16; both of
  the pipeline's paths (blocks of tiles kept in cache, and each step over all tiles for filters
  above 4 MiB), with and without residual and ReLU;
* agreement with the pipeline's own AVX512_BF16 GEMM, the same bits for every thread count, NaN
  kept through ReLU, the input never written;
* refusals that name the argument: fp32, C_in or C_out not a multiple of 32, an unknown kernel,
  ``amx`` where the CPU cannot run it (with the reason); ``opcheck`` with the kernel argument;
* the CPU fast path: a bf16 3x3 conv offers ``winograd_amx`` as a measured candidate (never by
  rule), and when it is measured fastest the fused conv runs it, within the bound.
"""

from __future__ import annotations

import pytest
import torch
from amx_choice import rig_amx_fastest
from test_cpu_winograd import make_args, pipeline_case_id, reference

from resnet_fused import tuning
from resnet_fused.cpu import conv1x1, winograd
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.testing import assert_within_bound, random_bn_params

CL = torch.channels_last
BF16 = torch.bfloat16
OP = torch.ops.resnet_fused.winograd_conv3x3.default
HARDWARE = conv1x1.amx_status() == "available"
KERNELS = ["amx_model", pytest.param("amx", marks=pytest.mark.skipif(
    not HARDWARE, reason=f"AMX {conv1x1.amx_status()}"))]
# The AMX GEMM runs inside the AVX512_BF16 pipeline (its transforms); every CPU family here has it.
pytestmark = pytest.mark.skipif(
    not winograd.pipelines_available(), reason="this CPU lacks AVX512_BF16, the pipeline's ISA")


def bf16_case(generator, n, c, k, h, w, residual):
    """test_cpu_winograd's random case in bf16 (input channels_last) and the pair-packed filter."""
    x, weight, scale, shift, res = make_args(generator, n, c, k, h, w, BF16, residual)
    u = winograd.pack_filter(winograd.transform_filter(weight, scale, BF16))
    return x.contiguous(memory_format=CL), weight, scale, shift, res, u


# (n, c, k, h, w): F(2,3) tiles = n * ceil(h/2) * ceil(w/2): 1 tile; 9 (one short group); 32
# (one whole group); 45 and 84 (whole groups and a short one); C_in 32..512, C_out 32..512. The
# last case's filter (16 x 512 x 512 bf16, 8 MiB) is above the 4 MiB blocked-path limit: its
# steps each run over all tiles, in 64-column tasks.
CASES = [
    (1, 32, 32, 1, 1),
    (1, 64, 96, 5, 6),
    (2, 32, 64, 8, 8),
    (1, 96, 32, 9, 19),
    (3, 128, 160, 7, 13),
    (1, 512, 512, 3, 5),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("case", CASES, ids=pipeline_case_id)
def test_matches_reference(case, residual, relu, kernel, generator):
    x, weight, scale, shift, res, u = bf16_case(generator, *case, residual)
    ref = reference(x, weight, scale, shift, res, relu)
    x_before = x.clone()
    y = OP(x, u, shift, res, relu, kernel)
    assert y.shape == ref.shape and y.dtype == BF16 and y.is_contiguous(memory_format=CL)
    assert_within_bound(y, ref, BF16)
    assert torch.equal(x, x_before), "the input must not be written"


@pytest.mark.parametrize("kernel", KERNELS)
def test_agrees_with_the_pipelines_own_gemm(kernel, generator):
    """Both GEMMs add the same products in fp32 (in different orders where the AVX-512 one
    splits the sum): a few bf16 roundings apart at most."""
    x, _weight, _scale, shift, res, u = bf16_case(generator, 2, 128, 96, 11, 9, True)
    avx = OP(x, u, shift, res, True, "auto")
    amx = OP(x, u, shift, res, True, kernel)
    assert_within_bound(amx, avx.float(), BF16)
    assert (amx != avx).float().mean() < 0.05, "most elements round to the same bf16"


def test_same_bits_for_any_thread_count(generator):
    x, _weight, _scale, shift, res, u = bf16_case(generator, 2, 64, 64, 13, 12, True)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3, 5):
            torch.set_num_threads(count)
            results.append(OP(x, u, shift, res, True, "amx_model"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results[1:])


def test_nan_propagates_through_relu(generator):
    x, _weight, _scale, shift, res, u = bf16_case(generator, 1, 32, 32, 8, 8, True)
    x[0, :, 2, 4] = float("nan")  # the tiles whose patches hold pixel (2, 4)
    res[0, 3, 7, 7] = float("nan")
    y = OP(x, u, shift, res, True, "amx_model")
    auto = OP(x, u, shift, res, True, "auto")
    assert y[0, :, 2, 4].isnan().all() and y[0, 3, 7, 7].isnan()
    assert torch.equal(y.isnan(), auto.isnan()), "NaN where the pipeline's own GEMM has it"


@pytest.mark.parametrize(("change", "match"), [
    ("float32", r"kernel \"amx_model\" needs bfloat16 input"),
    ("c_in_48", r"needs C_in and C_out multiples of 32 .*got C_in = 48, C_out = 32"),
    ("c_out_48", r"needs C_in and C_out multiples of 32 .*got C_in = 32, C_out = 48"),
    ("unknown", r"kernel must be \"auto\", \"amx\" or \"amx_model\", got \"tiles\""),
], ids=["float32", "c_in_48", "c_out_48", "unknown"])
def test_refusals_name_the_argument(change, match, generator):
    c = 48 if change == "c_in_48" else 32
    k = 48 if change == "c_out_48" else 32
    x, weight, scale, shift, res, u = bf16_case(generator, 1, c, k, 4, 4, True)
    kernel = "tiles" if change == "unknown" else "amx_model"
    if change == "float32":
        x, res = x.float(), res.float()
        u = winograd.transform_filter(weight.float(), scale, torch.float32)
    with pytest.raises(RuntimeError, match=match):
        OP(x, u, shift, res, True, kernel)


@pytest.mark.skipif(HARDWARE, reason="this process runs AMX")
def test_hardware_kernel_refused_with_the_reason(generator):
    x, _weight, _scale, shift, _res, u = bf16_case(generator, 1, 32, 32, 4, 4, False)
    why = conv1x1.amx_status().removeprefix("absent: ")
    with pytest.raises(RuntimeError, match=r"kernel \"amx\" cannot run here: " + why):
        OP(x, u, shift, None, True, "amx")


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_opcheck(residual, generator):
    x, _weight, _scale, shift, res, u = bf16_case(generator, 2, 64, 32, 5, 7, residual)
    torch.library.opcheck(OP, (x, u, shift, res, True, "amx_model"))


def test_opcheck_requires_grad(generator):
    """The op's backward (the filter's transform differentiated, whatever kernel ran the forward)
    with every differentiable argument requiring grad."""
    x, _weight, _scale, shift, res, u = bf16_case(generator, 1, 32, 32, 4, 5, True)
    torch.library.opcheck(OP, (x.requires_grad_(), u.requires_grad_(), shift.requires_grad_(),
                               res.requires_grad_(), True, "amx_model"))


# --- the CPU fast path ---------------------------------------------------------------------------


@pytest.fixture
def amx_measured_fastest(tmp_path, monkeypatch):
    """Winograd's AMX GEMM offered and measured fastest (tests/amx_choice.py). Yields the
    kernels the Winograd op was called with."""
    monkeypatch.delenv("RESNET_FUSED_WINOGRAD", raising=False)
    kernels = rig_amx_fastest(monkeypatch, tmp_path / "cache", ("_WINOGRAD",))
    tuning.clear()
    yield kernels
    tuning.clear()


def _conv(generator, c, k, dtype=BF16) -> FusedConvBNAct:
    weight = torch.randn(k, c, 3, 3, generator=generator) * (2.0 / (9 * c)) ** 0.5
    scale, shift = random_bn_params(k, generator)
    return FusedConvBNAct(weight.to(dtype), scale, shift, (1, 1), (1, 1), True, backend="cpu")


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_fast_path_runs_the_amx_gemm_where_measured_fastest(residual, amx_measured_fastest,
                                                            generator, no_raw_op):
    conv = _conv(generator, 64, 32)
    x = torch.randn(2, 64, 14, 14, generator=generator).to(BF16)
    res = (torch.randn(2, 32, 14, 14, generator=generator).to(BF16).contiguous(memory_format=CL)
           if residual else None)
    ref = reference(x, conv.weight, conv.scale, conv.shift, res, True)
    with torch.inference_mode():
        y = conv(x, res)  # measures, then runs the choice
        amx_measured_fastest.clear()
        again = conv(x, res)
    (choice,) = conv._onednn.choices.values()
    assert choice.algorithm == "winograd_amx", choice
    assert set(choice.candidates) == {"winograd", "winograd_amx", "onednn"}
    assert amx_measured_fastest == ["amx_model"], "the next call ran the AMX GEMM"
    assert conv._onednn.algorithms == {(2, 14, 14): "winograd"}
    assert torch.equal(y, again)
    assert_within_bound(y, ref, BF16)


def test_rules_never_pick_the_amx_gemm(generator, monkeypatch, no_raw_op):
    """Chosen by rule (as on the CPUs the rules were measured on), the AMX candidate is offered
    but never taken: it runs only where it was measured fastest."""
    monkeypatch.setenv("RESNET_FUSED_CPU_CHOICE", "rule")
    monkeypatch.setattr(conv1x1, "amx_status", lambda: "available")
    conv = _conv(generator, 64, 64)
    with torch.inference_mode():
        conv(torch.randn(4, 64, 28, 28, generator=generator).to(BF16))
    (choice,) = conv._onednn.choices.values()
    assert "winograd_amx" in choice.candidates and choice.algorithm == "winograd", choice


def test_no_amx_candidate_where_the_gemm_cannot_take_the_conv(amx_measured_fastest, generator):
    """C_in or C_out of 48 (not multiples of 32), and fp32 convs: no Winograd AMX candidate."""
    for c, k, dtype in ((48, 32, BF16), (32, 48, BF16), (64, 64, torch.float32)):
        conv = _conv(generator, c, k, dtype)
        with torch.inference_mode():
            conv(torch.randn(1, c, 12, 12, generator=generator).to(dtype))
        (choice,) = conv._onednn.choices.values()
        assert "winograd_amx" not in choice.candidates, (c, k, dtype, choice)
