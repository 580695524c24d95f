"""resnet_fused: fused conv+BatchNorm(+residual)+ReLU kernels and a drop-in fused ResNet.

    import resnet_fused
    model = resnet_fused.resnet50(weights="resnet50.pth")  # or "torchvision:IMAGENET1K_V2"
    fast = resnet_fused.fuse(model)               # same outputs as model.eval(), fused kernels
    fast(images)

Ops: :mod:`resnet_fused.ops` (``conv_bn_act``, ``add_relu``); backends: :func:`available_backends`.
"""

from . import ops, testing
from .backends import available_backends, backend_status
from .folding import fold_batchnorm
from .fused import FusedResNet, fuse
from .models import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .pretrained import imagenet_classes
from .weights import WeightsError, load_weights

__version__ = "0.1.0"

__all__ = [
    "FusedResNet",
    "ResNet",
    "WeightsError",
    "available_backends",
    "backend_status",
    "fold_batchnorm",
    "fuse",
    "imagenet_classes",
    "load_weights",
    "ops",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "testing",
]
