// Torch-free interface of the fused conv + BatchNorm (+ residual) (+ ReLU) CUDA kernels.
//
// Kept free of ATen/c10 so the kernels compile (and are compile-checked in CI) with plain nvcc;
// csrc/cuda/conv_bn_act_cuda.cpp adapts at::Tensor arguments to ConvBnActParams.
//
// Layouts (all dense, no strides): input NHWC [n, h, w, c], weight KRSC [k, r, s, c], residual and
// output NHWC [n, p, q, k]. `c` is the channel count *as stored*; the binding zero-pads it to a
// multiple of conv_bn_act_channel_alignment() for the implicit-GEMM paths.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace resnet_fused {
namespace cuda {

// Which kernel family computes the convolution.
enum class ConvPath : int {
  kTensorCore = 0,  // implicit GEMM, mma.sync (fp16/bf16, or fp32 inputs as TF32), sm_80+
  kSimt = 1,        // implicit GEMM with fp32 FMA (fp32 inputs when TF32 is not allowed), sm_80+
  kDirect = 2,      // one thread per output, any alignment, any arch: the correct-but-slow fallback
};

struct ConvBnActParams {
  const void* input = nullptr;     // NHWC, dtype
  const void* weight = nullptr;    // KRSC, dtype
  const float* scale = nullptr;    // [k]
  const float* shift = nullptr;    // [k]
  const void* residual = nullptr;  // NHWC [n, p, q, k], dtype, or nullptr
  void* output = nullptr;          // NHWC [n, p, q, k], dtype
  int n = 0, h = 0, w = 0, c = 0;  // input sizes (c as stored)
  int k = 0, r = 0, s = 0;         // weight sizes
  int p = 0, q = 0;                // output spatial sizes
  int stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  bool relu = false;
  DType dtype = DType::kFloat32;
  bool allow_tf32 = false;  // fp32 only: may the conv use TF32 tensor cores
};

// Channels (in elements) the implicit-GEMM paths need `c` to be a multiple of: one 16-byte
// cp.async chunk, i.e. 8 for fp16/bf16 and 4 for fp32.
int conv_bn_act_channel_alignment(DType dtype);

// The path launch_conv_bn_act() should take. `sm` is the device's compute capability as
// major * 10 + minor. Falls back to kDirect when the fast kernels' preconditions do not hold
// (pre-sm_80 GPU, unaligned channels or pointers, grid limits); `why` (if non-null) then points
// to a static string saying which.
ConvPath select_conv_path(const ConvBnActParams& p, int sm, const char** why = nullptr);

// Launches the fused conv on `stream` (asynchronous; never synchronizes). `num_sms` feeds the
// tile-size heuristic. Returns the launch's error, if any; a problem with no output (n, k, p or q
// == 0) launches nothing and returns cudaSuccess.
cudaError_t launch_conv_bn_act(const ConvBnActParams& p, ConvPath path, int num_sms,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace resnet_fused
