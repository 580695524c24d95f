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
  // conv_bn_act's backward epilogue (resnet_fused/autograd.py), CPU: dz = grad, 0 where
  // out <= 0 (with relu; as torch.relu's backward), returns (dz * scale, dz), both channels_last
  // in grad's dtype; dz is an empty tensor unless `masked`.
  m.def(
      "conv_bn_act_grad_epilogue(Tensor grad, Tensor out, Tensor scale, bool relu, bool masked) "
      "-> (Tensor, Tensor)");

  // --- CUDA implementations, by name (csrc/impls.h) ---------------------------------------------
  // conv_bn_act through one named CUDA implementation ("mma_sync", "sm90_cutlass" or
  // "sm90_cutlass:<config>"), for the per-shape tuner. Raises for an unknown name, one this build
  // lacks, or a call the implementation cannot take (saying why). CUDA only.
  m.def(
      "conv_bn_act_cuda_impl(Tensor input, Tensor weight, Tensor scale, Tensor shift, "
      "Tensor? residual, int[2] stride, int[2] padding, bool relu, str impl) -> Tensor");
  // "" when `impl` can take this call on the tensors' device, else why not (also when the build
  // lacks it). Raises only for an unknown name. CUDA only.
  m.def(
      "cuda_impl_supports(Tensor input, Tensor weight, Tensor? residual, int[2] stride, "
      "int[2] padding, str impl) -> str");
  // The implementation names this build can run; answered on any machine (no tensors).
  m.def("cuda_impls() -> str[]");
  // "built", or "absent: <why>" (e.g. no CUTLASS headers at build time); any machine.
  m.def("cuda_impl_status(str impl) -> str");
  // Tests and verification: while enabled, the GPU ops NaN-fill each output before launching
  // (csrc/impls.h, poison_outputs); returns the previous setting.
  m.def("_poison_outputs(bool enable) -> bool");
  // Debug/test: the host-side plan of the sm90 CUTLASS conv (csrc/sm90/conv_plan.h) as
  // "key=value" strings, for a problem given by sizes; `sm` is the compute capability
  // (major * 10 + minor), `config` a configuration name or "" for the family default.
  m.def(
      "_sm90_conv_plan(int[] input_size, int[] weight_size, int[] stride, int[] padding, "
      "ScalarType dtype, bool residual, bool relu, int sm, str config) -> str[]");

  // A 0-dim bool tensor: true iff no element of x is NaN or infinite (CPU: one thread, one read;
  // fused models check their input with it, csrc/cpu/finite_cpu.cpp).
  m.def("all_finite(Tensor x) -> Tensor");

  // Pooling of fused models (CPU): torch.max_pool2d without the indices (dilation 1, floor
  // mode), output channels_last; and the mean over H, W as an (N, C) tensor.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
  m.def("global_avg_pool(Tensor input) -> Tensor");
  // A stride-1, padding-1 3x3 conv_bn_act as Winograd F(m, 3) (CPU, csrc/cpu/winograd_cpu.cpp):
  // y = act(conv + bias (+ residual)), channels_last. `weight` is the transformed filter
  // (resnet_fused/winograd.py): (36, C_in, C_out) for F(4,3), float32 only, (16, C_in, C_out)
  // for F(2,3), or for bfloat16 F(2,3) that filter pair-packed, (16, ceil(C_in / 2), C_out, 2);
  // `bias` is float32. `kernel`: "auto" (the AVX-512 pipelines where they run, else portable
  // loops), "amx" (bfloat16 with the GEMMs on AMX tiles, C_in and C_out multiples of 32, where
  // cpu_amx_status() is "available") or "amx_model" (those through the tiles' software model,
  // for tests; csrc/cpu/amx_tiles.h).
  m.def(
      "winograd_conv3x3(Tensor input, Tensor weight, Tensor bias, Tensor? residual, bool relu, "
      "str kernel=\"auto\") -> Tensor");
  // A 1x1 (padding 0) conv_bn_act on this package's AVX-512 GEMM (CPU, csrc/cpu/conv1x1_cpu.cpp):
  // y = act(conv(input, weight, stride) + bias), channels_last; and the same summed into its
  // residual in place, residual = act(conv + bias + residual), residual channels_last-contiguous.
  // `weight` is folded and packed in panels of 64 output channels (resnet_fused/conv1x1.py):
  // (ceil(C_out / 64), C_in, 64) float32, or (ceil(C_out / 64), C_in / 2, 64, 2) bfloat16;
  // `bias` is float32, C_out = bias.size(0). `kernel`: "avx512", "amx" (bfloat16 on AMX tiles,
  // C_in a multiple of 32, where cpu_amx_status() is "available") or "amx_model" (that kernel
  // through the tiles' software model, for tests; csrc/cpu/amx_tiles.h).
  m.def(
      "conv1x1(Tensor input, Tensor weight, Tensor bias, int[2] stride, bool relu, "
      "str kernel=\"avx512\") -> Tensor");
  m.def(
      "conv1x1_residual_(Tensor(a!) residual, Tensor input, Tensor weight, Tensor bias, "
      "int[2] stride, bool relu, str kernel=\"avx512\") -> ()");
  // "available" if this process runs the AMX bf16 kernels, else "absent: <why>"; any machine.
  m.def("cpu_amx_status() -> str");
}
