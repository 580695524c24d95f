"""The randomized sweep (``python -m resnet_fused sweep``): repeatable, covering, can fail."""

import argparse
import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from resnet_fused import sweep


def test_cases_are_repeatable_and_cover_the_space():
    a = sweep.draw_cases(300, seed=7, dtypes=["float32", "bfloat16"])
    assert a == sweep.draw_cases(300, seed=7, dtypes=["float32", "bfloat16"])
    assert a != sweep.draw_cases(300, seed=8, dtypes=["float32", "bfloat16"])
    assert {c.r for c in a} >= {1, 3, 7}
    assert {c.stride for c in a} >= {(1, 1), (2, 2)}
    assert any(c.c == 3 for c in a) and any(c.c % 8 for c in a) and any(c.k % 8 for c in a)
    assert any(c.n == 0 for c in a) and max(c.n for c in a) > 32
    assert any(c.h % 2 for c in a) and any(c.residual for c in a) and any(not c.relu for c in a)
    assert any(c.channels_last for c in a) and any(not c.channels_last for c in a)


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_sweep_passes_on_cpu_backends(backend):
    cases = sweep.draw_cases(40, seed=11, dtypes=["float32", "bfloat16"])
    results = [sweep.run_case(c, backend, torch.device("cpu"), seed=11) for c in cases]
    bad = [r for r in results if not r["ok"]]
    assert not bad, bad[:3]


def test_sweep_catches_a_wrong_backend(monkeypatch):
    real = sweep.ops.conv_bn_act

    def off_by_a_bit(*args, **kwargs):
        y = real(*args, **kwargs)
        return y + 1e-3 * y.abs().max() if y.numel() else y

    monkeypatch.setattr(sweep.ops, "conv_bn_act", off_by_a_bit)
    case = next(c for c in sweep.draw_cases(50, seed=3, dtypes=["float32"]) if c.n > 0)
    result = sweep.run_case(case, "cpu", torch.device("cpu"), seed=3)
    assert not result["ok"] and result["error"] > result["bound"]


def test_cli_reports_failures_in_exit_code(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sweep.ops, "conv_bn_act", lambda *a, **k: torch.full((1,), math.nan))
    args = argparse.Namespace(backends=["cpu"], cases=3, seed=0, dtypes=["float32"],
                              device="cpu", json=str(tmp_path / "sweep.json"))
    assert sweep.run(args) == 1
    assert "0 passed, 3 failed" in capsys.readouterr().out
    assert (tmp_path / "sweep.json").stat().st_size > 0


def test_interrupt_prints_the_finished_cases_and_keeps_them(monkeypatch, tmp_path, capsys):
    real = sweep.check
    calls = []

    def stop_at_third(case, backend, prepared, device):
        calls.append(case.index)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what SIGINT from a step's timeout raises
        return real(case, backend, prepared, device)

    monkeypatch.setattr(sweep, "check", stop_at_third)
    out = tmp_path / "sweep.jsonl"
    args = argparse.Namespace(backends=["cpu"], cases=10, seed=0, dtypes=["float32"],
                              device="cpu", json=str(out))
    assert sweep.run(args) == sweep.EXIT_INTERRUPTED
    captured = capsys.readouterr()
    assert "2 passed, 0 failed" in captured.out and "interrupted after 2 of 10" in captured.err
    lines = out.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == calls[:2]


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_real_sigint_mid_run_still_prints_a_table(tmp_path, inherited):
    """The sweep as the GPU script runs it: a real SIGINT (timeout -s INT) mid-run. "ignored":
    the process starts with SIGINT ignored, as a background job of a script (`cmd &`) does."""
    out = tmp_path / "sweep.jsonl"

    def ignore_sigint():  # runs in the child before exec; SIG_IGN survives the exec
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "-m", "resnet_fused", "sweep", "--backends", "cpu", "--cases", "2000",
         "--dtypes", "float32", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ignore_sigint if inherited == "ignored" else None)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists()
                                               or not out.read_text().count("\n")):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave a 2000-case sweep running behind a failed test
    assert proc.returncode == sweep.EXIT_INTERRUPTED, stderr
    finished = len(out.read_text().splitlines())
    assert 1 <= finished < 2000
    assert f"{finished} passed, 0 failed" in stdout


def test_unavailable_backend_is_said_once_with_its_own_status(capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine where the cuda backend cannot run")
    args = argparse.Namespace(backends=["cuda", "cpu"], cases=5, seed=0, dtypes=None,
                              device="cpu", json=None)
    assert sweep.run(args) == sweep.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.count("cannot run on cpu") == 1 and "'cuda'" in err
