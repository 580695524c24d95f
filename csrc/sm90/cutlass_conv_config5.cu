// Configuration 5 of kConfigs (csrc/sm90/conv_plan.h): the persistent GEMM for 1x1 stride-1
// convs, fp16 and bf16, with and without a residual. One configuration per translation unit
// bounds nvcc's memory and lets the build run them in parallel.
#include "cutlass_gemm.cuh"

RESNET_FUSED_SM90_CONFIG_TU(5, launch_gemm, gemm_workspace)
