"""``resnet_fused.poison``: the switch that makes the GPU ops NaN-fill their outputs for checks.

The GPU tier relies on it to see unwritten elements (tests/test_cuda.py, test_triton.py, the
sweep and the tuner's verification); here, on any machine: the switch and its restoring, and the
Triton ops under the interpreter, which fill and then overwrite every element.
"""

from __future__ import annotations

import pytest
import torch

import resnet_fused  # noqa: F401  (loads the ops)
from resnet_fused import poison
from resnet_fused.testing import random_bn_params, try_import


def test_switch_sets_and_restores():
    assert not poison.enabled()
    assert torch.ops.resnet_fused._poison_outputs(False) is False
    with poison.poisoned_outputs():
        assert poison.enabled()
        assert torch.ops.resnet_fused._poison_outputs(True) is True  # the C++ side is on too
        with poison.poisoned_outputs():
            assert poison.enabled()
        assert poison.enabled()  # the inner block restores, not clears
    assert not poison.enabled()
    assert torch.ops.resnet_fused._poison_outputs(False) is False
    with pytest.raises(ValueError), poison.poisoned_outputs():
        raise ValueError("a failing check")
    assert not poison.enabled() and torch.ops.resnet_fused._poison_outputs(False) is False


def _interpreted() -> bool:
    module, _ = try_import("resnet_fused.triton.conv_bn_act")
    if module is None or torch.cuda.is_available():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(module._conv_bn_act_kernel, InterpretedFunction)


@pytest.mark.interpreter
@pytest.mark.skipif(not _interpreted(), reason="needs Triton's interpreter (no GPU here)")
def test_triton_ops_write_every_element_of_a_poisoned_output(generator):
    x = torch.randn(2, 8, 7, 6, generator=generator).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, generator=generator) / 8
    scale, shift = random_bn_params(16, generator)
    plain = torch.ops.resnet_fused.triton_conv_bn_act(x, w, scale, shift, None, [1, 1], [1, 1],
                                                       True)
    with poison.poisoned_outputs():
        y = torch.ops.resnet_fused.triton_conv_bn_act(x, w, scale, shift, None, [1, 1], [1, 1],
                                                      True)
        z = torch.ops.resnet_fused.triton_add_relu(y, y)
    assert torch.isfinite(y).all() and torch.equal(y, plain)
    assert torch.equal(z, torch.relu(y + y))
