"""The GPU session's plan (benchmarks/gpu_plan.py): counted with Triton's binder, within budget.

The counting binds real (not interpreted) Triton kernels, so it runs in a child process: this
test process imported triton under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
sys.path.insert(0, "benchmarks")
import gpu_plan as plan
import torch
from resnet_fused.triton import configs

out = {"calls": {}}
for name, steps in plan.CALLS.items():
    env = plan.plan_env(name, dry_run=True)
    out["calls"][name] = {"steps": [[s.name, s.limit_s] for s in steps], "env": env}
out["budget"] = plan.CALL_BUDGET_S
out["background"] = list(plan.BACKGROUND_WARM)
out["sweep20"] = len(plan.sweep_bindings(20))
out["sweep60"] = len(plan.sweep_bindings(60))
out["sweep_nested"] = plan.sweep_bindings(60) >= plan.sweep_bindings(20)
x = torch.empty(8, 64, 56, 56).contiguous(memory_format=torch.channels_last)
w = torch.empty(64, 64, 3, 3).contiguous(memory_format=torch.channels_last)
off = plan.conv_bindings(x, w, None, (1, 1), (1, 1), True, autotune=False)
on = plan.conv_bindings(x, w, None, (1, 1), (1, 1), True, autotune=True)
family = configs.conv_family(8 * 56 * 56, 64, 64, 3, 3)
out["off"], out["on"] = len(off), len(on)
out["candidates"] = len(configs.conv_candidates(family, torch.float32))
out["archs"] = sorted({b.arch for b in on})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def counted():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_each_call_fits_its_budget(counted):
    for name, call in counted["calls"].items():
        budget = counted["budget"][name]
        assert budget <= 600 - 20  # a device command may run 10 minutes
        background = {"warm-triton"} if name in counted["background"] else set()
        foreground = sum(t for s, t in call["steps"] if s not in {"build", *background})
        assert foreground <= budget, (name, foreground)
        assert call["env"]["BUDGET_S"] == str(budget)
        assert call["env"]["STEPS"].split() == [s for s, _ in call["steps"]]
        for step, limit in call["steps"]:
            assert call["env"][f"T_{step.upper().replace('-', '_')}"] == str(limit)


def test_sweep_compiles_are_counted_and_grow_with_cases(counted):
    # Autotuning off: at most one compile per case; equal bindings are one compile.
    assert 0 < counted["sweep20"] <= counted["sweep60"] <= 60
    assert counted["sweep_nested"]


def test_autotuning_compiles_every_candidate(counted):
    assert counted["off"] == 1
    assert counted["on"] == counted["candidates"] > 1
    assert counted["archs"] == [90]


def test_the_first_call_fits_a_15_minute_session(counted):
    """A session has 15 minutes of device time in all: the machine's start (a minute or two), the
    call, and room to rerun a short one. The first call is ordered by value: the checks, then
    the whole-model side by side."""
    first = counted["calls"]["first"]
    assert counted["budget"]["first"] <= 9 * 60
    steps = [s for s, _ in first["steps"]]
    assert steps[:2] == ["info", "build"]
    assert steps.index("tests-cuda") < steps.index("bench-model")
    assert steps.index("sanitizer") < steps.index("bench-model")
    assert steps[-1] == "bench-model"
