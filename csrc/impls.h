// The CUDA implementations of conv_bn_act a build can contain, their names, and whether this
// build has each (and if not, why). Shared by csrc/impls.cpp (the cuda_impls / cuda_impl_status
// ops, answered on any machine) and the CUDA binding (conv_bn_act_cuda_impl).
//
// Names: "mma_sync" (the hand-written implicit GEMM, csrc/cuda/), "sm90_cutlass" (the sm_90a
// CUTLASS kernels, csrc/sm90/, with the shape family's default configuration) and
// "sm90_cutlass:<config>" (one named configuration, see csrc/sm90/conv_plan.h).
#pragma once

#include <string>
#include <vector>

namespace resnet_fused {

enum class CudaImpl { kMmaSync, kSm90Cutlass };

struct ImplChoice {
  CudaImpl impl = CudaImpl::kMmaSync;
  int config = -1;  // sm90_cutlass: index into sm90::kConfigs, -1 = the family's default
};

// Parses an implementation name; raises (naming the valid ones) for an unknown one.
ImplChoice parse_impl(const std::string& name);

// Empty when this build contains `impl`, else why not (e.g. "no CUTLASS headers at build time").
std::string impl_absent_reason(CudaImpl impl);

// Test/verification switch (op resnet_fused::_poison_outputs): while set, every GPU op fills its
// freshly allocated output with NaN before it launches, so an element a kernel fails to write
// stays NaN and fails the check (instead of relying on the allocator to hand back a NaN block).
bool poison_outputs();

// Every name this build can run, e.g. {"mma_sync", "sm90_cutlass:128x128x64_c1x1", ...}; the
// bare "sm90_cutlass" (family default) is accepted too but not listed, since it is one of these.
std::vector<std::string> built_impls();

}  // namespace resnet_fused
