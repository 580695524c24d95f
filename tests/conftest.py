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


@pytest.fixture
def generator():
    """A fresh, seeded generator per test: random data, reproducible failures."""
    return torch.Generator().manual_seed(20261122)
