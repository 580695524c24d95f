"""Triton backend: importing this package registers the ops

    resnet_fused::triton_conv_bn_act(Tensor input, Tensor weight, Tensor scale, Tensor shift,
                                     Tensor? residual, SymInt[] stride, SymInt[] padding,
                                     bool relu) -> Tensor
    resnet_fused::triton_add_relu(Tensor x, Tensor residual) -> Tensor

with ``torch.library.triton_op`` (kernel launches through ``wrap_triton``), so
``torch.compile(fullgraph=True)`` traces into the kernels. The C++ library owns the
``resnet_fused`` namespace through ``TORCH_LIBRARY``; triton_op defines these extra ops through a
``torch.library`` FRAGMENT, which coexists with it.

Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` is set before ``triton`` is
first imported (tests only: slow).
"""

from .. import backends as _backends  # noqa: F401  (loads the C++ schemas first: same namespace)
from . import configs
from .add_relu import triton_add_relu
from .conv_bn_act import conv_bn_act_launch, triton_conv_bn_act

__all__ = ["configs", "conv_bn_act_launch", "triton_add_relu", "triton_conv_bn_act"]
