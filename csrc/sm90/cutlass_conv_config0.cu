// Configuration 0 of kConfigs (csrc/sm90/conv_plan.h): fp16 and bf16, without and with residual.
// One configuration per translation unit bounds nvcc's memory and lets the build run them in
// parallel.
#include "cutlass_conv.cuh"

RESNET_FUSED_SM90_CONFIG_TU(0, launch, no_workspace)
