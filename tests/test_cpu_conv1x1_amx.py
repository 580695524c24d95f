"""The 1x1 convolution's AMX kernel: ``resnet_fused::conv1x1`` / ``conv1x1_residual_`` with
``kernel="amx"`` (csrc/cpu/conv1x1_amx.cpp on csrc/cpu/amx_tiles.h).

Every test runs the kernel through the tiles' software model (``kernel="amx_model"``: the same
tile configuration, instruction sequence, addresses and strides, each instruction computed as the
Intel SDM defines it), so the kernel's logic is checked on CPUs without AMX too; where this
process can run AMX (``conv1x1.amx_status()``), the numerics tests also run the hardware. Covered:

* numerics against the float32 reference composition with the per-op bound, random data and
  non-trivial BatchNorm: pixel counts that are not multiples of the 32-row block, C_out leaving a
  partial 64-channel panel or a partial 32-channel half, strides that skip rows and columns,
  inputs large enough to be cut into several row blocks, with and without residual and ReLU;
* the same bits for every thread count, NaN kept through ReLU, the input never written;
* refusals that name the argument: fp32, C_in not a multiple of 32, an unknown kernel, ``amx``
  where the CPU cannot run it (with the reason); ``amx_status`` agrees with the CPU's flags;
* ``opcheck`` of both ops with the kernel argument;
* the CPU fast path: a bf16 1x1 conv offers ``conv1x1_amx`` as a measured candidate, and when it
  is measured fastest the fused conv runs it, in place on a scratch residual, within the bound.
"""

from __future__ import annotations

import pytest
import torch
from amx_choice import rig_amx_fastest
from test_cpu_conv1x1 import case_id, reference
from test_cpu_conv1x1 import make_args as conv1x1_case

from resnet_fused import tuning
from resnet_fused.cpu import conv1x1
from resnet_fused.cpu.capability import cpu_capability
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.testing import assert_within_bound, random_bn_params

CL = torch.channels_last
BF16 = torch.bfloat16
OP = torch.ops.resnet_fused.conv1x1.default
OP_ = torch.ops.resnet_fused.conv1x1_residual_.default
HARDWARE = conv1x1.amx_status() == "available"
KERNELS = ["amx_model", pytest.param("amx", marks=pytest.mark.skipif(
    not HARDWARE, reason=f"AMX {conv1x1.amx_status()}"))]
# The model's epilogue is the AVX-512 kernel's (AVX512_BF16); every CPU family here has it.
pytestmark = pytest.mark.skipif(
    not conv1x1.available(BF16), reason="this CPU lacks AVX512_BF16, which the epilogue needs")


def make_args(generator, n, c, k, h, w, stride):
    """test_cpu_conv1x1's random case in bf16 (input channels_last), and the packed weight."""
    x, weight, scale, shift, res = conv1x1_case(generator, n, c, k, h, w, stride, BF16)
    return (x.contiguous(memory_format=CL), weight, scale, shift, res,
            conv1x1.pack_weight(weight, scale, BF16))


# (n, c, k, h, w, stride): 1 pixel to several 32-row groups and row blocks (bf16 inputs above
# 512 KiB are cut into blocks: 2 x 256 x 24 x 24 is 590 KB), C_out of 16 (one half of a half), 48
# (a full and a partial half), 80 (a panel and a partial one), 208; strides skipping rows and
# columns (gathered A rows); C_in from one 32-channel step to 16 steps.
CASES = [
    (1, 32, 16, 1, 1, (1, 1)),
    (1, 64, 48, 5, 7, (1, 1)),
    (2, 96, 80, 8, 4, (1, 1)),
    (1, 64, 256, 7, 7, (1, 1)),
    (3, 32, 80, 9, 11, (2, 2)),
    (1, 128, 208, 13, 10, (1, 2)),
    (2, 256, 64, 24, 24, (1, 1)),
    (1, 512, 128, 14, 14, (2, 2)),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, residual, relu, kernel, generator):
    n, c, k, h, w, stride = case
    x, weight, scale, shift, res, packed = make_args(generator, n, c, k, h, w, stride)
    ref = reference(x, weight, scale, shift, res if residual else None, stride, relu)
    x_before = x.clone()
    if residual:
        y = res
        assert OP_(res, x, packed, shift, list(stride), relu, kernel) is None
    else:
        y = OP(x, packed, shift, list(stride), relu, kernel)
    assert y.shape == ref.shape and y.dtype == BF16 and y.is_contiguous(memory_format=CL)
    assert_within_bound(y, ref, BF16)
    assert torch.equal(x, x_before), "the input must not be written"


@pytest.mark.parametrize("kernel", KERNELS)
def test_agrees_with_the_avx512_kernel(kernel, generator):
    """Both kernels add the same products in fp32, in different orders: they differ by a few
    bf16 roundings at most, nowhere by more than the per-op bound allows."""
    x, _weight, _scale, shift, _res, packed = make_args(generator, 2, 64, 96, 9, 10, (1, 1))
    avx = OP(x, packed, shift, [1, 1], True, "avx512")
    amx = OP(x, packed, shift, [1, 1], True, kernel)
    assert_within_bound(amx, avx.float(), BF16)
    assert (amx != avx).float().mean() < 0.05, "most elements round to the same bf16"


def test_same_bits_for_any_thread_count(generator):
    x, _weight, _scale, shift, res, packed = make_args(generator, 2, 64, 80, 20, 21, (1, 1))
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3, 5):
            torch.set_num_threads(count)
            summed = res.clone()
            OP_(summed, x, packed, shift, [1, 1], True, "amx_model")
            results.append((OP(x, packed, shift, [1, 1], False, "amx_model"), summed))
    finally:
        torch.set_num_threads(threads)
    for plain, summed in results[1:]:
        assert torch.equal(plain, results[0][0]) and torch.equal(summed, results[0][1])


@pytest.mark.parametrize("stride", [(1, 1), (2, 2)], ids=["s1", "s2"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_nan_propagates_through_relu(residual, stride, generator):
    x, _weight, _scale, shift, res, packed = make_args(generator, 1, 32, 32, 8, 10, stride)
    x[0, :, 2, 4] = float("nan")  # every output channel at output pixel (2, 4) / (1, 2)
    res[0, 3, 3, 4] = float("nan")  # one output value (summed only with a residual)
    if residual:
        OP_(res, x, packed, shift, list(stride), True, "amx_model")
        y = res
    else:
        y = OP(x, packed, shift, list(stride), True, "amx_model")
    nan = torch.zeros(y.shape, dtype=torch.bool)
    nan[0, :, 2 // stride[0], 4 // stride[1]] = True
    if residual:
        nan[0, 3, 3, 4] = True
    assert torch.equal(y.isnan(), nan), "ReLU must keep a NaN, not turn it into 0"


@pytest.mark.parametrize(("change", "match"), [
    ("float32", r"kernel \"amx_model\" needs bfloat16 input"),
    ("c_in_48", r"needs C_in a multiple of 32 \(one tile row\), got 48"),
    ("unknown", r"kernel must be \"avx512\", \"amx\" or \"amx_model\", got \"tiles\""),
], ids=["float32", "c_in_48", "unknown"])
def test_refusals_name_the_argument(change, match, generator):
    c = 48 if change == "c_in_48" else 32
    x, weight, scale, shift, res, packed = make_args(generator, 1, c, 32, 4, 4, (1, 1))
    kernel = "tiles" if change == "unknown" else "amx_model"
    if change == "float32":
        x, res = x.float(), res.float()
        packed = conv1x1.pack_weight(weight.float(), scale, torch.float32)
    with pytest.raises(RuntimeError, match=match):
        OP(x, packed, shift, [1, 1], True, kernel)
    with pytest.raises(RuntimeError, match=match):
        OP_(res, x, packed, shift, [1, 1], True, kernel)


@pytest.mark.skipif(HARDWARE, reason="this process runs AMX")
def test_hardware_kernel_refused_with_the_reason(generator):
    x, _weight, _scale, shift, _res, packed = make_args(generator, 1, 32, 32, 4, 4, (1, 1))
    why = conv1x1.amx_status().removeprefix("absent: ")
    with pytest.raises(RuntimeError, match=r"kernel \"amx\" cannot run here: " + why):
        OP(x, packed, shift, [1, 1], True, "amx")


def test_status_agrees_with_the_cpu_flags():
    caps = cpu_capability()
    status = conv1x1.amx_status()
    if not (caps["amx_tile"] and caps["amx_bf16"]):
        assert status == "absent: this CPU has no AMX-TILE and AMX-BF16"
    else:  # the CPU has it: only the OS or the build may say no, and then why
        assert status == "available" or (status.startswith("absent: ") and "CPU" not in status)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_opcheck(residual, generator):
    x, _weight, _scale, shift, res, packed = make_args(generator, 2, 64, 32, 5, 7, (2, 1))
    if residual:
        torch.library.opcheck(OP_, (res, x, packed, shift, [2, 1], True, "amx_model"))
    else:
        torch.library.opcheck(OP, (x, packed, shift, [2, 1], True, "amx_model"))


def test_opcheck_requires_grad(generator):
    """The plain op's backward (the unpacked weight's convolution) holds whatever kernel ran the
    forward; the in-place op refuses arguments that require grad (tests/test_autograd.py)."""
    x, _weight, _scale, shift, _res, packed = make_args(generator, 2, 64, 32, 5, 7, (2, 1))
    torch.library.opcheck(OP, (x.requires_grad_(), packed.requires_grad_(), shift, [2, 1], True,
                               "amx_model"))


# --- the CPU fast path ---------------------------------------------------------------------------


@pytest.fixture
def amx_measured_fastest(tmp_path, monkeypatch):
    """The AMX 1x1 kernel offered and measured fastest (tests/amx_choice.py). Yields the kernels
    the 1x1 ops were called with."""
    monkeypatch.delenv("RESNET_FUSED_CONV1X1", raising=False)
    kernels = rig_amx_fastest(monkeypatch, tmp_path / "cache", ("_CONV1X1", "_CONV1X1_"))
    tuning.clear()
    yield kernels
    tuning.clear()


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_fast_path_runs_the_amx_kernel_where_measured_fastest(residual, amx_measured_fastest,
                                                              generator, no_raw_op):
    weight = torch.randn(64, 96, 1, 1, generator=generator) * (2.0 / 96) ** 0.5
    scale, shift = random_bn_params(64, generator)
    conv = FusedConvBNAct(weight.to(BF16), scale, shift, (1, 1), (0, 0), True, backend="cpu")
    x = torch.randn(2, 96, 7, 9, generator=generator).to(BF16)
    res = (torch.randn(2, 64, 7, 9, generator=generator).to(BF16).contiguous(memory_format=CL)
           if residual else None)
    ref = reference(x, conv.weight, conv.scale, conv.shift, res, (1, 1), True)
    with torch.inference_mode():
        y = conv(x, res, residual_is_scratch=residual)
    (choice,) = conv._onednn.choices.values()
    assert choice.algorithm == "conv1x1_amx", choice
    assert set(choice.candidates) == {"conv1x1", "conv1x1_amx", "onednn"}
    assert amx_measured_fastest == ["amx_model"], "the model's call ran the AMX kernel"
    if residual:
        assert y.data_ptr() == res.data_ptr(), "the scratch residual holds the result"
    assert_within_bound(y, ref, BF16)


def test_no_amx_candidate_where_the_kernel_cannot_take_the_conv(amx_measured_fastest, generator):
    """C_in of 48 (not a multiple of a tile row's 32 channels) and fp32 convs: no AMX candidate."""
    for c, dtype in ((48, BF16), (64, torch.float32)):
        weight = torch.randn(32, c, 1, 1, generator=generator)
        scale, shift = random_bn_params(32, generator)
        conv = FusedConvBNAct(weight.to(dtype), scale, shift, (1, 1), (0, 0), True,
                              backend="cpu")
        with torch.inference_mode():
            conv(torch.randn(1, c, 5, 5, generator=generator).to(dtype))
        (choice,) = conv._onednn.choices.values()
        assert "conv1x1_amx" not in choice.candidates and choice.algorithm != "conv1x1_amx"
