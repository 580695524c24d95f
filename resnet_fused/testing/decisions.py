"""Gradient references that take the fused model's side of every ReLU and max-pool edge.

Not imported by ``resnet_fused.testing`` itself: it needs the fused modules, and the GPU tuner,
which the fused modules reach, imports ``resnet_fused.testing`` for its bounds.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from ..fused import FusedConvBNAct


class FusedDecisions:
    """The discrete choices a fused model's forward made: each ReLU's mask (output > 0) in call
    order, and the max-pool's input (its argmax). See :func:`record_decisions`."""

    def __init__(self) -> None:
        self.masks: list[Tensor] = []
        self.pool_inputs: list[Tensor] = []


@contextlib.contextmanager
def record_decisions(fused: nn.Module) -> Iterator[FusedDecisions]:
    """Records :class:`FusedDecisions` of the fused model's forwards inside the block.

    A gradient through a ReLU jumps where its input crosses 0, and through a max-pool where two
    inputs swap: a value next to the edge lands on either side depending on the rounding, so
    even float32 gradients of a deep net can differ from float64's by far more than the forward
    does (eager PyTorch's too). :func:`replay_decisions` makes the reference take the fused
    model's side of every edge; the gradients left to compare are smooth functions."""
    decisions = FusedDecisions()

    def on_conv(module, args, kwargs, out):
        relu = kwargs.get("relu")
        if module.relu if relu is None else relu:
            decisions.masks.append(out.detach() > 0)

    hooks = [m.register_forward_hook(on_conv, with_kwargs=True) for m in fused.modules()
             if isinstance(m, FusedConvBNAct)]
    hooks.append(fused.maxpool.register_forward_hook(
        lambda module, args, out: decisions.pool_inputs.append(args[0].detach())))
    try:
        yield decisions
    finally:
        for h in hooks:
            h.remove()


class _Replay:
    """Recorded tensors handed out in order; knows whether all were used."""

    def __init__(self, tensors: list[Tensor]) -> None:
        self.tensors, self.used = tensors, 0

    def next(self, like: Tensor) -> Tensor:
        if self.used == len(self.tensors):
            raise AssertionError("the reference made more decisions than the fused model")
        t = self.tensors[self.used]
        self.used += 1
        if t.shape != like.shape:
            raise AssertionError(f"decision {self.used}: recorded {tuple(t.shape)}, the "
                                 f"reference is at {tuple(like.shape)} (calls out of order?)")
        return t


class _ReplayedReLU(nn.Module):
    def __init__(self, masks: _Replay) -> None:
        super().__init__()
        self.masks = masks

    def forward(self, x: Tensor) -> Tensor:
        return x * self.masks.next(x).to(x.dtype)


class _ReplayedMaxPool(nn.Module):
    def __init__(self, pool: nn.MaxPool2d, inputs: _Replay) -> None:
        super().__init__()
        self.pool = pool
        self.inputs = inputs

    def forward(self, x: Tensor) -> Tensor:
        p = self.pool
        _, index = F.max_pool2d(self.inputs.next(x).float(), p.kernel_size, p.stride,
                                p.padding, return_indices=True)
        return x.flatten(2).gather(2, index.flatten(2)).view(index.shape)


def replay_decisions(source: nn.Module, decisions: FusedDecisions) -> nn.Module:
    """A copy of the torchvision-style ``source`` model whose ReLUs apply the recorded masks and
    whose max-pool takes the recorded argmax: the same function wherever the fused model's
    forward is away from an edge. Its ReLUs must be called in the fused model's order, which
    they are in the models :func:`resnet_fused.fuse` takes."""
    replayed = copy.deepcopy(source)
    masks = _Replay(decisions.masks)
    for parent in list(replayed.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _ReplayedReLU(masks))
    pool_inputs = _Replay(decisions.pool_inputs)
    replayed.maxpool = _ReplayedMaxPool(replayed.maxpool, pool_inputs)
    replayed.replays = (masks, pool_inputs)
    return replayed


def assert_all_replayed(replayed: nn.Module) -> None:
    """Every recorded decision was taken by the reference (none left over)."""
    for replay in replayed.replays:
        assert replay.used == len(replay.tensors), (
            f"the reference took {replay.used} of {len(replay.tensors)} recorded decisions")
