// Element types shared by the torch-free CUDA kernels and their binding.
#pragma once

namespace resnet_fused {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace cuda
}  // namespace resnet_fused
