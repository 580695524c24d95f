// CPU pooling for fused ResNets: the stem's max-pool and the global average pool, channels_last.
//
// ATen's max_pool2d also writes an int64 index per output (twice the bytes of an fp32 value,
// four times a bf16 one) that inference never reads, and its global mean over a channels_last
// activation is a strided reduction; at batch 8 both cost more than the memory they must touch.
// Here each is one pass with the channels innermost (contiguous in NHWC): the inner loops run
// over C and vectorize, and the accumulators are fp32 whatever the storage dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../checks.h"
#include "vector_clones.h"

namespace resnet_fused {
namespace {

// Output rows (one (n, ho) pair each) per parallel task: a row is Wo * C elements.
constexpr int64_t kElementsPerTask = 32768;

void check_pool_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": input must be 4-D (N, C, H, W), got ", x.dim(),
              "-D with sizes ", x.sizes());
  TORCH_CHECK(is_supported_dtype(x.scalar_type()), op,
              ": input must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), op, " (cpu): input must be a CPU tensor");
}

// Channels per register-resident chunk of the max-pool: a compile-time width lets the compiler
// keep the running maxima in vector registers across the whole window (4 zmm in fp32 for 64)
// instead of loading and storing a runtime-length accumulator once per window element.
constexpr int64_t kPoolChunk = 64;

// A float that holds a value of T (a max of T values) back to T. For bf16 that is the float's
// upper half, bit for bit (NaN included): no rounding logic, so the store loop vectorizes.
template <typename T>
[[gnu::always_inline]] inline T exact_to(float v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    return c10::BFloat16(static_cast<uint16_t>(bits >> 16), c10::BFloat16::from_bits());
  } else {
    return static_cast<T>(v);
  }
}

// max over one window for channels [0, width) of `in`'s pixels; NaN wins, as in torch.max_pool2d.
// W > 0: the width is W (known at compile time); W == 0: `width` channels (the tail chunk).
template <typename T, int64_t W>
[[gnu::always_inline]] inline void max_window(const T* __restrict__ in, T* __restrict__ out, int64_t width,
                       int64_t w, int64_t c, int64_t hi_begin, int64_t hi_end, int64_t wi_begin,
                       int64_t wi_end) {
  const int64_t n = W > 0 ? W : width;
  float acc[kPoolChunk];
  for (int64_t ch = 0; ch < n; ++ch) acc[ch] = -std::numeric_limits<float>::infinity();
  for (int64_t hi = hi_begin; hi < hi_end; ++hi) {
    for (int64_t wi = wi_begin; wi < wi_end; ++wi) {
      const T* px = in + (hi * w + wi) * c;
      for (int64_t ch = 0; ch < n; ++ch) {
        const float v = static_cast<float>(px[ch]);
        acc[ch] = (v > acc[ch] || v != v) ? v : acc[ch];
      }
    }
  }
  for (int64_t ch = 0; ch < n; ++ch) out[ch] = exact_to<T>(acc[ch]);
}

// One output row (fixed n, ho): every wo, every channel.
template <typename T>
RESNET_FUSED_VECTOR_CLONES
void max_pool_row(const T* __restrict__ in, T* __restrict__ out, int64_t h, int64_t w, int64_t c,
                  int64_t wo_count, int64_t hi0, int64_t kh, int64_t kw, int64_t sw, int64_t pw) {
  const int64_t hi_begin = std::max<int64_t>(hi0, 0);
  const int64_t hi_end = std::min<int64_t>(hi0 + kh, h);
  for (int64_t wo = 0; wo < wo_count; ++wo) {
    const int64_t wi0 = wo * sw - pw;
    const int64_t wi_begin = std::max<int64_t>(wi0, 0);
    const int64_t wi_end = std::min<int64_t>(wi0 + kw, w);
    int64_t c0 = 0;
    for (; c0 + kPoolChunk <= c; c0 += kPoolChunk) {
      max_window<T, kPoolChunk>(in + c0, out + wo * c + c0, kPoolChunk, w, c, hi_begin, hi_end,
                                wi_begin, wi_end);
    }
    if (c0 < c) {
      max_window<T, 0>(in + c0, out + wo * c + c0, c - c0, w, c, hi_begin, hi_end, wi_begin,
                       wi_end);
    }
  }
}

at::Tensor max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride,
                          at::IntArrayRef padding) {
  check_pool_input(input, "max_pool2d");
  TORCH_CHECK(kernel.size() == 2 && kernel[0] >= 1 && kernel[1] >= 1,
              "max_pool2d: kernel_size must be two integers >= 1, got ", kernel);
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1,
              "max_pool2d: stride must be two integers >= 1, got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0 &&
                  2 * padding[0] <= kernel[0] && 2 * padding[1] <= kernel[1],
              "max_pool2d: padding must be two integers >= 0 and at most half the kernel (",
              kernel, "), got ", padding);
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3);
  TORCH_CHECK(h + 2 * padding[0] >= kernel[0] && w + 2 * padding[1] >= kernel[1],
              "max_pool2d: input spatial size (", h, ", ", w, ") with padding ", padding,
              " is smaller than the kernel ", kernel);
  const int64_t ho = (h + 2 * padding[0] - kernel[0]) / stride[0] + 1;
  const int64_t wo = (w + 2 * padding[1] - kernel[1]) / stride[1] + 1;
  at::Tensor out = at::empty({n, c, ho, wo},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, wo * c));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_cpu",
                                  [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n * ho, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / ho, oh = row % ho;
        max_pool_row<scalar_t>(in + b * h * w * c, o + row * wo * c, h, w, c, wo,
                               oh * stride[0] - padding[0], kernel[0], kernel[1], stride[1],
                               padding[1]);
      }
    });
  });
  return out;
}

// Channels [c0, c0 + width) of one image: out[ch] = inv * sum over the hw pixels (stride c).
constexpr int64_t kBlock = 256;

template <typename T>
RESNET_FUSED_VECTOR_CLONES
void mean_block(const T* __restrict__ in, T* __restrict__ out, int64_t width, int64_t hw,
                int64_t c, float inv) {
  float acc[kBlock];
  std::fill(acc, acc + width, 0.0f);
  for (int64_t p = 0; p < hw; ++p, in += c) {
    for (int64_t ch = 0; ch < width; ++ch) acc[ch] += static_cast<float>(in[ch]);
  }
  for (int64_t ch = 0; ch < width; ++ch) out[ch] = static_cast<T>(acc[ch] * inv);
}

// (N, C, H, W) -> (N, C): the mean over H and W, accumulated in fp32.
at::Tensor global_avg_pool_cpu(const at::Tensor& input) {
  check_pool_input(input, "global_avg_pool");
  const int64_t n = input.size(0), c = input.size(1), hw = input.size(2) * input.size(3);
  TORCH_CHECK(hw >= 1, "global_avg_pool: input must have H, W >= 1, got sizes ", input.sizes());
  at::Tensor out = at::empty({n, c}, input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  // Channel blocks as well as images: batch 1 still gives every thread work.
  const int64_t blocks = (c + kBlock - 1) / kBlock;
  const float inv = 1.0f / static_cast<float>(hw);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "global_avg_pool_cpu", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks, c0 = (task % blocks) * kBlock;
        mean_block<scalar_t>(in + b * hw * c + c0, o + b * c + c0,
                             std::min<int64_t>(kBlock, c - c0), hw, c, inv);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fused, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("global_avg_pool", &global_avg_pool_cpu);
}

}  // namespace resnet_fused
