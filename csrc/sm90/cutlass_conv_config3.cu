// Configuration 3 of kConfigs (csrc/sm90/conv_plan.h): fp16 and bf16, with and without a residual.
// One configuration per translation unit bounds nvcc's memory and lets the build run them in
// parallel.
#include "cutlass_conv.cuh"

RESNET_FUSED_SM90_CONFIG_TU(3, launch, no_workspace)
