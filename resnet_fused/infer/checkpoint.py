"""The model for a job: a ResNet of the named depth, its checkpoint checked before any work,
then fused.

A checkpoint for another depth, block type or class count is a :class:`CheckpointError` that says
what the checkpoint is (e.g. "a resnet18 with 10 classes") and which option fixes the command.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .. import models
from ..fused import FusedResNet, fuse

ARCHES = {
    "resnet18": ("BasicBlock", [2, 2, 2, 2]),
    "resnet34": ("BasicBlock", [3, 4, 6, 3]),
    "resnet50": ("Bottleneck", [3, 4, 6, 3]),
    "resnet101": ("Bottleneck", [3, 4, 23, 3]),
    "resnet152": ("Bottleneck", [3, 8, 36, 3]),
}
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or for another network."""


def read_checkpoint(weights: str | os.PathLike | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict of ``weights`` (a path or a state dict), ``module.`` prefixes removed."""
    if isinstance(weights, Mapping):
        state = dict(weights)
    else:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise CheckpointError(f"weights: no such checkpoint file {path!r}")
        try:
            state = dict(models._read_state_dict(path))
        except Exception as e:  # a corrupt file can fail in many ways
            raise CheckpointError(f"weights: cannot read checkpoint {path!r}: "
                                  f"{type(e).__name__}: {e}") from e
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError("weights: the checkpoint holds no state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def describe(state: Mapping[str, Tensor]) -> tuple[str | None, str]:
    """(the ARCHES name the checkpoint's structure matches or None, a description of it)."""
    blocks = [0, 0, 0, 0]
    bottleneck = False
    for key in state:
        m = _BLOCK_KEY.match(key)
        if m:
            layer, index = int(m.group(1)) - 1, int(m.group(2))
            blocks[layer] = max(blocks[layer], index + 1)
            bottleneck = bottleneck or m.group(3) == "3"
    block = "Bottleneck" if bottleneck else "BasicBlock"
    name = next((n for n, spec in ARCHES.items() if spec == (block, blocks)), None)
    fc = state.get("fc.weight")
    classes = f" with {fc.shape[0]} classes" if fc is not None and fc.dim() == 2 else ""
    what = name or f"a ResNet of {block} blocks {blocks}"
    return name, f"{what}{classes}"


def checkpoint_classes(state: Mapping[str, Tensor]) -> int:
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 2:
        raise CheckpointError("weights: the checkpoint has no classifier (fc.weight)")
    return int(fc.shape[0])


def build_reference(arch: str, state: Mapping[str, Tensor],
                    num_classes: int | None = None) -> models.ResNet:
    """``arch`` with the checkpoint loaded strictly; clear errors for another network."""
    if arch not in ARCHES:
        raise ValueError(f"model must be one of {', '.join(ARCHES)}, got {arch!r}")
    found, what = describe(state)
    if found != arch:
        hint = f"pass --model {found}" if found else "it is not one of this package's ResNets"
        raise CheckpointError(f"weights: the checkpoint is {what}, not a {arch} ({hint})")
    classes = checkpoint_classes(state)
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"weights: the checkpoint has {classes} classes (fc.weight is "
                              f"{list(state['fc.weight'].shape)}) but {num_classes} were asked "
                              f"for (pass --num-classes {classes}, or the matching checkpoint)")
    model = getattr(models, arch)(num_classes=classes)
    try:
        models.load_weights(model, state)
    except RuntimeError as e:
        raise CheckpointError(f"weights: the checkpoint does not load into {arch}: {e}") from e
    return model.eval()


def build_fused(reference: nn.Module, backend: str, dtype: torch.dtype,
                device: torch.device) -> FusedResNet:
    return fuse(reference.to(device), backend=backend, dtype=dtype)


def fingerprint(weights: str | os.PathLike | Mapping[str, Tensor]) -> str:
    """sha256 of the checkpoint file (or of a state dict's names and bytes): a resumed job must
    use the weights that made its first half."""
    h = hashlib.sha256()
    if isinstance(weights, Mapping):
        for key in sorted(weights):
            h.update(key.encode())
            tensor = weights[key].detach().cpu().contiguous().reshape(-1)
            h.update(tensor.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    with open(os.fspath(weights), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
