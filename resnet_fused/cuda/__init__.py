"""GPU implementation choice (the C++/CUDA kernels live in csrc/cuda/ and csrc/sm90/, the
Triton ones in :mod:`resnet_fused.triton`).

* :mod:`.tuning`: verified-then-measured choice among candidates, cached on disk;
* :mod:`.selection`: which CUDA implementation (or Triton) runs each conv_bn_act call.
"""

from . import selection, tuning

__all__ = ["selection", "tuning"]
