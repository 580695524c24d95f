"""Shared pytest setup.

On a machine without a GPU the Triton kernels can only run under the interpreter, and
TRITON_INTERPRET must be set before triton is first imported: do it here, before any test module
imports resnet_fused.triton. On a GPU machine the real compiler is used.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The CPU fast path's algorithms by the fixed rules on every CPU (``auto`` measures on CPUs the
# rules were not measured on, e.g. AMX Xeons): tests that check which algorithm a shape gets, and
# bit-identical reruns, need the choice fixed. tests/test_cpu_algorithms.py tests the measured
# choice itself, on every CPU.
os.environ.setdefault("RESNET_FUSED_CPU_CHOICE", "rule")


def pytest_configure(config):
    # The GPU session cuts its pytest steps with SIGINT (pytest then writes its summary); a run
    # started with SIGINT ignored (a background job) would not stop. Also gives the subprocesses
    # the tests start (the CLI) Python's own SIGINT handling.
    from resnet_fused.signals import honor_sigint

    honor_sigint()


@pytest.fixture
def generator():
    """A fresh, seeded generator per test: random data, reproducible failures."""
    return torch.Generator().manual_seed(20261122)


def _interpreter_broken_reason() -> str | None:
    """Triton < 3.7's interpreter turns 1-element arrays into ints, which NumPy >= 2.4 refuses
    ("only 0-dimensional arrays can be converted to Python scalars") at every runtime loop bound."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return None
    try:
        import numpy
        import triton
    except ImportError:
        return None

    def version(v):
        return tuple(int(p) for p in v.split(".")[:2] if p.isdigit())

    if version(triton.__version__) < (3, 7) and version(numpy.__version__) >= (2, 4):
        return (f"triton {triton.__version__}'s interpreter cannot run with numpy "
                f"{numpy.__version__}: install 'numpy<2.4' (CI job 2 does)")
    return None


def pytest_collection_modifyitems(config, items):
    why = _interpreter_broken_reason()
    if why is None:
        return
    for item in items:
        if item.get_closest_marker("interpreter"):
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="module")
def random_models():
    """``random_models(name)``: that ResNet of the package (10 classes) with random weights, random
    non-trivial BatchNorm statistics and a random classifier bias, in eval mode; built once per
    test module, so tests must not modify it."""
    from resnet_fused import models
    from resnet_fused.testing import randomize_batchnorm_

    generator = torch.Generator().manual_seed(1313)
    cache = {}

    def get(name):
        if name not in cache:
            model = getattr(models, name)(num_classes=10)
            randomize_batchnorm_(model, generator)
            with torch.no_grad():
                model.fc.bias.copy_(torch.randn(10, generator=generator))
            cache[name] = model.eval()
        return cache[name]

    return get


@pytest.fixture
def no_raw_op(monkeypatch):
    """Makes any call of the raw op ``resnet_fused.ops.conv_bn_act`` fail: proves that a fused
    module's result came from the CPU fast path (oneDNN or Winograd), not the fallback."""
    from resnet_fused import ops

    def refuse(*args, **kwargs):
        raise AssertionError("the raw op ran where the CPU fast path was expected")

    monkeypatch.setattr(ops, "conv_bn_act", refuse)
