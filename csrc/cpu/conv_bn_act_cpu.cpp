// CPU implementation of conv_bn_act and add_relu.
//
// The convolution itself is ATen's (oneDNN on channels_last). What this file adds is the part
// eager PyTorch spends a third of ResNet-50's time on: BatchNorm, the residual add and ReLU each
// read and write the whole activation, out of place (fresh pages every call). Here they become
// one vectorized pass over the convolution's output, in place, in fp32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "../checks.h"
#include "vector_clones.h"

namespace resnet_fused {
namespace {

// Rows of at least this many elements per parallel task keep thread start-up cheap.
constexpr int64_t kElementsPerTask = 32768;

// Rows [begin, end) of the (M, K) row-major view of an NHWC tensor (a row: the K channels of
// one pixel), in place: y = act(y * scale + shift (+ res)). Written as plain loops with the
// options as template parameters so the compiler vectorizes them (for AVX-512/AVX2 as well as
// the baseline, see vector_clones.h); ATen's generic at::vec::Vectorized, what a non-AVX build
// of an extension gets, was 10x slower here.
template <typename T, bool kResidual, bool kRelu>
RESNET_FUSED_VECTOR_CLONES
void epilogue_rows(T* __restrict__ y, const T* __restrict__ res,
                   const float* __restrict__ scale, const float* __restrict__ shift,
                   int64_t begin, int64_t end, int64_t k) {
  for (int64_t row = begin; row < end; ++row) {
    T* yr = y + row * k;
    const T* rr = kResidual ? res + row * k : nullptr;
    for (int64_t c = 0; c < k; ++c) {
      float v = static_cast<float>(yr[c]) * scale[c] + shift[c];
      if constexpr (kResidual) v += static_cast<float>(rr[c]);
      if constexpr (kRelu) v = v < 0.f ? 0.f : v;  // NaN propagates, as in torch.relu
      yr[c] = static_cast<T>(v);
    }
  }
}

// The whole (M, K) view, one read and one write of the activation, no fresh allocation.
template <typename T, bool kResidual, bool kRelu>
void epilogue_nhwc(T* y, const T* res, const float* scale, const float* shift, int64_t rows,
                   int64_t k) {
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / k);
  at::parallel_for(0, rows, grain, [&](int64_t row_begin, int64_t row_end) {
    epilogue_rows<T, kResidual, kRelu>(y, res, scale, shift, row_begin, row_end, k);
  });
}

template <typename T>
void epilogue_nhwc(T* y, const T* res, const float* scale, const float* shift, int64_t rows,
                   int64_t k, bool relu) {
  if (res) {
    relu ? epilogue_nhwc<T, true, true>(y, res, scale, shift, rows, k)
         : epilogue_nhwc<T, true, false>(y, res, scale, shift, rows, k);
  } else {
    relu ? epilogue_nhwc<T, false, true>(y, res, scale, shift, rows, k)
         : epilogue_nhwc<T, false, false>(y, res, scale, shift, rows, k);
  }
}

at::Tensor conv_bn_act_cpu(const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& scale, const at::Tensor& shift,
                           const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool relu) {
  const auto out_sizes =
      check_conv_bn_act_args(input, weight, scale, shift, residual, stride, padding);
  TORCH_CHECK(input.device().is_cpu(), "conv_bn_act (cpu): input must be a CPU tensor");
  if (out_sizes[0] * out_sizes[1] * out_sizes[2] * out_sizes[3] == 0) {
    return empty_channels_last(out_sizes, input.options());
  }

  // oneDNN 3.12's AMX bf16 convolution returns garbage (1e37, NaN) for strided convs over inputs
  // at most 2 pixels wide (seen on Intel Xeons with AMX; eager PyTorch is as wrong). Such inputs
  // are tiny: compute them in fp32 on every CPU (one rounding at the end, within every bound).
  if (input.scalar_type() != at::kFloat && (stride[0] > 1 || stride[1] > 1) &&
      (input.size(2) <= 2 || input.size(3) <= 2)) {
    const std::optional<at::Tensor> res32 =
        residual.has_value() ? std::optional<at::Tensor>(residual->to(at::kFloat)) : std::nullopt;
    const at::Tensor out32 = conv_bn_act_cpu(input.to(at::kFloat), weight.to(at::kFloat), scale,
                                             shift, res32, stride, padding, relu);
    at::Tensor out = empty_channels_last(out_sizes, input.options());
    out.copy_(out32);
    return out;
  }
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor conv = at::convolution(input.contiguous(cl), weight.contiguous(cl), /*bias=*/{},
                                    stride, padding, /*dilation=*/{1, 1}, /*transposed=*/false,
                                    /*output_padding=*/{0, 0}, /*groups=*/1);
  // oneDNN returns channels_last here; the epilogue then works in place on its buffer. Only when
  // its strides differ from the canonical ones (size-1 dims, other conv paths) is a copy needed.
  at::Tensor out = conv;
  if (!conv.is_contiguous(cl) || conv.strides() != c10::get_channels_last_strides_2d(conv.sizes())) {
    out = empty_channels_last(out_sizes, input.options());
    out.copy_(conv);
  }
  at::Tensor res;
  if (residual.has_value()) res = residual->contiguous(cl);
  const at::Tensor scale_c = scale.contiguous();
  const at::Tensor shift_c = shift.contiguous();
  const int64_t k = out_sizes[1];
  const int64_t rows = out.numel() / k;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_bn_act_cpu",
                                  [&] {
                                    epilogue_nhwc<scalar_t>(
                                        out.data_ptr<scalar_t>(),
                                        res.defined() ? res.const_data_ptr<scalar_t>() : nullptr,
                                        scale_c.const_data_ptr<float>(),
                                        shift_c.const_data_ptr<float>(), rows, k, relu);
                                  });
  return out;
}

// The backward's epilogue, rows [begin, end) of the (M, K) NHWC views: dz = grad, or 0 where
// out <= 0 (a NaN output passes its gradient, as in torch's threshold_backward), d_conv = dz *
// scale in fp32, each rounded once to T; dz stored only when asked for (the residual's gradient).
template <typename T, bool kRelu, bool kMasked>
RESNET_FUSED_VECTOR_CLONES
void grad_epilogue_rows(const T* __restrict__ grad, const T* __restrict__ out,
                        const float* __restrict__ scale, T* __restrict__ d_conv,
                        T* __restrict__ masked, int64_t begin, int64_t end, int64_t k) {
  for (int64_t row = begin; row < end; ++row) {
    const int64_t o = row * k;
    for (int64_t c = 0; c < k; ++c) {
      float g = static_cast<float>(grad[o + c]);
      if constexpr (kRelu) g = static_cast<float>(out[o + c]) <= 0.f ? 0.f : g;
      if constexpr (kMasked) masked[o + c] = static_cast<T>(g);
      d_conv[o + c] = static_cast<T>(g * scale[c]);
    }
  }
}

template <typename T, bool kRelu, bool kMasked>
void grad_epilogue_nhwc(const T* grad, const T* out, const float* scale, T* d_conv, T* masked,
                        int64_t rows, int64_t k) {
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / k);
  at::parallel_for(0, rows, grain, [&](int64_t row_begin, int64_t row_end) {
    grad_epilogue_rows<T, kRelu, kMasked>(grad, out, scale, d_conv, masked, row_begin, row_end,
                                          k);
  });
}

// (d_conv, dz) for conv_bn_act's backward (resnet_fused/autograd.py): one pass instead of a
// threshold, an fp32 copy, a multiply and a copy back. dz is empty unless `masked`.
std::tuple<at::Tensor, at::Tensor> conv_bn_act_grad_epilogue_cpu(const at::Tensor& grad,
                                                                 const at::Tensor& out,
                                                                 const at::Tensor& scale,
                                                                 bool relu, bool masked) {
  constexpr const char* op = "conv_bn_act_grad_epilogue";
  TORCH_CHECK(grad.dim() == 4 && grad.sizes() == out.sizes(), op,
              ": grad and out must be 4-D of the same sizes, got ", grad.sizes(), " and ",
              out.sizes());
  TORCH_CHECK(is_supported_dtype(grad.scalar_type()) && out.scalar_type() == grad.scalar_type(),
              op, ": grad and out must share a float32/float16/bfloat16 dtype, got ",
              grad.scalar_type(), " and ", out.scalar_type());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == grad.size(1) &&
                  scale.scalar_type() == at::kFloat,
              op, ": scale must be 1-D float32 with C = ", grad.size(1), " elements, got ",
              scale.scalar_type(), " with sizes ", scale.sizes());
  TORCH_CHECK(grad.device().is_cpu() && out.device().is_cpu() && scale.device().is_cpu(), op,
              " (cpu): tensors must be on the CPU");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const std::array<int64_t, 4> sizes{grad.size(0), grad.size(1), grad.size(2), grad.size(3)};
  at::Tensor d_conv = empty_channels_last(sizes, grad.options());
  at::Tensor dz = masked ? empty_channels_last(sizes, grad.options()) : at::empty({0}, grad.options());
  if (d_conv.numel() == 0) return {d_conv, dz};
  // Canonical channels_last strides on both sides: then every tensor is one (M, K) row-major view.
  const auto canonical = [&](const at::Tensor& t) {
    if (t.strides() == d_conv.strides()) return t;
    at::Tensor copy = at::empty_like(d_conv);
    copy.copy_(t);
    return copy;
  };
  const at::Tensor g = canonical(grad);
  const at::Tensor o = relu ? canonical(out) : out;
  const at::Tensor s = scale.contiguous();
  const int64_t k = sizes[1];
  const int64_t rows = d_conv.numel() / k;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), op, [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* op_ = relu ? o.const_data_ptr<scalar_t>() : nullptr;
    const float* sp = s.const_data_ptr<float>();
    scalar_t* dp = d_conv.mutable_data_ptr<scalar_t>();
    scalar_t* mp = masked ? dz.mutable_data_ptr<scalar_t>() : nullptr;
    if (relu) {
      masked ? grad_epilogue_nhwc<scalar_t, true, true>(gp, op_, sp, dp, mp, rows, k)
             : grad_epilogue_nhwc<scalar_t, true, false>(gp, op_, sp, dp, mp, rows, k);
    } else {
      masked ? grad_epilogue_nhwc<scalar_t, false, true>(gp, op_, sp, dp, mp, rows, k)
             : grad_epilogue_nhwc<scalar_t, false, false>(gp, op_, sp, dp, mp, rows, k);
    }
  });
  return {d_conv, dz};
}

template <typename T>
RESNET_FUSED_VECTOR_CLONES
void add_relu_range(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ o,
                    int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float v = static_cast<float>(a[i]) + static_cast<float>(b[i]);
    o[i] = static_cast<T>(v < 0.f ? 0.f : v);  // NaN propagates, as in torch.relu
  }
}

at::Tensor add_relu_cpu(const at::Tensor& x, const at::Tensor& residual) {
  check_add_relu_args(x, residual);
  TORCH_CHECK(x.device().is_cpu(), "add_relu (cpu): x must be a CPU tensor");
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  const bool flat = x.is_non_overlapping_and_dense() && residual.strides() == x.strides() &&
                    out.strides() == x.strides();
  if (!flat) {
    // Unusual layouts (x not dense, or residual laid out differently): correct, not fused.
    at::add_out(out, x, residual).clamp_min_(0);
    return out;
  }
  // Dense with identical strides: one flat pass over storage, whatever the memory format.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "add_relu_cpu", [&] {
    const scalar_t* a = x.const_data_ptr<scalar_t>();
    const scalar_t* b = residual.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kElementsPerTask, [&](int64_t begin, int64_t end) {
      add_relu_range<scalar_t>(a, b, o, begin, end);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fused, CPU, m) {
  m.impl("conv_bn_act", &conv_bn_act_cpu);
  m.impl("add_relu", &add_relu_cpu);
  m.impl("conv_bn_act_grad_epilogue", &conv_bn_act_grad_epilogue_cpu);
}

}  // namespace resnet_fused
