"""Published ImageNet-1k weights by name (``"torchvision:IMAGENET1K_V2"``) and the class names.

torchvision publishes one or two ImageNet-1k checkpoints per ResNet depth. Where torchvision
imports, its own weights registry resolves the name and downloads the file (checking its hash)
into torch's hub cache, ``torch.hub.get_dir()/checkpoints``. Where it does not (torch's CPU build
cannot load the registry's torchvision wheels), the same files are fetched from the same URLs,
listed below. A file already in the cache is used without the network, so a machine offline
works once the file is copied there (or its state dict saved and passed as a path).

The 1000 ImageNet class names ship with the package (``data/imagenet_classes.txt``, the order of
torchvision's weights metadata): ``predict`` prints them for any 1000-class checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from .weights import ARCHES, WeightsError, read_state_dict

__all__ = ["PREFIX", "Pretrained", "imagenet_classes", "is_pretrained", "load_pretrained",
           "resolve"]

PREFIX = "torchvision:"
_BASE = "https://download.pytorch.org/models/"
# torchvision's published files per depth and weights name (the hash prefix is in the name).
PUBLISHED = {
    "resnet18": {"IMAGENET1K_V1": "resnet18-f37072fd.pth"},
    "resnet34": {"IMAGENET1K_V1": "resnet34-b627a593.pth"},
    "resnet50": {"IMAGENET1K_V1": "resnet50-0676ba61.pth",
                 "IMAGENET1K_V2": "resnet50-11ad3fa6.pth"},
    "resnet101": {"IMAGENET1K_V1": "resnet101-63fe2227.pth",
                  "IMAGENET1K_V2": "resnet101-cd907fc2.pth"},
    "resnet152": {"IMAGENET1K_V1": "resnet152-394f9c45.pth",
                  "IMAGENET1K_V2": "resnet152-f82ba261.pth"},
}
_DEFAULT = {arch: max(names) for arch, names in PUBLISHED.items()}  # the newest: V2 where any


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, class 0 first."""
    path = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.txt")
    with open(path, encoding="utf-8") as f:
        names = tuple(line.rstrip("\n") for line in f)
    if len(names) != 1000:  # a damaged install, not a user error
        raise RuntimeError(f"{path}: expected 1000 class names, found {len(names)}")
    return names


def is_pretrained(weights) -> bool:
    return isinstance(weights, str) and weights.startswith(PREFIX)


@dataclass(frozen=True)
class Pretrained:
    """One published checkpoint: ``arch``, its weights ``name``, where it comes from."""

    arch: str
    name: str
    url: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]

    @property
    def cached(self) -> str:
        """Where torch's hub cache keeps (or will keep) the file."""
        return os.path.join(torch.hub.get_dir(), "checkpoints", self.filename)

    def save_command(self) -> str:
        """A command that saves the state dict on a machine with torchvision and the network."""
        enum = f"ResNet{self.arch[len('resnet'):]}_Weights"
        return (f"python -c \"import torch, torchvision; torch.save(torchvision.models.{enum}."
                f"{self.name}.get_state_dict(), '{self.arch}.pth')\"")


def resolve(arch: str, weights: str) -> Pretrained:
    """``"torchvision:IMAGENET1K_V2"`` (or ``DEFAULT``, or ``ResNet50_Weights.IMAGENET1K_V2``)
    for ``arch``; a :class:`WeightsError` naming the choices for a name that does not exist."""
    if arch not in ARCHES:
        raise ValueError(f"model must be one of {', '.join(ARCHES)}, got {arch!r}")
    if not is_pretrained(weights):
        raise ValueError(f"weights must start with {PREFIX!r}, got {weights!r}")
    name = weights[len(PREFIX):].strip()
    enum = f"ResNet{arch[len('resnet'):]}_Weights"
    if name.startswith(enum + "."):
        name = name[len(enum) + 1:]
    if name == "DEFAULT":
        name = _DEFAULT[arch]
    published = PUBLISHED[arch]
    if name not in published:
        raise WeightsError(f"weights: {weights!r}: torchvision publishes "
                           f"{', '.join(PREFIX + n for n in (*published, 'DEFAULT'))} for "
                           f"{arch}")
    return Pretrained(arch, name, _BASE + published[name])


def _torchvision_weights(found: Pretrained):
    """torchvision's registry entry for ``found``, or None where torchvision does not import."""
    try:
        from torchvision.models import get_model_weights

        return get_model_weights(found.arch)[found.name]
    except Exception:  # not installed, built for another torch (its ops fail), or too old
        return None


def load_pretrained(arch: str, weights: str, progress: bool = True,
                    ) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """(state dict, class names) of a published checkpoint, through torchvision's loader where it
    imports (its class names), else from the same URL (the shipped names); the hub cache first.
    A download that fails says how to get the file onto an offline machine."""
    found = resolve(arch, weights)
    entry = _torchvision_weights(found)
    try:
        if entry is not None:
            state = entry.get_state_dict(progress=progress, check_hash=True, weights_only=True)
            names = tuple(entry.meta["categories"])
        else:
            state = torch.hub.load_state_dict_from_url(found.url, progress=progress,
                                                       check_hash=True, weights_only=True)
            names = imagenet_classes()
    except Exception as e:  # no network, a proxy, a full disk, a corrupt download...
        if os.path.exists(found.cached):
            raise WeightsError(f"weights: {weights!r}: {found.cached} does not load "
                               f"({type(e).__name__}: {str(e).strip()[:160]}); delete it to "
                               "download it again") from e
        raise WeightsError(
            f"weights: {weights!r}: cannot download {found.url} ({type(e).__name__}: "
            f"{str(e).strip()[:160]}). Offline? Copy that file to {found.cached}, or save the "
            f"state dict where there is network ({found.save_command()}) and pass the file "
            "instead") from e
    if isinstance(state, dict) and all(isinstance(v, Tensor) for v in state.values()):
        return dict(state), names
    # Not a state dict: read it the way a file passed by path is, for the same errors.
    return read_state_dict(found.cached), names
