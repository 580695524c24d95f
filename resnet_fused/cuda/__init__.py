"""GPU implementation choice (the C++/CUDA kernels live in csrc/cuda/ and csrc/sm90/, the
Triton ones in :mod:`resnet_fused.triton`; the verified, measured choice itself is
:mod:`resnet_fused.tuning`, shared with the CPU).

* :mod:`.selection`: which CUDA implementation (or Triton) runs each conv_bn_act call;
* :mod:`.channels`: inputs with too few channels for the kernels' 16-byte rows (the stem's 3),
  padded, and a fused conv's weight padded once.
"""

from . import channels, selection

__all__ = ["channels", "selection"]
