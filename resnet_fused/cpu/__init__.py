"""The Python side of the CPU backend (csrc/cpu/): what ``fuse()`` runs on a CPU.

* :mod:`.capability`: the CPU's ISA and oneDNN's dtypes; where the package's kernels run;
* :mod:`.onednn`: a fused conv as one oneDNN primitive (BatchNorm folded, post-ops), and the
  choice of the package's own kernels below for the convs they take;
* :mod:`.winograd`: stride-1 3x3 convs as Winograd F(m, 3) (``resnet_fused::winograd_conv3x3``);
* :mod:`.algorithms`: which of those each conv runs, per input shape (rules or measured);
* :mod:`.conv1x1`: 1x1 convs on the package's AVX-512 GEMM or AMX (``resnet_fused::conv1x1``);
* :mod:`.pooling`: the stem's max-pool, the global pool and the classifier.

Importing this package registers those ops' fake implementations and backward formulas.
"""

from . import algorithms, capability, conv1x1, onednn, pooling, winograd

__all__ = ["algorithms", "capability", "conv1x1", "onednn", "pooling", "winograd"]
