"""Checkpoints: reading a state dict from a file, saying what network it is for, and loading it
strictly with errors that say what to do.

A checkpoint for another depth, block type or class count is refused in one or two lines that
name what the checkpoint is ("a resnet18 with 10 classes") and the call that takes it, instead
of the ~150 missing keys and size mismatches ``load_state_dict`` would list. A file that is not a
state dict (a pickled whole model, a corrupt or foreign file) says so, and how to save one.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["ARCHES", "WeightsError", "WeightsFileNotFound", "describe", "load_weights",
           "read_state_dict", "state_dict_of"]

# The package's ResNets: block type and blocks per stage.
ARCHES = {
    "resnet18": ("BasicBlock", [2, 2, 2, 2]),
    "resnet34": ("BasicBlock", [3, 4, 6, 3]),
    "resnet50": ("Bottleneck", [3, 4, 6, 3]),
    "resnet101": ("Bottleneck", [3, 4, 23, 3]),
    "resnet152": ("Bottleneck", [3, 8, 36, 3]),
}
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class WeightsError(ValueError):
    """A checkpoint that is missing, unreadable, or for another network; the message says why."""


class WeightsFileNotFound(WeightsError, FileNotFoundError):
    """The checkpoint file does not exist (a FileNotFoundError too)."""


def read_state_dict(weights: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in a .pth/.pt (``torch.load(weights_only=True)``) or .safetensors file;
    ``{"state_dict": ...}`` / ``{"model": ...}`` wrappings and ``module.`` prefixes removed."""
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise WeightsFileNotFound(f"weights: no such checkpoint file {path!r}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - depends on the install
            raise WeightsError("weights: .safetensors files need `pip install safetensors`") from e
        try:
            state = load_file(path)
        except Exception as e:
            raise WeightsError(f"weights: {path!r} is not a readable safetensors file "
                               f"({_first_line(e)})") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Unsupported global" not in str(e):  # not a pickle of objects: a foreign file
                raise WeightsError(f"weights: {path!r} is not a PyTorch checkpoint (.pth/.pt) "
                                   "or safetensors file") from e
            # weights_only refuses pickled objects: most often a whole model saved with
            # torch.save(model), which would run arbitrary code to load.
            raise WeightsError(
                f"weights: {path!r} holds a pickled Python object (e.g. a whole model), not a "
                "state dict of tensors; save one with torch.save(model.state_dict(), path)") from e
        except Exception as e:  # a corrupt or foreign file fails in many ways
            raise WeightsError(f"weights: {path!r} is not a PyTorch checkpoint (.pth/.pt) or "
                               f"safetensors file ({_first_line(e)})") from e
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"weights: {path!r} holds no state dict of tensors")
    return _unprefixed(dict(state))


def state_dict_of(weights: str | os.PathLike | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict ``weights`` names: read from a .pth/.pt/.safetensors path
    (:func:`read_state_dict`), or a mapping checked to hold tensors; ``module.`` prefixes
    removed either way."""
    if isinstance(weights, (str, os.PathLike)):
        return read_state_dict(weights)
    if not isinstance(weights, Mapping):
        raise TypeError("weights must be None, a path to a .pth/.pt/.safetensors file, or a "
                        f"state dict; got {type(weights).__name__}")
    state = dict(weights)
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError("weights: the checkpoint holds no state dict of tensors")
    return _unprefixed(state)


def _unprefixed(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def describe(state: Mapping[str, Tensor]) -> tuple[str | None, str]:
    """(the ARCHES name the checkpoint's structure matches or None, a description of it, e.g.
    ``"resnet18 with 10 classes"``)."""
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
    classes = f" with {fc.shape[0]} classes" if isinstance(fc, Tensor) and fc.dim() == 2 else ""
    what = name or f"a ResNet of {block} blocks {blocks}"
    return name, f"{what}{classes}"


def load_weights(model: nn.Module, weights, arch: str | None = None) -> nn.Module:
    """Loads ``weights`` (a .pth/.pt/.safetensors path, or a state dict) strictly into ``model``.

    ``arch``: the package's name for ``model`` (``"resnet50"``...), when it is one: a checkpoint
    for another depth or class count is then refused saying what it is and which call takes it.
    """
    if weights is None:
        return model
    state = state_dict_of(weights)
    if arch is not None:
        found, what = describe(state)
        fc = state.get("fc.weight")
        classes = int(fc.shape[0]) if isinstance(fc, Tensor) and fc.dim() == 2 else None
        if found != arch:
            hint = (f"use resnet_fused.{found}(num_classes={classes}, weights=...)"
                    if found and classes else "it is not one of this package's ResNets")
            raise WeightsError(f"weights: the checkpoint is {what}, not a {arch} ({hint})")
        wanted = getattr(getattr(model, "fc", None), "out_features", None)
        if classes is not None and wanted is not None and classes != wanted:
            raise WeightsError(f"weights: the checkpoint has {classes} classes, this {arch} "
                               f"{wanted} (pass num_classes={classes})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        more = f" (+{len(lines) - 3} more lines)" if len(lines) > 3 else ""
        raise WeightsError("weights: the checkpoint does not load: "
                           + " ".join(line.strip() for line in lines[:3]) + more) from e
    return model
