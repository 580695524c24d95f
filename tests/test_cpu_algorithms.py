"""The CPU fast path's choice of algorithm per conv and shape (resnet_fused.cpu.algorithms):
measured choices are verified, timed, cached on disk, and read back the same by every process;
a wrong candidate is never chosen; ``auto`` measures wherever the rules were not measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import resnet_fused
from resnet_fused import tuning
from resnet_fused.cpu import algorithms
from resnet_fused.cpu.capability import fast_dtypes
from resnet_fused.cpu.onednn import OneDNNConv
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.testing import randomize_batchnorm_, relative_error, tolerance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    torch.bfloat16 not in fast_dtypes(), reason="oneDNN has no bf16 convolutions on this CPU"))]


@pytest.fixture
def measured(tmp_path, monkeypatch):
    """Measured choices, a fresh disk cache in tmp_path and an empty in-process memo."""
    monkeypatch.setenv("RESNET_FUSED_CPU_CHOICE", "measure")
    monkeypatch.setenv("RESNET_FUSED_CACHE_DIR", str(tmp_path / "cache"))
    tuning.clear()
    yield tmp_path / "cache" / "tuning.json"
    tuning.clear()


def _model(generator, dtype):
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
    return model, resnet_fused.fuse(model, backend="cpu", dtype=dtype)


def _choices(fused) -> dict:
    return {(name, key): choice for name, m in fused.named_modules()
            if isinstance(m, FusedConvBNAct) and m._onednn is not None
            for key, choice in m._onednn.choices.items()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_measured_choices_are_verified_timed_cached_and_exact(measured, generator, dtype):
    model, fused = _model(generator, dtype)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.inference_mode():
        out = fused(x)
        ref = model.double()(x.double())
    assert relative_error(out, ref) <= tolerance(dtype, "model")
    choices = _choices(fused)
    assert len(choices) == 20  # every conv of resnet18, one input shape each
    several = [c for c in choices.values() if c.why.startswith("measured on this CPU:")]
    assert several, "no conv had two candidates to time"
    for choice in several:  # "measured on this CPU: winograd 0.101 ms, onednn 0.212 ms"
        ranked = choice.why.split(": ", 1)[1].split(", ")
        assert ranked[0].startswith(choice.algorithm + " ") and len(ranked) >= 2
    only = [c for c in choices.values() if c.algorithm == "onednn" and "only" in c.why]
    # A shape measured once is read back from the memo/cache by every later conv of that shape.
    again = [c for c in choices.values() if c.why.startswith("measured on this CPU earlier")]
    assert len(only) + len(several) + len(again) == len(choices)
    cache = json.loads(measured.read_text())
    keys = [k for k in cache if k.startswith("cpu.conv|")]
    assert keys and {c.algorithm for c in several} <= {cache[k] for k in keys}
    cpu = algorithms._cpu_fingerprint()
    assert all(cpu in k and torch.__version__ in k for k in keys)
    assert set(cache[k] for k in keys) <= set(algorithms.CANDIDATES)


_SECOND_PROCESS = """
import sys, torch, resnet_fused
from resnet_fused.testing import randomize_batchnorm_
from resnet_fused.fused import FusedConvBNAct
torch.manual_seed(int(sys.argv[1]))  # the conv weights' initialisation
generator = torch.Generator().manual_seed(int(sys.argv[1]))
model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator).eval()
fused = resnet_fused.fuse(model, backend="cpu", dtype=getattr(torch, sys.argv[2]))
with torch.inference_mode():
    out = fused(torch.randn(2, 3, 64, 64, generator=generator))
whys = [c.why for m in fused.modules() if isinstance(m, FusedConvBNAct) and m._onednn
        for c in m._onednn.choices.values()]
torch.save({"out": out, "whys": whys}, sys.argv[3])
"""


def test_every_process_that_reads_the_cache_computes_the_same_bits(measured, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    results = []
    for run in range(2):  # the first process measures and stores, the second reads the cache
        path = tmp_path / f"run{run}.pt"
        subprocess.run([sys.executable, "-c", _SECOND_PROCESS, "7", "float32", str(path)],
                       env=env, cwd=REPO, check=True, timeout=600)
        results.append(torch.load(path))
    first, second = results
    assert any(w.startswith("measured on this CPU:") for w in first["whys"])
    assert not any(w.startswith("measured on this CPU:") for w in second["whys"])
    assert sum(w.startswith("measured on this CPU earlier") for w in second["whys"]) == sum(
        w.startswith("measured") for w in first["whys"])
    assert torch.equal(first["out"], second["out"])


def test_a_wrong_candidate_is_never_chosen(measured, generator, monkeypatch):
    real = OneDNNConv._compute

    def conv1x1_off_by_one_tile(self, algorithm, x, residual, relu, in_place=False, entry=None):
        out = real(self, algorithm, x, residual, relu, in_place, entry)
        if algorithm == "conv1x1":
            out = out.clone()
            out[:, :16, :2, :2] += 1.0  # one corrupted tile, a sliver of the output
        return out

    monkeypatch.setattr(OneDNNConv, "_compute", conv1x1_off_by_one_tile)
    _, fused = _model(generator, torch.float32)
    with pytest.warns(UserWarning, match="candidate conv1x1 failed verification"):
        with torch.inference_mode():
            fused(torch.randn(1, 3, 64, 64, generator=generator))
    ones = [c for (name, _), c in _choices(fused).items() if name.endswith("skip")]
    assert ones and all(c.algorithm == "onednn" for c in ones)
    assert any(r.namespace == "cpu.conv" and r.candidate == "conv1x1" and "error" in r.reason
               for r in tuning.REJECTED)


def test_auto_measures_where_the_rules_were_not_measured(monkeypatch):
    monkeypatch.setenv("RESNET_FUSED_CPU_CHOICE", "auto")
    base = {"avx512_f": True, "avx512_bw": True, "avx512_vl": True, "amx_tile": False}
    for caps, expected in ((base, "rule"), ({**base, "amx_tile": True}, "measure"),
                           ({**base, "avx512_f": False}, "measure")):
        monkeypatch.setattr(algorithms, "cpu_capability", lambda caps=caps: caps)
        assert algorithms.mode() == expected
    for forced in ("rule", "measure"):
        monkeypatch.setenv("RESNET_FUSED_CPU_CHOICE", forced)
        assert algorithms.mode() == forced
    monkeypatch.setenv("RESNET_FUSED_CPU_CHOICE", "fastest")
    with pytest.raises(ValueError, match="RESNET_FUSED_CPU_CHOICE"):
        algorithms.mode()


def test_the_kernel_switches_still_apply_when_measuring(measured, generator, monkeypatch):
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "never")
    monkeypatch.setenv("RESNET_FUSED_CONV1X1", "never")
    _, fused = _model(generator, torch.float32)
    with torch.inference_mode():
        fused(torch.randn(1, 3, 64, 64, generator=generator))
    assert {c.algorithm for c in _choices(fused).values()} == {"onednn"}
    monkeypatch.setenv("RESNET_FUSED_WINOGRAD", "always")
    _, fused = _model(generator, torch.float32)
    with torch.inference_mode():
        fused(torch.randn(1, 3, 64, 64, generator=generator))
    forced = [c for c in _choices(fused).values() if c.why == "RESNET_FUSED_WINOGRAD=always"]
    assert forced and all(c.algorithm == "winograd" for c in forced)


def test_info_lists_what_each_conv_runs_and_why():
    result = subprocess.run([sys.executable, "-m", "resnet_fused", "info", "--convs", "--model",
                             "resnet18", "--size", "64"], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("convs of resnet18, input (1, 3, 64, 64)")[1].splitlines()[1:]
    assert len(lines) == 20
    assert all(any(f"  {a}  " in line for a in algorithms.CANDIDATES) for line in lines)
    assert "stem" in lines[0] and "7x7/2 3->64" in lines[0]
