"""The model for a job: a ResNet of the named depth, its checkpoint checked before any work,
then fused.

A checkpoint for another depth, block type or class count is a :class:`CheckpointError` that says
what the checkpoint is (e.g. "a resnet18 with 10 classes") and which option fixes the command.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .. import models
from ..fused import FusedResNet, fuse
from ..pretrained import is_pretrained, load_pretrained
from ..weights import ARCHES, WeightsError, describe, state_dict_of


class CheckpointError(WeightsError):
    """A checkpoint that is missing, unreadable, or for another network (the job's wording: the
    command-line option that fixes it)."""


def read_checkpoint(weights: str | os.PathLike | Mapping[str, Tensor], arch: str = "resnet50",
                    ) -> tuple[dict[str, Tensor], tuple[str, ...] | None]:
    """The state dict of ``weights`` (a path, a state dict, or ``"torchvision:NAME"``: the
    published ImageNet weights of ``arch``), ``module.`` prefixes removed, and the class names
    that come with it (torchvision's weights only, else None)."""
    if is_pretrained(weights):
        if arch not in ARCHES:
            raise ValueError(f"model must be one of {', '.join(ARCHES)}, got {arch!r}")
        try:
            return load_pretrained(arch, weights)
        except WeightsError as e:
            raise CheckpointError(str(e)) from e
    return _read_state(weights), None


def _read_state(weights: str | os.PathLike | Mapping[str, Tensor]) -> dict[str, Tensor]:
    try:
        return state_dict_of(weights)
    except WeightsError as e:
        raise CheckpointError(str(e)) from e


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
    except WeightsError as e:
        raise CheckpointError(f"{e} (into {arch})") from e
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
