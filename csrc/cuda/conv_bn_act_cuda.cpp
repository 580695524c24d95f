// CUDA implementations of resnet_fused::conv_bn_act and resnet_fused::add_relu: the thin layer
// between at::Tensor and the torch-free kernels in conv_bn_act_kernel.cu / add_relu_kernel.cu.
//
// It normalizes every input to what the kernels read (NHWC / KRSC dense, channels padded to a
// 16-byte chunk, 16-byte aligned data pointers), allocates the channels_last output and launches
// on the current stream. It never synchronizes the host, so CUDA-graph capture works.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../checks.h"
#include "../impls.h"
#include "../sm90/conv_plan.h"
#include "add_relu_kernel.h"
#include "conv_bn_act_kernel.h"
#ifdef RESNET_FUSED_WITH_SM90
#include "../sm90/cutlass_conv.h"
#endif

namespace resnet_fused {
namespace {

cuda::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, "resnet_fused (cuda): unsupported dtype ", t);
  }
}

// --- PyTorch's TF32-for-convolutions flag, across its API changes --------------------------------
// torch <= 2.8: allowTF32CuDNN(); ~2.9: allowTF32CuDNN(const std::string& op) with "conv";
// newer: allowTF32CuDNN(std::optional<at::Float32Op>) with Float32Op::CONV. The op-specific forms
// honour torch.backends.cudnn.conv.fp32_precision; the no-argument form of the newer APIs would
// raise when conv and RNN flags differ, so it is only used where it is the only form.
template <typename C, typename A>
A first_param(bool (C::*)(A) const);
template <typename C>
void first_param(bool (C::*)() const);
template <typename T>
struct OptionalValue {};
template <typename E>
struct OptionalValue<std::optional<E>> {
  using type = E;
};

template <typename Ctx>
bool conv_tf32_allowed(const Ctx& ctx) {
  using Arg = decltype(first_param(&Ctx::allowTF32CuDNN));
  if constexpr (std::is_void_v<Arg>) {
    return ctx.allowTF32CuDNN();
  } else if constexpr (std::is_convertible_v<const char*, std::decay_t<Arg>>) {
    return ctx.allowTF32CuDNN("conv");
  } else {
    return ctx.allowTF32CuDNN(OptionalValue<std::decay_t<Arg>>::type::CONV);
  }
}

// Debug/test knob: RESNET_FUSED_CUDA_CONV_PATH=direct forces the fallback kernel, =simt the fp32
// FMA kernel (fp32 only). Anything else (or unset) leaves the automatic choice.
std::optional<cuda::ConvPath> forced_conv_path() {
  const char* v = std::getenv("RESNET_FUSED_CUDA_CONV_PATH");
  if (v == nullptr) return std::nullopt;
  if (std::strcmp(v, "direct") == 0) return cuda::ConvPath::kDirect;
  if (std::strcmp(v, "simt") == 0) return cuda::ConvPath::kSimt;
  return std::nullopt;
}

// Compute capability (major * 10 + minor) and SM count of `device`, cached per device: the kernels'
// path and tile choice need them on every call, and they never change.
struct DeviceInfo {
  int sm;
  int num_sms;
};
DeviceInfo device_info(c10::DeviceIndex device) {
  static std::array<std::atomic<int64_t>, 64> cache{};  // 0 = not queried yet
  const bool cacheable = device >= 0 && device < static_cast<int>(cache.size());
  if (cacheable) {
    const int64_t v = cache[device].load(std::memory_order_relaxed);
    if (v != 0) return {static_cast<int>(v >> 32), static_cast<int>(v & 0xffffffff)};
  }
  int major = 0, minor = 0, sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const DeviceInfo info{major * 10 + minor, sms};
  if (cacheable) {
    cache[device].store((static_cast<int64_t>(info.sm) << 32) | info.num_sms,
                        std::memory_order_relaxed);
  }
  return info;
}

bool aligned16(const at::Tensor& t) {
  return (reinterpret_cast<uintptr_t>(t.const_data_ptr()) & 15) == 0;
}

// A dense channels_last copy of a 4-D tensor with `channels` >= t.size(1) channels, the extra
// ones zero (zero input channels x zero weights add nothing to the conv).
// A fresh output, NaN-filled first while poison_outputs() is set (csrc/impls.h): then an element
// the kernel fails to write is NaN, whatever memory the allocator handed back.
at::Tensor new_output(at::Tensor out) {
  if (poison_outputs() && out.numel() > 0) out.fill_(std::numeric_limits<float>::quiet_NaN());
  return out;
}

at::Tensor pad_channels(const at::Tensor& t, int64_t channels) {
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes[1] = channels;
  at::Tensor out =
      at::empty(sizes, t.options().memory_format(at::MemoryFormat::ChannelsLast)).zero_();
  out.narrow(1, 0, t.size(1)).copy_(t);
  return out;
}

// t as a dense channels_last tensor whose data pointer is 16-byte aligned (a contiguous view with
// a storage offset may not be; cp.async and the vector accesses need it).
at::Tensor nhwc_aligned(const at::Tensor& t) {
  at::Tensor out = t.contiguous(at::MemoryFormat::ChannelsLast);
  if (!aligned16(out)) out = out.clone(at::MemoryFormat::ChannelsLast);
  return out;
}

int to_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= INT_MAX, "conv_bn_act (cuda): ", what, " = ", v,
              " does not fit the kernels' 32-bit size fields");
  return static_cast<int>(v);
}

at::Tensor conv_bn_act_cuda(const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& scale, const at::Tensor& shift,
                            const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                            at::IntArrayRef padding, bool relu) {
  const auto out_sizes =
      check_conv_bn_act_args(input, weight, scale, shift, residual, stride, padding);
  TORCH_CHECK(input.is_cuda(), "conv_bn_act (cuda): input must be a CUDA tensor, got ",
              input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = new_output(empty_channels_last(out_sizes, input.options()));
  if (out.numel() == 0) return out;  // N == 0: nothing to launch

  const cuda::DType dtype = kernel_dtype(input.scalar_type());
  const int64_t c_in = input.size(1);
  const int64_t align = cuda::conv_bn_act_channel_alignment(dtype);
  const int64_t c_pad = (c_in + align - 1) / align * align;  // 0 stays 0 (direct path)
  at::Tensor x, w;
  if (c_pad != c_in) {
    // e.g. the stem's 3 channels -> 8: invisible to callers, costs one small copy per call.
    x = pad_channels(input, c_pad);
    w = pad_channels(weight, c_pad);
  } else {
    x = nhwc_aligned(input);
    w = nhwc_aligned(weight);
  }
  at::Tensor res;
  if (residual.has_value()) res = nhwc_aligned(*residual);
  const at::Tensor scale_c = scale.contiguous();
  const at::Tensor shift_c = shift.contiguous();

  cuda::ConvBnActParams p;
  p.input = x.const_data_ptr();
  p.weight = w.const_data_ptr();
  p.scale = scale_c.const_data_ptr<float>();
  p.shift = shift_c.const_data_ptr<float>();
  p.residual = res.defined() ? res.const_data_ptr() : nullptr;
  p.output = out.mutable_data_ptr();
  p.n = to_int(x.size(0), "N");
  p.c = to_int(x.size(1), "C_in");
  p.h = to_int(x.size(2), "H");
  p.w = to_int(x.size(3), "W");
  p.k = to_int(w.size(0), "C_out");
  p.r = to_int(w.size(2), "R");
  p.s = to_int(w.size(3), "S");
  p.p = to_int(out_sizes[2], "H_out");
  p.q = to_int(out_sizes[3], "W_out");
  p.stride_h = to_int(stride[0], "stride[0]");
  p.stride_w = to_int(stride[1], "stride[1]");
  p.pad_h = to_int(padding[0], "padding[0]");
  p.pad_w = to_int(padding[1], "padding[1]");
  p.relu = relu;
  p.dtype = dtype;
  p.allow_tf32 = dtype == cuda::DType::kFloat32 && conv_tf32_allowed(at::globalContext());

  const DeviceInfo dev = device_info(input.device().index());
  const char* why = nullptr;
  cuda::ConvPath path = cuda::select_conv_path(p, dev.sm, &why);
  if (const auto forced = forced_conv_path()) {
    if (*forced == cuda::ConvPath::kDirect ||
        (path != cuda::ConvPath::kDirect && dtype == cuda::DType::kFloat32)) {
      path = *forced;
    }
  } else if (path == cuda::ConvPath::kDirect && x.numel() > 0) {
    TORCH_WARN_ONCE("resnet_fused conv_bn_act (cuda): using the slow direct-convolution fallback ",
                    "kernel: ", why, ". Results are correct; performance is not.");
  }
  C10_CUDA_CHECK(cuda::launch_conv_bn_act(p, path, dev.num_sms,
                                          c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

// --- conv_bn_act through a named implementation (csrc/impls.h) ----------------------------------

// The sm90 plan of a call (shapes only; see csrc/sm90/conv_plan.h).
sm90::ConvPlan sm90_plan(const at::Tensor& input, const at::Tensor& weight, bool residual,
                         at::IntArrayRef stride, at::IntArrayRef padding, bool relu, int config) {
  sm90::ConvProblem p;
  p.n = input.size(0);
  p.c = input.size(1);
  p.h = input.size(2);
  p.w = input.size(3);
  p.k = weight.size(0);
  p.r = weight.size(2);
  p.s = weight.size(3);
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dtype = kernel_dtype(input.scalar_type());
  p.residual = residual;
  p.relu = relu;
  p.sm = device_info(input.device().index()).sm;
  return sm90::plan_conv(p, config);
}

// A contiguous fp32 vector whose data pointer is 16-byte aligned (the epilogue reads 16 bytes).
at::Tensor aligned_vector(const at::Tensor& t) {
  at::Tensor out = t.contiguous();
  if (!aligned16(out)) out = out.clone();
  return out;
}

#ifdef RESNET_FUSED_WITH_SM90
// Each configuration's launcher and workspace size, by its index in sm90::kConfigs: one
// csrc/sm90/cutlass_conv_config<i>.cu per entry defines them (a missing one fails the link).
struct Sm90Config {
  const char* (*launch)(const sm90::ConvPlan&, const sm90::ConvPointers&, cudaStream_t);
  size_t (*workspace)(const sm90::ConvPlan&, const sm90::ConvPointers&);
};
template <int... I>
constexpr std::array<Sm90Config, sizeof...(I)> sm90_configs(std::integer_sequence<int, I...>) {
  return {Sm90Config{&sm90::launch_config<I>, &sm90::workspace_config<I>}...};
}
constexpr auto kSm90Configs = sm90_configs(std::make_integer_sequence<int, sm90::kNumConfigs>{});
#endif

at::Tensor conv_bn_act_sm90(const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& scale, const at::Tensor& shift,
                            const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                            at::IntArrayRef padding, bool relu, int config,
                            const std::string& name) {
  const std::string absent = impl_absent_reason(CudaImpl::kSm90Cutlass);
  TORCH_CHECK(absent.empty(), "conv_bn_act_cuda_impl: '", name, "' is not in this build: ",
              absent);
  const auto out_sizes =
      check_conv_bn_act_args(input, weight, scale, shift, residual, stride, padding);
  TORCH_CHECK(input.is_cuda(), "conv_bn_act_cuda_impl: input must be a CUDA tensor, got ",
              input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = new_output(empty_channels_last(out_sizes, input.options()));
  if (out.numel() == 0) return out;  // N == 0: nothing to launch
  const sm90::ConvPlan plan =
      sm90_plan(input, weight, residual.has_value(), stride, padding, relu, config);
  TORCH_CHECK(plan.ok, "conv_bn_act_cuda_impl: '", name, "' cannot take this call: ", plan.why);
#ifdef RESNET_FUSED_WITH_SM90
  // The operands as the plan lays them out: dense NHWC / KRSC, channels padded to c_padded (the
  // stem's 3 -> 8, one small copy per call), 16-byte aligned data pointers (TMA needs them).
  const at::Tensor x = plan.pad_channels ? pad_channels(input, plan.c_padded) : nhwc_aligned(input);
  const at::Tensor w =
      plan.pad_channels ? pad_channels(weight, plan.c_padded) : nhwc_aligned(weight);
  at::Tensor res;
  if (residual.has_value()) res = nhwc_aligned(*residual);
  const at::Tensor scale_a = aligned_vector(scale);
  const at::Tensor shift_a = aligned_vector(shift);
  sm90::ConvPointers ptrs;
  ptrs.input = x.const_data_ptr();
  ptrs.weight = w.const_data_ptr();
  ptrs.scale = scale_a.const_data_ptr<float>();
  ptrs.shift = shift_a.const_data_ptr<float>();
  ptrs.residual = res.defined() ? res.const_data_ptr() : nullptr;
  ptrs.output = out.mutable_data_ptr();
  ptrs.device = input.device().index();
  ptrs.sm_count = device_info(input.device().index()).num_sms;
  const Sm90Config& kernel = kSm90Configs.at(plan.config);
  // Stream-K's scratch, from PyTorch's caching allocator: stream-ordered (freed here, reused
  // only after this kernel on this stream) and capturable into CUDA graphs.
  at::Tensor workspace;
  ptrs.workspace_size = kernel.workspace(plan, ptrs);
  if (ptrs.workspace_size > 0) {
    workspace = at::empty({static_cast<int64_t>(ptrs.workspace_size)},
                          input.options().dtype(at::kByte));
    ptrs.workspace = workspace.mutable_data_ptr();
  }
  const char* err = kernel.launch(plan, ptrs, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "conv_bn_act_cuda_impl: ", err);
#endif
  return out;
}

at::Tensor conv_bn_act_cuda_impl(const at::Tensor& input, const at::Tensor& weight,
                                 const at::Tensor& scale, const at::Tensor& shift,
                                 const std::optional<at::Tensor>& residual,
                                 at::IntArrayRef stride, at::IntArrayRef padding, bool relu,
                                 c10::string_view impl) {
  const std::string name(impl);
  const ImplChoice choice = parse_impl(name);
  if (choice.impl == CudaImpl::kMmaSync) {
    return conv_bn_act_cuda(input, weight, scale, shift, residual, stride, padding, relu);
  }
  return conv_bn_act_sm90(input, weight, scale, shift, residual, stride, padding, relu,
                          choice.config, name);
}

std::string cuda_impl_supports(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                               at::IntArrayRef padding, c10::string_view impl) {
  const ImplChoice choice = parse_impl(std::string(impl));
  const std::string absent = impl_absent_reason(choice.impl);
  if (!absent.empty()) return "not in this build: " + absent;
  if (choice.impl == CudaImpl::kMmaSync) return "";  // takes every valid call (slow fallbacks)
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4 && stride.size() == 2 && padding.size() == 2,
              "cuda_impl_supports: input and weight must be 4-D, stride and padding pairs");
  TORCH_CHECK(input.is_cuda(), "cuda_impl_supports: input must be a CUDA tensor, got ",
              input.device());
  if (!is_supported_dtype(input.scalar_type())) return "unsupported dtype";
  if (input.size(0) == 0) return "";  // nothing to launch: every implementation returns empty
  const sm90::ConvPlan plan =
      sm90_plan(input, weight, residual.has_value(), stride, padding, /*relu=*/true,
                choice.config);
  return plan.ok ? "" : plan.why;
}

at::Tensor add_relu_cuda(const at::Tensor& x, const at::Tensor& residual) {
  check_add_relu_args(x, residual);
  TORCH_CHECK(x.is_cuda(), "add_relu (cuda): x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = new_output(at::empty_like(x));  // dense; x's strides when x is dense
  if (out.numel() == 0) return out;
  // The kernel walks storage flat, so all three must share one dense layout: out's. Operands in
  // another layout (or not dense) are first copied into it: correct, if not fused.
  at::Tensor xs = x;
  if (!x.is_non_overlapping_and_dense() || x.strides() != out.strides()) {
    xs = at::empty_like(out);
    xs.copy_(x);
  }
  at::Tensor rs = residual;
  if (!residual.is_non_overlapping_and_dense() || residual.strides() != out.strides()) {
    rs = at::empty_like(out);
    rs.copy_(residual);
  }
  C10_CUDA_CHECK(cuda::launch_add_relu(xs.const_data_ptr(), rs.const_data_ptr(),
                                       out.mutable_data_ptr(), out.numel(),
                                       kernel_dtype(x.scalar_type()),
                                       c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fused, CUDA, m) {
  m.impl("conv_bn_act", &conv_bn_act_cuda);
  m.impl("add_relu", &add_relu_cuda);
  m.impl("conv_bn_act_cuda_impl", &conv_bn_act_cuda_impl);
  m.impl("cuda_impl_supports", &cuda_impl_supports);
}

}  // namespace resnet_fused
