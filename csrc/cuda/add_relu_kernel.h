// Torch-free interface of the standalone add + ReLU kernel (see add_relu_kernel.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace resnet_fused {
namespace cuda {

// out[i] = relu(x[i] + residual[i]) for i < numel: three buffers with one dense layout, walked flat
// over storage (so any memory format works as long as all three share it). Asynchronous on
// `stream`; returns the launch's error, if any. numel == 0 launches nothing.
cudaError_t launch_add_relu(const void* x, const void* residual, void* out, int64_t numel,
                            DType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace resnet_fused
