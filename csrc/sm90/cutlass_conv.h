// Launch interface of the sm_90a CUTLASS conv kernels (csrc/sm90/cutlass_conv_config*.cu), free of
// torch and of CUTLASS: the binding (csrc/cuda/conv_bn_act_cuda.cpp) includes only this.
#pragma once

#include <cuda_runtime.h>

#include "conv_plan.h"

namespace resnet_fused {
namespace sm90 {

// Device pointers of one call, laid out as the plan says (dense NHWC / KRSC / NPQK; input and
// weight already padded to plan.c_padded channels; all 16-byte aligned).
struct ConvPointers {
  const void* input = nullptr;
  const void* weight = nullptr;
  const float* scale = nullptr;  // [C_out]
  const float* shift = nullptr;  // [C_out]
  const void* residual = nullptr;  // required iff plan.residual
  void* output = nullptr;
};

// Runs the plan's configuration on `stream` (asynchronous; no host synchronization). Returns
// nullptr on success, else a static message saying what failed (CUTLASS rejecting the problem,
// a plan/CUTLASS disagreement, or the launch's CUDA error).
const char* launch_conv(const ConvPlan& plan, const ConvPointers& ptrs, cudaStream_t stream);

// One configuration's launcher; defined in csrc/sm90/cutlass_conv_config<I>.cu.
template <int Config>
const char* launch_config(const ConvPlan& plan, const ConvPointers& ptrs, cudaStream_t stream);

}  // namespace sm90
}  // namespace resnet_fused
