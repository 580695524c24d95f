// Device-side element helpers shared by the CUDA kernels: every dtype is computed in fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace resnet_fused {
namespace cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// NaN must propagate (as torch.relu does), so no fmaxf (which would turn NaN into 0).
__device__ __forceinline__ float relu_if(float v, bool relu) { return (relu && v < 0.f) ? 0.f : v; }

}  // namespace cuda
}  // namespace resnet_fused
