// out = relu(x + residual), flat over three buffers that share one dense layout.
//
// Memory-bound: the only thing that matters is moving bytes in full 16-byte transactions, so the
// main loop handles one 16-byte vector per thread per step and a scalar loop takes the tail (and
// whole buffers whose pointers are not 16-byte aligned, e.g. views with a storage offset).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "add_relu_kernel.h"
#include "element.cuh"

namespace resnet_fused {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    add_relu_kernel(const T* __restrict__ x, const T* __restrict__ res, T* __restrict__ out,
                    int64_t numel) {
  constexpr int V = kVector ? 16 / static_cast<int>(sizeof(T)) : 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = numel / V;
  for (int64_t i = tid; i < nvec; i += stride) {
    if constexpr (kVector) {
      alignas(16) T a[V];
      alignas(16) T b[V];
      alignas(16) T o[V];
      *reinterpret_cast<uint4*>(a) = reinterpret_cast<const uint4*>(x)[i];
      *reinterpret_cast<uint4*>(b) = reinterpret_cast<const uint4*>(res)[i];
#pragma unroll
      for (int e = 0; e < V; ++e) o[e] = from_float<T>(relu_if(to_float(a[e]) + to_float(b[e]), true));
      reinterpret_cast<uint4*>(out)[i] = *reinterpret_cast<const uint4*>(o);
    } else {
      out[i] = from_float<T>(relu_if(to_float(x[i]) + to_float(res[i]), true));
    }
  }
  // Tail (< V elements) of the vector path.
  for (int64_t i = nvec * V + tid; i < numel; i += stride) {
    out[i] = from_float<T>(relu_if(to_float(x[i]) + to_float(res[i]), true));
  }
}

template <typename T>
cudaError_t launch(const void* x, const void* res, void* out, int64_t numel, cudaStream_t stream) {
  const bool vector = ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(res) |
                        reinterpret_cast<uintptr_t>(out)) & 15) == 0;
  const int per_thread = vector ? 16 / static_cast<int>(sizeof(T)) : 1;
  const int64_t work = (numel + per_thread - 1) / per_thread;
  int64_t blocks = (work + kThreads - 1) / kThreads;
  // Enough CTAs to fill any GPU several times over; the grid-stride loop covers the rest.
  if (blocks > 65536) blocks = 65536;
  if (blocks < 1) blocks = 1;
  const auto* xp = static_cast<const T*>(x);
  const auto* rp = static_cast<const T*>(res);
  auto* op = static_cast<T*>(out);
  if (vector) {
    add_relu_kernel<T, true><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(xp, rp, op, numel);
  } else {
    add_relu_kernel<T, false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(xp, rp, op, numel);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_add_relu(const void* x, const void* residual, void* out, int64_t numel,
                            DType dtype, cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch<float>(x, residual, out, numel, stream);
    case DType::kFloat16: return launch<__half>(x, residual, out, numel, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(x, residual, out, numel, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace resnet_fused
