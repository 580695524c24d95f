"""The Python side of the CPU backend (csrc/cpu/): what ``fuse()`` runs on a CPU.

* :mod:`.capability`: the CPU's ISA and oneDNN's dtypes; where the package's kernels run;
* :mod:`.onednn`: a fused conv as one oneDNN primitive (BatchNorm folded, post-ops), and the
  choice of the package's own kernels below for the convs they take;
* :mod:`.winograd`: stride-1 3x3 convs as Winograd F(m, 3) (``resnet_fused::winograd_conv3x3``);
* :mod:`.conv1x1`: 1x1 convs on the package's AVX-512 GEMM (``resnet_fused::conv1x1``);
* :mod:`.pooling`: the stem's max-pool, the global pool and the classifier.

Importing this package registers those ops' fake implementations and backward formulas.
"""

from . import capability, conv1x1, onednn, pooling, winograd

__all__ = ["capability", "conv1x1", "onednn", "pooling", "winograd"]
