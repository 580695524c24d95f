// Argument validation shared by every C++ implementation (CPU and CUDA), so that each device
// rejects bad input with the same message, naming the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

namespace resnet_fused {

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// Validates conv_bn_act's arguments and returns the output sizes [N, K, Ho, Wo].
inline std::array<int64_t, 4> check_conv_bn_act_args(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& scale,
    const at::Tensor& shift, const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
    at::IntArrayRef padding) {
  TORCH_CHECK(input.dim() == 4, "conv_bn_act: input must be 4-D (N, C, H, W), got ", input.dim(),
              "-D with sizes ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "conv_bn_act: weight must be 4-D (C_out, C_in, R, S), got ",
              weight.dim(), "-D with sizes ", weight.sizes());
  TORCH_CHECK(is_supported_dtype(input.scalar_type()),
              "conv_bn_act: input must be float32, float16 or bfloat16, got ", input.scalar_type());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "conv_bn_act: weight dtype (",
              weight.scalar_type(), ") must match input dtype (", input.scalar_type(), ")");
  TORCH_CHECK(weight.device() == input.device(), "conv_bn_act: weight is on ", weight.device(),
              " but input is on ", input.device());
  TORCH_CHECK(weight.size(1) == input.size(1), "conv_bn_act: weight.size(1) (C_in = ",
              weight.size(1), ") must equal input.size(1) (", input.size(1),
              "); groups other than 1 are not supported");
  const int64_t k = weight.size(0);
  TORCH_CHECK(k >= 1 && weight.size(2) >= 1 && weight.size(3) >= 1,
              "conv_bn_act: weight must have C_out, R, S >= 1, got sizes ", weight.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"scale", scale},
                                std::pair<const char*, const at::Tensor&>{"shift", shift}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == k, "conv_bn_act: ", name,
                " must be 1-D with C_out = ", k, " elements, got sizes ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kFloat, "conv_bn_act: ", name,
                " must be float32 (BatchNorm is folded in fp32), got ", t.scalar_type());
    TORCH_CHECK(t.device() == input.device(), "conv_bn_act: ", name, " is on ", t.device(),
                " but input is on ", input.device());
  }
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1,
              "conv_bn_act: stride must be two integers >= 1, got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0,
              "conv_bn_act: padding must be two integers >= 0, got ", padding);
  const int64_t ho = (input.size(2) + 2 * padding[0] - weight.size(2)) / stride[0] + 1;
  const int64_t wo = (input.size(3) + 2 * padding[1] - weight.size(3)) / stride[1] + 1;
  TORCH_CHECK(input.size(2) + 2 * padding[0] >= weight.size(2) &&
                  input.size(3) + 2 * padding[1] >= weight.size(3) && ho >= 1 && wo >= 1,
              "conv_bn_act: input spatial size (", input.size(2), ", ", input.size(3),
              ") with padding ", padding, " is smaller than the kernel (", weight.size(2), ", ",
              weight.size(3), ")");
  std::array<int64_t, 4> out{input.size(0), k, ho, wo};
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK(r.sizes() == at::IntArrayRef(out), "conv_bn_act: residual must have the output's "
                "sizes ", at::IntArrayRef(out), ", got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == input.scalar_type(), "conv_bn_act: residual dtype (",
                r.scalar_type(), ") must match input dtype (", input.scalar_type(), ")");
    TORCH_CHECK(r.device() == input.device(), "conv_bn_act: residual is on ", r.device(),
                " but input is on ", input.device());
  }
  return out;
}

inline void check_add_relu_args(const at::Tensor& x, const at::Tensor& residual) {
  TORCH_CHECK(is_supported_dtype(x.scalar_type()),
              "add_relu: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(residual.scalar_type() == x.scalar_type(), "add_relu: residual dtype (",
              residual.scalar_type(), ") must match x dtype (", x.scalar_type(), ")");
  TORCH_CHECK(residual.sizes() == x.sizes(), "add_relu: residual sizes ", residual.sizes(),
              " must equal x sizes ", x.sizes());
  TORCH_CHECK(residual.device() == x.device(), "add_relu: residual is on ", residual.device(),
              " but x is on ", x.device());
}

// The output layout every conv_bn_act implementation returns: channels_last, with exactly the
// strides torch.empty(..., memory_format=torch.channels_last) gives (fake impls rely on it).
inline at::Tensor empty_channels_last(std::array<int64_t, 4> sizes, const at::TensorOptions& opt) {
  return at::empty(sizes, opt.memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace resnet_fused
