"""GPU implementation choice (the C++/CUDA kernels live in csrc/cuda/ and csrc/sm90/, the
Triton ones in :mod:`resnet_fused.triton`; the verified, measured choice itself is
:mod:`resnet_fused.tuning`, shared with the CPU).

* :mod:`.selection`: which CUDA implementation (or Triton) runs each conv_bn_act call.
"""

from . import selection

__all__ = ["selection"]
