// The sm_90a fused 1x1 stride-1 conv as a true GEMM on CUTLASS 3.x's persistent kernels:
//     out[M, N] = act(scale[n] * (A[M, K] . B[N, K]^T) + shift[n] (+ residual[M, N]))
// with M = N*H*W pixels, N = C_out, K = C_in (NHWC activations and KC filters are both K-major,
// CUTLASS's "TN" layout). Unlike the conv kernel (cutlass_conv.cuh), whose only sm90 schedule is
// non-persistent, these kernels keep one CTA per SM looping over output tiles (the persistent tile
// scheduler, which walks tiles in a swizzled order so neighbouring CTAs share activation rows in
// L2), and the epilogue's producer warp loads the residual (source C) by TMA while the mainloop
// of the next tile runs: the pingpong schedule alternates two consumer warpgroups, so one's
// epilogue overlaps the other's MMAs; the cooperative one splits a taller tile between them.
//
// For GEMMs too small to fill the GPU with whole tiles (batch 1), the stream-K configuration
// deals the k-tiles of all output tiles evenly to the SMs; the CTAs that share a tile add their
// fp32 partial sums through a caller-allocated workspace in a fixed order (CUTLASS's deterministic
// reduction), and the last one runs the epilogue: same epilogue, same bits on every run.
//
// The epilogue visitor tree is the conv's (ConvKernel in cutlass_conv.cuh): same math, same
// rounding, same NaN behaviour. Included only by the per-configuration translation units
// (cutlass_conv_config<i>.cu of the configurations with TileConfig::gemm set).
#pragma once

#include "cutlass_conv.cuh"

#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace resnet_fused {
namespace sm90 {
namespace detail {

template <class Element, int Config, bool kResidual>
struct GemmKernel {
  static constexpr TileConfig kCfg = kConfigs[Config];
  static_assert(kCfg.gemm, "GemmKernel takes the GEMM configurations of kConfigs only");
  using TileShape = cute::Shape<cute::Int<kCfg.tile_m>, cute::Int<kCfg.tile_n>,
                                cute::Int<kCfg.tile_k>>;
  using ClusterShape = cute::Shape<cute::Int<kCfg.cluster_m>, cute::Int<kCfg.cluster_n>, cute::_1>;
  static constexpr int kAlignment = 128 / cutlass::sizeof_bits<Element>::value;  // 16 bytes
  using LayoutA = cutlass::layout::RowMajor;     // activations: M x K, K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // filters: K x N with K contiguous (KC rows)
  using LayoutD = cutlass::layout::RowMajor;     // output and residual: M x N, N contiguous
  static constexpr bool kPingpong = kCfg.pingpong;
  static_assert(!(kCfg.stream_k && kCfg.pingpong),
                "CUTLASS's sm90 stream-K scheduler runs the cooperative schedule only");
  using TileScheduler = cute::conditional_t<kCfg.stream_k, cutlass::gemm::StreamKScheduler,
                                            cutlass::gemm::PersistentScheduler>;
  using KernelSchedule =
      cute::conditional_t<kPingpong, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                          cutlass::gemm::KernelTmaWarpSpecializedCooperative>;
  using EpilogueSchedule =
      cute::conditional_t<kPingpong, cutlass::epilogue::TmaWarpSpecialized,
                          cutlass::epilogue::TmaWarpSpecializedCooperative>;

  // The conv's epilogue visitor tree (cutlass_conv.cuh), on the GEMM's tile.
  using Tree = FusedEpilogue<Element, TileShape, kResidual>;
  using Fusion = typename Tree::Fusion;
  using ElementC = typename Tree::ElementC;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementC, LayoutD,
      kAlignment, Element, LayoutD, kAlignment, EpilogueSchedule, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA, kAlignment, Element,
      LayoutB, kAlignment, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop,
                                                      Epilogue, TileScheduler>;
  using Op = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// The GEMM adapter's arguments for a plan and its pointers (the persistent schedulers size
// their grid, and stream-K its workspace, by ptrs.sm_count; for sizing, the pointers are unread).
template <class K>
typename K::Op::Arguments gemm_arguments(const ConvPlan& plan, const ConvPointers& ptrs) {
  using Element = typename K::Mainloop::ElementA;
  cutlass::KernelHardwareInfo hw_info;
  hw_info.device_id = ptrs.device;
  hw_info.sm_count = ptrs.sm_count;
  const int m = static_cast<int>(plan.gemm_m);
  const int n = static_cast<int>(plan.gemm_n);
  const int k = static_cast<int>(plan.gemm_k);
  const auto stride_a = cutlass::make_cute_packed_stride(typename K::Kernel::StrideA{},
                                                         cute::make_shape(m, k, 1));
  const auto stride_b = cutlass::make_cute_packed_stride(typename K::Kernel::StrideB{},
                                                         cute::make_shape(n, k, 1));
  const auto stride_c = cutlass::make_cute_packed_stride(typename K::Kernel::StrideC{},
                                                         cute::make_shape(m, n, 1));
  const auto stride_d = cutlass::make_cute_packed_stride(typename K::Kernel::StrideD{},
                                                         cute::make_shape(m, n, 1));

  typename K::Op::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {m, n, k, 1},
      {static_cast<Element const*>(ptrs.input), stride_a,
       static_cast<Element const*>(ptrs.weight), stride_b},
      {K::Tree::arguments(ptrs, plan.relu), static_cast<typename K::Tree::PtrC>(ptrs.residual),
       stride_c, static_cast<Element*>(ptrs.output), stride_d},
      hw_info};
  if constexpr (K::kCfg.stream_k) {
    // Spelled out rather than left to the defaults: the partial sums are reduced in a fixed
    // order (same bits on every run, which the tuner's repeated runs check), and CUTLASS's
    // heuristic picks stream-K, split-K or whole tiles for the shape.
    using Scheduler = typename K::Kernel::TileScheduler;
    args.scheduler.splits = 1;
    args.scheduler.reduction_mode = Scheduler::ReductionMode::Deterministic;
    args.scheduler.decomposition_mode = Scheduler::DecompositionMode::Heuristic;
  }
  return args;
}

template <class K>
const char* run_gemm(const ConvPlan& plan, const ConvPointers& ptrs, cudaStream_t stream) {
  return launch_op<typename K::Op>(gemm_arguments<K>(plan, ptrs), ptrs, stream);
}

template <int Config>
const char* launch_gemm(const ConvPlan& plan, const ConvPointers& ptrs, cudaStream_t stream) {
  return by_dtype_and_residual(plan, [&](auto element, auto residual) -> const char* {
    return run_gemm<GemmKernel<decltype(element), Config, decltype(residual)::value>>(plan, ptrs,
                                                                                       stream);
  });
}

// Workspace bytes of a GEMM configuration for the plan on ptrs' device.
template <int Config>
size_t gemm_workspace(const ConvPlan& plan, const ConvPointers& ptrs) {
  size_t bytes = 0;
  by_dtype_and_residual(plan, [&](auto element, auto residual) -> const char* {
    using K = GemmKernel<decltype(element), Config, decltype(residual)::value>;
    bytes = K::Op::get_workspace_size(gemm_arguments<K>(plan, ptrs));
    return nullptr;
  });
  return bytes;
}

}  // namespace detail
}  // namespace sm90
}  // namespace resnet_fused
