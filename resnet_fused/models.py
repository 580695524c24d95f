"""Reference ResNet family (torchvision v1.5 structure, identical state_dict keys).

These are plain eager PyTorch modules: the numerics reference for every fused backend and the
models that ``fuse()`` converts. Keys and shapes match ``torchvision.models.resnet*`` exactly, so
torchvision and timm checkpoints load with ``strict=True``.

Note: ResNet-50 is built from *Bottleneck* blocks (1x1 -> 3x3 -> 1x1, expansion 4) with layers
[3, 4, 6, 3]. A BasicBlock network with the same layer counts is ResNet-34, even when labelled
"ResNet-50" elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Union

import torch
from torch import Tensor, nn

from .pretrained import is_pretrained, load_pretrained
from .weights import ARCHES, load_weights

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "load_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]

WeightsArg = Union[None, str, os.PathLike, Mapping[str, Tensor]]  # noqa: UP007 (a runtime alias)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    # v1.5: the stride sits on the 3x3 conv (conv2), not on the first 1x1.
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        # torchvision's initialisation, so a fresh model has the same statistics as theirs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features before ``fc``: shape (N, 512 * expansion)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def _resnet(arch: str, num_classes: int, weights: WeightsArg) -> ResNet:
    block, layers = ARCHES[arch]
    model = ResNet({"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}[block], layers,
                   num_classes=num_classes)
    if is_pretrained(weights):  # "torchvision:IMAGENET1K_V2": torchvision's published weights
        weights, _ = load_pretrained(arch, weights)
    return load_weights(model, weights, arch=arch)


def resnet18(num_classes: int = 1000, weights: WeightsArg = None) -> ResNet:
    return _resnet("resnet18", num_classes, weights)


def resnet34(num_classes: int = 1000, weights: WeightsArg = None) -> ResNet:
    return _resnet("resnet34", num_classes, weights)


def resnet50(num_classes: int = 1000, weights: WeightsArg = None) -> ResNet:
    return _resnet("resnet50", num_classes, weights)


def resnet101(num_classes: int = 1000, weights: WeightsArg = None) -> ResNet:
    return _resnet("resnet101", num_classes, weights)


def resnet152(num_classes: int = 1000, weights: WeightsArg = None) -> ResNet:
    return _resnet("resnet152", num_classes, weights)
