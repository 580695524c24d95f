// Configuration 6 of kConfigs (csrc/sm90/conv_plan.h): the stream-K GEMM for small 1x1 stride-1
// convs (batch 1), fp16 and bf16, with and without a residual. One configuration per translation
// unit bounds nvcc's memory and lets the build run them in parallel.
#include "cutlass_gemm.cuh"

RESNET_FUSED_SM90_CONFIG_TU(6, launch_gemm, gemm_workspace)
