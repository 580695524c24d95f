// The `_sm90_conv_plan` debug op: the host-side plan (conv_plan.h) as "key=value" strings, so
// tests on machines without a GPU check exactly what the CUTLASS translation units will be given.
// Registered for every device (it takes no tensor); compiled into every build.
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <vector>

#include "conv_plan.h"

namespace resnet_fused {
namespace sm90 {
namespace {

cuda::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, "_sm90_conv_plan: dtype must be float32, float16 or bfloat16, got ", t);
  }
}

template <typename T, size_t N>
std::string join(const T (&values)[N]) {
  std::string s;
  for (size_t i = 0; i < N; ++i) s += (i ? "," : "") + std::to_string(values[i]);
  return s;
}

std::vector<std::string> plan_op(at::IntArrayRef input_size, at::IntArrayRef weight_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::ScalarType dtype, bool residual, bool relu, int64_t sm,
                                 c10::string_view config) {
  TORCH_CHECK(input_size.size() == 4, "_sm90_conv_plan: input_size must be (N, C, H, W), got ",
              input_size);
  TORCH_CHECK(weight_size.size() == 4,
              "_sm90_conv_plan: weight_size must be (C_out, C_in, R, S), got ", weight_size);
  TORCH_CHECK(weight_size[1] == input_size[1], "_sm90_conv_plan: weight_size[1] (",
              weight_size[1], ") must equal input_size[1] (", input_size[1], ")");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2,
              "_sm90_conv_plan: stride and padding must have two entries each");
  ConvProblem p;
  p.n = input_size[0];
  p.c = input_size[1];
  p.h = input_size[2];
  p.w = input_size[3];
  p.k = weight_size[0];
  p.r = weight_size[2];
  p.s = weight_size[3];
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dtype = to_dtype(dtype);
  p.residual = residual;
  p.relu = relu;
  p.sm = static_cast<int>(sm);
  int index = -1;
  if (!config.empty()) {
    index = find_config(std::string(config).c_str());
    TORCH_CHECK(index >= 0, "_sm90_conv_plan: unknown configuration '", std::string(config), "'");
  }
  const ConvPlan plan = plan_conv(p, index);
  std::vector<std::string> out;
  auto add = [&](const char* key, const std::string& value) {
    out.push_back(std::string(key) + "=" + value);
  };
  add("ok", plan.ok ? "1" : "0");
  if (!plan.ok) {
    add("why", plan.why);
    return out;
  }
  const TileConfig& cfg = kConfigs[plan.config];
  add("family", family_name(plan.family));
  add("config", cfg.name);
  add("gemm", plan.gemm ? "1" : "0");
  add("stream_k", plan.stream_k ? "1" : "0");
  add("tile", join({cfg.tile_m, cfg.tile_n, cfg.tile_k}));
  add("cluster", join({cfg.cluster_m, cfg.cluster_n}));
  add("residual", plan.residual ? "1" : "0");
  add("relu", plan.relu ? "1" : "0");
  add("element_bytes", std::to_string(plan.element_bytes));
  add("c_padded", std::to_string(plan.c_padded));
  add("pad_channels", plan.pad_channels ? "1" : "0");
  add("act_shape", join(plan.act_shape));
  add("act_stride", join(plan.act_stride));
  add("flt_shape", join(plan.flt_shape));
  add("flt_stride", join(plan.flt_stride));
  add("out_shape", join(plan.out_shape));
  add("out_stride", join(plan.out_stride));
  add("lower_padding", join(plan.lower_padding));
  add("upper_padding", join(plan.upper_padding));
  add("traversal_stride", join(plan.traversal_stride));
  add("dilation", join(plan.dilation));
  add("gemm_mnk", join({plan.gemm_m, plan.gemm_n, plan.gemm_k}));
  add("k_tiles", std::to_string(plan.k_tiles));
  add("grid", join({plan.grid_m, plan.grid_n}));
  add("output_tiles", std::to_string(plan.output_tiles));
  add("tma_a_dims", join(plan.tma_a_dims));
  add("tma_a_strides_bytes", join(plan.tma_a_strides_bytes));
  add("tma_a_lower_corner", join(plan.tma_a_lower_corner));
  add("tma_a_upper_corner", join(plan.tma_a_upper_corner));
  add("tma_a_element_strides", join(plan.tma_a_element_strides));
  add("tma_a_channels_per_pixel", std::to_string(plan.tma_a_channels_per_pixel));
  add("tma_a_pixels_per_column", std::to_string(plan.tma_a_pixels_per_column));
  add("tma_b_dims", join(plan.tma_b_dims));
  add("tma_b_strides_bytes", join(plan.tma_b_strides_bytes));
  add("tma_b_box", join(plan.tma_b_box));
  add("epi_stride_qpn", join(plan.epi_stride_qpn));
  add("epi_vector_len", std::to_string(plan.epi_vector_len));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fused, CompositeExplicitAutograd, m) {
  m.impl("_sm90_conv_plan", &plan_op);
}

}  // namespace sm90
}  // namespace resnet_fused
