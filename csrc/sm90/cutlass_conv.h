// Launch interface of the sm_90a CUTLASS conv kernels (csrc/sm90/cutlass_conv_config*.cu), free of
// torch and of CUTLASS: the binding (csrc/cuda/conv_bn_act_cuda.cpp) includes only this.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

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
  // Device scratch of at least workspace_config<plan.config>(plan) bytes (stream-K's partial
  // sums and flags; none for the other configurations). The kernel clears what it needs on
  // `stream` first.
  void* workspace = nullptr;
  size_t workspace_size = 0;
  // The device the call runs on and its SM count (the binding's cached query): the persistent
  // GEMMs size their grid, and stream-K its workspace, by it.
  int device = 0;
  int sm_count = 0;
};

// One configuration's launcher and workspace size; defined in csrc/sm90/cutlass_conv_config<I>.cu
// (the binding, csrc/cuda/conv_bn_act_cuda.cpp, holds them in a table by index). The workspace
// is the bytes of device scratch the configuration needs for the plan on ptrs' device (the
// pointers themselves are not read): 0 for all but stream-K, whose size depends on the problem
// and the SM count.
// The launcher runs on `stream` (asynchronous; no host synchronization) and returns nullptr on
// success, else a static message saying what failed (CUTLASS rejecting the problem, a
// plan/CUTLASS disagreement, too little workspace, or the launch's CUDA error).
template <int Config>
const char* launch_config(const ConvPlan& plan, const ConvPointers& ptrs, cudaStream_t stream);
template <int Config>
size_t workspace_config(const ConvPlan& plan, const ConvPointers& ptrs);

}  // namespace sm90
}  // namespace resnet_fused
