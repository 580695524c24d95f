// Op schemas for resnet_fused: the one always-compiled translation unit that owns the namespace.
// Device implementations register themselves in csrc/cpu/ and csrc/cuda/ (TORCH_LIBRARY_IMPL).
#include <Python.h>
#include <torch/library.h>

// `import resnet_fused._C` loads this shared library, which runs the static registrations below.
// The module itself exposes nothing: everything is reached through torch.ops.resnet_fused.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(resnet_fused, m) {
  // y = act(scale[k] * conv(input, weight)[n,k,h,w] + shift[k] (+ residual[n,k,h,w]))
  // The output is always channels_last (NHWC memory), whatever the input's memory format.
  m.def(
      "conv_bn_act(Tensor input, Tensor weight, Tensor scale, Tensor shift, Tensor? residual, "
      "int[2] stride, int[2] padding, bool relu) -> Tensor");
  // y = relu(x + residual); the output has x's memory format.
  m.def("add_relu(Tensor x, Tensor residual) -> Tensor");
  // Pooling of fused models (CPU): torch.max_pool2d without the indices (dilation 1, floor
  // mode), output channels_last; and the mean over H, W as an (N, C) tensor.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
  m.def("global_avg_pool(Tensor input) -> Tensor");
}
