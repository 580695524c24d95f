"""Helpers shared by the tests, the benchmarks and ``python -m resnet_fused check``.

docs/design.md's policy: relative L2 error ``||y - ref|| / ||ref||`` against a higher-precision
reference, with random inputs, weights and non-trivial BatchNorm statistics (a freshly initialised
BatchNorm, mean 0 and var 1, hides folding bugs). NaN never passes.

* :mod:`.numerics`: the bounds (``TOLERANCES``, ``tolerance``) and ``relative_error``;
* :mod:`.data`: random BatchNorm numbers, FrozenBatchNorm2d models, the ResNets' conv shapes;
* :mod:`.optional`: importing torchvision/timm where they may be absent;
* :mod:`.decisions` (import it by name): gradient references through the fused model's ReLU
  and max-pool decisions.
"""

from .data import (
    FrozenBatchNorm2d,
    freeze_batchnorm,
    random_bn_params,
    randomize_batchnorm_,
    resnet_conv_shapes,
)
from .numerics import (
    ELEMENTWISE_FACTOR,
    TF32_TOLERANCE,
    TOLERANCES,
    assert_within_bound,
    dtype_name,
    elementwise_error,
    no_tf32,
    reference_dtype,
    relative_error,
    round_to_tf32,
    tolerance,
)
from .optional import import_or_skip, try_import

__all__ = [
    "ELEMENTWISE_FACTOR",
    "TF32_TOLERANCE",
    "TOLERANCES",
    "FrozenBatchNorm2d",
    "assert_within_bound",
    "dtype_name",
    "elementwise_error",
    "freeze_batchnorm",
    "import_or_skip",
    "no_tf32",
    "random_bn_params",
    "randomize_batchnorm_",
    "reference_dtype",
    "relative_error",
    "resnet_conv_shapes",
    "round_to_tf32",
    "tolerance",
    "try_import",
]
