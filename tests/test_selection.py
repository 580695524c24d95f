"""Per-shape implementation choice on a GPU (resnet_fused.cuda.selection), driven on the CPU.

The CUDA implementations cannot run here, so the candidates' runners are replaced by CPU stand-ins
(one right, one wrong and fastest); the choice logic, the verification through
resnet_fused.tuning, the in-process memo and the tracing/capture defaults are the real ones.
"""

from __future__ import annotations

import pytest
import torch

from resnet_fused import tuning
from resnet_fused.cuda import selection
from resnet_fused.reference import conv_bn_act_reference
from resnet_fused.testing import random_bn_params


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNET_FUSED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(selection, "_MEMO", {})
    tuning.clear()
    yield
    tuning.clear()


def _call(generator):
    x = torch.randn(2, 8, 9, 9, generator=generator).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(16, 8, 3, 3, generator=generator) / 8).contiguous(
        memory_format=torch.channels_last)
    scale, shift = random_bn_params(16, generator)
    return x, w, scale, shift, None, [1, 1], [1, 1], True


@pytest.fixture
def stand_ins(monkeypatch):
    """Two 'CUDA implementations': mma_sync right, sm90 wrong (and reported fastest)."""
    ran = []

    def run(name, *args):
        ran.append(name)
        y = conv_bn_act_reference(*args)
        return y * 1.01 if name == "cuda:sm90_cutlass:x" else y

    monkeypatch.setattr(selection, "candidates",
                        lambda *a: ["cuda:mma_sync", "cuda:sm90_cutlass:x"])
    monkeypatch.setattr(selection, "run", run)
    monkeypatch.setattr(selection, "_build_fingerprint", lambda: "test")
    monkeypatch.setattr(tuning, "wall_timer", lambda fn: (fn(), 1e-6 if "sm90" in ran[-1]
                                                          else 1.0)[1])
    return ran


def test_a_wrong_implementation_is_never_selected(stand_ins, generator):
    args = _call(generator)
    with pytest.warns(UserWarning, match="cuda:sm90_cutlass:x failed verification"):
        chosen = selection.choose("cuda", *args)
    assert chosen == "cuda:mma_sync"
    assert [r.candidate for r in tuning.REJECTED] == ["cuda:sm90_cutlass:x"]
    # Memoized: the next call of the shape runs nothing to choose.
    n = len(stand_ins)
    assert selection.choose("cuda", *args) == "cuda:mma_sync" and len(stand_ins) == n


def test_the_fastest_verified_implementation_wins(stand_ins, monkeypatch, generator):
    def run(name, *args):
        stand_ins.append(name)
        return conv_bn_act_reference(*args)  # both right now

    monkeypatch.setattr(selection, "run", run)
    assert selection.choose("cuda", *_call(generator)) == "cuda:sm90_cutlass:x"
    assert not tuning.REJECTED


def test_no_measuring_while_tracing_or_for_symbolic_shapes(stand_ins, monkeypatch, generator):
    args = _call(generator)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(selection.backends, "_CUDA_KERNELS_BUILT", True)
    assert selection.choose("auto", *args) == selection.MMA_SYNC
    assert not stand_ins  # nothing ran
    monkeypatch.setattr(selection.backends, "_CUDA_KERNELS_BUILT", False)
    assert selection.choose("auto", *args) == selection.TRITON
