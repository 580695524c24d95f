// The sm_90a fused conv on CUTLASS 3.x: implicit-GEMM conv fprop with TMA loads (im2col for the
// activations, tiled for the filters), the warp-specialized warpgroup-MMA (wgmma) mainloop, and an
// epilogue visitor tree computing
//     out = act(scale[k] * acc + shift[k] (+ residual))
// in fp32 on the accumulators, stored in fp16/bf16 through shared memory by TMA (full 128-byte
// lines). Included only by the per-configuration translation units cutlass_conv_config<i>.cu,
// which setup.py compiles with -gencode arch=compute_90a,code=sm_90a and -DNDEBUG (without it,
// device asserts stay in and ptxas serializes the wgmma ops).
//
// Everything about the problem comes from the host-side ConvPlan (conv_plan.h): shapes, strides,
// padding, the configuration and the epilogue variant. This file only maps a plan onto CUTLASS's
// argument structures and checks that CUTLASS agrees with the plan.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <type_traits>

// cutlass.h and kernel_hardware_info.hpp first: the conv collective headers use them unincluded.
#include "cutlass/cutlass.h"
#include "cutlass/kernel_hardware_info.hpp"

#include "cute/tensor.hpp"
#include "cutlass/conv/collective/collective_builder.hpp"
#include "cutlass/conv/convnd_problem_shape.hpp"
#include "cutlass/conv/convolution.h"
#include "cutlass/conv/device/conv_universal_adapter.hpp"
#include "cutlass/conv/dispatch_policy.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/numeric_types.h"

#include "cutlass_conv.h"

namespace resnet_fused {
namespace sm90 {
namespace detail {

// ReLU chosen at run time (one instantiation serves relu and no-relu). NaN propagates, as
// torch.relu does: a NaN is not < 0, so it passes through.
template <class T>
struct ReluIf {
  struct Arguments {
    bool enabled = true;
  };
  CUTLASS_HOST_DEVICE T operator()(T const& v, Arguments const& args) const {
    return (args.enabled && v < T(0)) ? T(0) : v;
  }
};
template <class T, int N>
struct ReluIf<cutlass::Array<T, N>> {
  using Arguments = typename ReluIf<T>::Arguments;
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& v,
                                                      Arguments const& args) const {
    cutlass::Array<T, N> out;
    ReluIf<T> op;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = op(v[i], args);
    return out;
  }
};

// The epilogue visitor tree of every sm90 kernel (the conv here, the 1x1 GEMM in
// cutlass_gemm.cuh): out = act(scale[n] * acc + shift[n] (+ residual)), fp32 math, one rounding.
// GEMM N is the output channel, so the per-channel vectors are row broadcasts (one value per
// column), read as 16-byte fp32 vectors; the residual is the source tensor C, or there is no
// source at all (ElementC = void: nothing is loaded for it).
template <class Element, class TileShape, bool kResidual>
struct FusedEpilogue {
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;
  using ChannelVector = cutlass::epilogue::fusion::Sm90RowBroadcast<
      0, TileShape, float, float, cute::Stride<cute::_0, cute::_1, int64_t>, 4>;
  using ScaleShift = cutlass::epilogue::fusion::Sm90EVT<  // scale[n] * acc + shift[n]
      cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, float, float,
                                             kRound>,
      ChannelVector, cutlass::epilogue::fusion::Sm90AccFetch, ChannelVector>;
  using WithResidual = cutlass::epilogue::fusion::Sm90EVT<  // residual + (scale * acc + shift)
      cutlass::epilogue::fusion::Sm90Compute<cutlass::plus, float, float, kRound>,
      cutlass::epilogue::fusion::Sm90SrcFetch<Element>, ScaleShift>;
  using Fusion = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<ReluIf, Element, float, kRound>,
      cute::conditional_t<kResidual, WithResidual, ScaleShift>>;
  using ElementC = cute::conditional_t<kResidual, Element, void>;
  using PtrC = cute::conditional_t<kResidual, Element const*, void const*>;

  // The tree's arguments for one call: children first, then each node's own.
  static typename Fusion::Arguments arguments(const ConvPointers& ptrs, bool relu) {
    using VectorArgs = typename ChannelVector::Arguments;
    const VectorArgs scale{ptrs.scale, 0.f, {}};
    const VectorArgs shift{ptrs.shift, 0.f, {}};
    const typename ScaleShift::Arguments scale_shift{scale, {}, shift, {}};
    const typename ReluIf<float>::Arguments act{relu};
    if constexpr (kResidual) {
      return {{{}, scale_shift, {}}, act};
    } else {
      return {scale_shift, act};
    }
  }
};

// CUTLASS's adapter reads (and so clears) the CUDA error itself before it returns a failed
// Status: the message says CUTLASS's status, and a CUDA error only if one is still pending.
inline const char* error_message(const char* what, cutlass::Status status) {
  thread_local char buf[320];
  const cudaError_t err = cudaGetLastError();
  std::snprintf(buf, sizeof(buf), "%s (CUTLASS: %s%s%s)", what,
                cutlass::cutlassGetStatusString(status), err == cudaSuccess ? "" : "; CUDA: ",
                err == cudaSuccess ? "" : cudaGetErrorString(err));
  return buf;
}

// Checks, initializes and launches a CUTLASS device operator (conv or GEMM adapter) on `stream`
// with the caller's workspace (ConvPointers::workspace); nullptr or what failed.
template <class Op>
const char* launch_op(const typename Op::Arguments& args, const ConvPointers& ptrs,
                      cudaStream_t stream) {
  Op op;
  if (Op::get_workspace_size(args) > ptrs.workspace_size) {
    return "sm90_cutlass: the kernel needs more workspace than the binding allocated "
           "(workspace_bytes and the launch disagree: a bug)";
  }
  cutlass::Status status = op.can_implement(args);
  if (status != cutlass::Status::kSuccess) {
    return error_message("sm90_cutlass: CUTLASS rejects a problem the plan accepted (a plan bug)",
                         status);
  }
  status = op.initialize(args, ptrs.workspace, stream);
  if (status != cutlass::Status::kSuccess) {
    return error_message("sm90_cutlass: CUTLASS could not initialize the kernel (TMA "
                         "descriptors or shared-memory setup)", status);
  }
  status = op.run(stream);
  if (status != cutlass::Status::kSuccess) {
    return error_message("sm90_cutlass: kernel launch failed", status);
  }
  return nullptr;
}

// The kernel of configuration `Config` (kConfigs[Config]) for `Element` (half_t or bfloat16_t),
// with the residual as the epilogue's source tensor C or without any source.
template <class Element, int Config, bool kResidual>
struct ConvKernel {
  static constexpr TileConfig kCfg = kConfigs[Config];
  using TileShape = cute::Shape<cute::Int<kCfg.tile_m>, cute::Int<kCfg.tile_n>,
                                cute::Shape<cute::Int<kCfg.tile_k>>>;
  using ClusterShape = cute::Shape<cute::Int<kCfg.cluster_m>, cute::Int<kCfg.cluster_n>, cute::_1>;
  static constexpr int kAlignment = 128 / cutlass::sizeof_bits<Element>::value;  // 16 bytes
  using Layout = cutlass::layout::TensorNHWC;  // NHWC activations, KRSC filters, NPQK output
  using Tree = FusedEpilogue<Element, TileShape, kResidual>;
  using Fusion = typename Tree::Fusion;
  using ElementC = typename Tree::ElementC;

  // The epilogue schedule is named (the automatic choice has no fusion support) and matches the
  // non-persistent kernel schedule, the only one CUTLASS's sm90 conv kernel takes.
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementC, Layout, kAlignment,
      Element, Layout, kAlignment, cutlass::epilogue::TmaWarpSpecialized, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop,
      Element, Layout, kAlignment, Element, Layout, kAlignment, float, TileShape, ClusterShape,
      cutlass::conv::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
  using Problem = cutlass::conv::ConvProblemShape<cutlass::conv::Operator::kFprop, 2>;
  using Kernel = cutlass::conv::kernel::ConvUniversal<Problem, Mainloop, Epilogue>;
  using Op = cutlass::conv::device::ConvUniversalAdapter<Kernel>;
};

// CUTLASS's problem, built from the plan.
template <class K>
typename K::Problem make_problem(const ConvPlan& plan) {
  typename K::Problem::TensorExtent act{}, flt{};
  typename K::Problem::TensorStride act_stride{}, flt_stride{};
  for (int i = 0; i < 4; ++i) {
    act[i] = plan.act_shape[i];
    flt[i] = plan.flt_shape[i];
    act_stride[i] = plan.act_stride[i];
    flt_stride[i] = plan.flt_stride[i];
  }
  typename K::Problem::SpatialExtent lower{}, upper{}, stride{}, dilation{};
  for (int i = 0; i < 2; ++i) {
    lower[i] = plan.lower_padding[i];
    upper[i] = plan.upper_padding[i];
    stride[i] = plan.traversal_stride[i];
    dilation[i] = plan.dilation[i];
  }
  return typename K::Problem(cutlass::conv::Mode::kCrossCorrelation, act, act_stride, flt,
                             flt_stride, lower, upper, stride, dilation, /*groups=*/1);
}

template <class K>
const char* run(const ConvPlan& plan, const ConvPointers& ptrs, cudaStream_t stream) {
  using Element = typename K::Mainloop::ElementA;
  const typename K::Problem problem = make_problem<K>(plan);
  for (int i = 0; i < 4; ++i) {
    if (problem.shape_C[i] != plan.out_shape[i] || problem.stride_C[i] != plan.out_stride[i]) {
      return "sm90_cutlass: CUTLASS's output geometry differs from the plan's (a plan bug)";
    }
  }

  typename K::Kernel::StrideD stride_d{};
  cute::get<0, 0>(stride_d) = plan.epi_stride_qpn[0];
  cute::get<0, 1>(stride_d) = plan.epi_stride_qpn[1];
  cute::get<0, 2>(stride_d) = plan.epi_stride_qpn[2];
  typename K::Kernel::StrideC stride_c{};
  cute::get<0, 0>(stride_c) = plan.epi_stride_qpn[0];
  cute::get<0, 1>(stride_c) = plan.epi_stride_qpn[1];
  cute::get<0, 2>(stride_c) = plan.epi_stride_qpn[2];

  typename K::Op::Arguments args{
      problem,
      {static_cast<Element const*>(ptrs.input), static_cast<Element const*>(ptrs.weight)},
      {K::Tree::arguments(ptrs, plan.relu), static_cast<typename K::Tree::PtrC>(ptrs.residual),
       stride_c, static_cast<Element*>(ptrs.output), stride_d}};
  return launch_op<typename K::Op>(args, ptrs, stream);
}

// Calls f(Element{}, std::bool_constant<residual>{}) for the plan's dtype (fp16 or bf16) and
// residual: the one place a configuration's four instantiations are dispatched. f returns a
// message (nullptr: success).
template <class F>
const char* by_dtype_and_residual(const ConvPlan& plan, F&& f) {
  if (plan.dtype != cuda::DType::kBFloat16 && plan.dtype != cuda::DType::kFloat16) {
    return "sm90_cutlass: float16 and bfloat16 only";
  }
  const bool bf16 = plan.dtype == cuda::DType::kBFloat16;
  if (plan.residual) {
    return bf16 ? f(cutlass::bfloat16_t{}, std::true_type{})
                : f(cutlass::half_t{}, std::true_type{});
  }
  return bf16 ? f(cutlass::bfloat16_t{}, std::false_type{})
              : f(cutlass::half_t{}, std::false_type{});
}

template <int Config>
const char* launch(const ConvPlan& plan, const ConvPointers& ptrs, cudaStream_t stream) {
  return by_dtype_and_residual(plan, [&](auto element, auto residual) -> const char* {
    constexpr bool kResidual = decltype(residual)::value;
    if constexpr (kResidual && !kConfigs[Config].residual_variant) {
      return "sm90_cutlass: this configuration has no residual epilogue";
    } else {
      return run<ConvKernel<decltype(element), Config, kResidual>>(plan, ptrs, stream);
    }
  });
}

// The conv kernel is not persistent and takes no workspace.
template <int Config>
size_t no_workspace(const ConvPlan&, const ConvPointers&) {
  return 0;
}

}  // namespace detail
}  // namespace sm90
}  // namespace resnet_fused

// Defines launch_config<I> and workspace_config<I> (declared in cutlass_conv.h) in a
// configuration's translation unit, as detail::LAUNCH<I> and detail::WORKSPACE<I>: `launch` and
// `no_workspace` (the conv kernel), or `launch_gemm` and `gemm_workspace` (cutlass_gemm.cuh).
#define RESNET_FUSED_SM90_CONFIG_TU(I, LAUNCH, WORKSPACE)                               \
  namespace resnet_fused {                                                              \
  namespace sm90 {                                                                      \
  template <>                                                                           \
  const char* launch_config<I>(const ConvPlan& plan, const ConvPointers& ptrs,          \
                               cudaStream_t stream) {                                   \
    return detail::LAUNCH<I>(plan, ptrs, stream);                                       \
  }                                                                                     \
  template <>                                                                           \
  size_t workspace_config<I>(const ConvPlan& plan, const ConvPointers& ptrs) {          \
    return detail::WORKSPACE<I>(plan, ptrs);                                            \
  }                                                                                     \
  }                                                                                     \
  }
