// Winograd 3x3 convolution (stride 1, padding 1) for the CPU fast path, channels_last.
//
// A 3x3 convolution computed tile by tile as F(m, 3): each m x m output tile comes from an
// (m+2) x (m+2) input patch d through
//
//     Y = A^T [ (G g G^T) (.) (B^T d B) ] A        ((.): elementwise, summed over input channels)
//
// so the channel sum becomes (m+2)^2 independent GEMMs, V[ij] (tiles x C) @ U[ij] (C x K), with
// 9 m^2 / (m+2)^2 of the direct convolution's multiplications (1/4 for F(4,3), 4/9 for F(2,3)).
// ResNet's stride-1 3x3 convolutions are half its FLOPs, and at 14x14 and larger ATen's batched
// GEMM runs these products in well under the time oneDNN's direct convolution takes.
//
// This file holds the two transforms, each one pass over NHWC memory with the channels innermost
// (the loops vectorize), and the op that chains input transform -> at::bmm -> output transform.
// F(2,3) transforms each channel's whole tile in registers; F(4,3), whose 36 values per channel
// would spill, goes through small L1 buffers in stages.
// The filter transform U = G g G^T happens once, in Python, when a model is fused
// (resnet_fused/winograd.py), with BatchNorm's scale folded in fp64 first.
// On CPUs with AVX512_BF16, C_out a multiple of 16 (and for bf16 C_in even) runs a pipeline of
// its own instead (winograd_avx512.cpp: intrinsic transforms, this
// package's GEMM, blocks kept in L2); this file's portable path takes every other case. In
// bf16 the pipeline's GEMMs also run on AMX tiles when the caller asks (`kernel="amx"`: the
// CPU fast path measures it against the others where the CPU has AMX).
//
// Numerics: F(4,3)'s transform matrices hold 4s and 8s, which scale rounding errors up (measured
// on ResNet shapes, fp32 vs fp64: ~2e-6 relative L2, the direct convolution ~2e-7; the op bound
// is 1e-5). In bf16 those same factors would take F(4,3) past the bf16 bound (~2e-2), so bf16
// and fp16 use F(2,3), whose matrices hold only 0, +-1 (~5e-3, direct ~3e-3). The transforms
// compute in fp32; V and M are stored in the compute dtype, the GEMM accumulates in fp32 (the
// AVX-512 pipelines keep M in fp32).
//
// Non-finite inputs stay non-finite, but not always as the direct conv has them: a NaN reaches
// every output of the tiles whose patches hold it (up to m pixels away, not just its 3x3
// neighbours), and an inf becomes NaN (the transforms subtract it from itself).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../checks.h"
#include "amx_tiles.h"
#include "winograd_cpu.h"
#include "vector_clones.h"

namespace resnet_fused {
namespace winograd {

// The transformed inputs V and the GEMM results M live in buffers kept per thread and reused
// from call to call (grown when a call needs more). Freshly allocated instead, every call of a
// large layer gets its pages from the kernel (glibc maps big blocks anew each time) and faults
// in, zeroing, every page: in development runs that made bf16 layers at batch 1 1.3-2.4x slower
// (once glibc's mmap threshold fell back to its floor), enough to lose to the direct conv they
// beat with reused memory. Requests above kMaxKeptBytes are allocated per call and not kept (at
// that size the faults are small against the GEMM).
constexpr int64_t kMaxKeptBytes = int64_t{64} << 20;

namespace {

// This thread's byte buffer `slot`, grown to at least `bytes`.
at::Tensor& kept_buffer(Slot slot, int64_t bytes) {
  thread_local at::Tensor kept[2];
  at::Tensor& buffer = kept[slot];
  if (!buffer.defined() || buffer.numel() < bytes) {
    buffer = at::empty({std::max<int64_t>(bytes, 1)}, at::TensorOptions().dtype(at::kByte));
  }
  return buffer;
}

}  // namespace

at::Tensor scratch(Slot slot, at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (const int64_t size : sizes) numel *= size;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(opts.dtype().toScalarType()));
  if (bytes > kMaxKeptBytes) return at::empty(sizes, opts);
  return kept_buffer(slot, bytes).narrow(0, 0, bytes).view(opts.dtype().toScalarType()).view(sizes);
}

void* scratch_bytes(Slot slot, int64_t bytes) {
  TORCH_CHECK(bytes <= kMaxKeptBytes, "scratch_bytes: ", bytes, " bytes asked, at most ",
              kMaxKeptBytes, " are kept");
  return kept_buffer(slot, bytes).data_ptr();
}

}  // namespace winograd

namespace {

using winograd::Geometry;
using winograd::GemmKernel;
using winograd::input_1d;
using winograd::kMaxBlockedFilterBytes;
using winograd::kTilesPerTask;
using winograd::output_1d;
using winograd::patch_pixels;
using winograd::tile_outputs;
using winograd::kM;
using winograd::kV;
using winograd::scratch;


// Channels per transform step: a (m+2)^2 x kChunk fp32 patch (36 x 64 x 4 B = 9 KiB) stays in L1.
constexpr int64_t kChunk = 64;

template <typename T>
[[gnu::always_inline]] inline float load(const T& v) {
  return static_cast<float>(v);
}

// float -> T, rounding to nearest even. For bf16 written out bit by bit (c10's conversion has a
// NaN branch that keeps the store loops from vectorizing); NaN stays a (quiet) NaN.
template <typename T>
[[gnu::always_inline]] inline T store(float v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const uint16_t out = (v != v) ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
    return c10::BFloat16(out, c10::BFloat16::from_bits());
  } else {
    return static_cast<T>(v);
  }
}

// Zeros to read in place of the padding, and a sink for outputs past the image's edge: the
// per-channel loops then run without branches (and vectorize), whatever the tile's position.
alignas(64) constexpr float kZeros[kChunk] = {};

// y = act(acc + bias (+ residual)), the last step of every output transform.
template <bool kResidual, bool kRelu, typename T>
[[gnu::always_inline]] inline T epilogue(float acc, float bias, const T* residual) {
  float s = acc + bias;
  if constexpr (kResidual) s += load(*residual);
  if constexpr (kRelu) s = s > 0.f ? s : (s != s ? s : 0.f);  // NaN stays NaN
  return store<T>(s);
}

// input_1d/output_1d as steps of the staged transforms: over n channels, the values
// s[k * ss + ch] -> d[i * ds + ch].
template <int M, typename Out>
[[gnu::always_inline]] inline void input_1d_staged(const float* __restrict__ s, int64_t ss,
                                                   Out* __restrict__ d, int64_t ds, int64_t n) {
  constexpr int A = M + 2;
  for (int64_t ch = 0; ch < n; ++ch) {
    float in[A], out[A];
    for (int k = 0; k < A; ++k) in[k] = s[k * ss + ch];
    input_1d<M, 1, 1>(in, out);
    for (int i = 0; i < A; ++i) d[i * ds + ch] = store<Out>(out[i]);
  }
}

template <int M>
[[gnu::always_inline]] inline void output_1d_staged(const float* __restrict__ s, int64_t ss,
                                                    float* __restrict__ d, int64_t ds, int64_t n) {
  constexpr int A = M + 2;
  for (int64_t ch = 0; ch < n; ++ch) {
    float in[A], out[M];
    for (int k = 0; k < A; ++k) in[k] = s[k * ss + ch];
    output_1d<M, 1, 1>(in, out);
    for (int i = 0; i < M; ++i) d[i * ds + ch] = out[i];
  }
}

// input_transform in stages through L1 buffers (gather, columns, rows), each a loop over the
// channels. F(4,3) uses this form: in registers its 36 loads and 36 stores per channel spill and
// do not vectorize (~3x slower in a development run, see
// benchmarks/results/cpu/2026-11-24-cpu-winograd-transforms-dev.log); F(2,3)'s 16 + 16 fit.
template <int M, typename T>
RESNET_FUSED_VECTOR_CLONES
void input_transform_staged(const T* __restrict__ x, T* __restrict__ v, const Geometry& g,
                            int64_t t_begin, int64_t t_end, int64_t planes) {
  constexpr int64_t A = M + 2;
  alignas(64) float patch[A * A * kChunk];
  alignas(64) float rows[A * A * kChunk];
  const int64_t plane = planes * g.c;  // elements between consecutive V[ij]
  const T* src[A * A];
  for (int64_t t = t_begin; t < t_end; ++t) {
    patch_pixels<M>(x, g, t, src);
    for (int64_t c0 = 0; c0 < g.c; c0 += kChunk) {
      const int64_t n = std::min(kChunk, g.c - c0);
      for (int64_t k = 0; k < A * A; ++k) {
        float* dst = patch + k * kChunk;
        if (src[k] == nullptr) {
          std::fill(dst, dst + n, 0.f);
        } else {
          for (int64_t ch = 0; ch < n; ++ch) dst[ch] = load(src[k][c0 + ch]);
        }
      }
      // Down the columns (rows[i][j] = sum_k B^T[i][k] patch[k][j]), then along the rows,
      // straight into the A*A planes of V.
      for (int64_t j = 0; j < A; ++j) {
        input_1d_staged<M>(patch + j * kChunk, A * kChunk, rows + j * kChunk, A * kChunk, n);
      }
      for (int64_t i = 0; i < A; ++i) {
        T* out = v + i * A * plane + (t - t_begin) * g.c + c0;
        input_1d_staged<M>(rows + i * A * kChunk, kChunk, out, plane, n);
      }
    }
  }
}

// output_transform in stages through L1 buffers, for F(4,3) (see input_transform_staged).
template <int M, bool kResidual, bool kRelu, typename T>
RESNET_FUSED_VECTOR_CLONES
void output_transform_staged(const T* __restrict__ m, const float* __restrict__ bias,
                             const T* __restrict__ residual, T* __restrict__ y, const Geometry& g,
                             int64_t t_begin, int64_t t_end, int64_t planes) {
  constexpr int64_t A = M + 2;
  alignas(64) float tile[A * A * kChunk];
  alignas(64) float cols[M * A * kChunk];
  alignas(64) float out[M * M * kChunk];
  const int64_t plane = planes * g.k;
  int64_t at[M * M];
  for (int64_t t = t_begin; t < t_end; ++t) {
    tile_outputs<M>(g, t, at);
    for (int64_t k0 = 0; k0 < g.k; k0 += kChunk) {
      const int64_t n = std::min(kChunk, g.k - k0);
      for (int64_t ij = 0; ij < A * A; ++ij) {
        const T* src = m + ij * plane + (t - t_begin) * g.k + k0;
        float* dst = tile + ij * kChunk;
        for (int64_t ch = 0; ch < n; ++ch) dst[ch] = load(src[ch]);
      }
      for (int64_t j = 0; j < A; ++j) {
        output_1d_staged<M>(tile + j * kChunk, A * kChunk, cols + j * kChunk, A * kChunk, n);
      }
      for (int64_t i = 0; i < M; ++i) {
        output_1d_staged<M>(cols + i * A * kChunk, kChunk, out + i * M * kChunk, kChunk, n);
      }
      for (int64_t q = 0; q < M * M; ++q) {
        if (at[q] < 0) continue;  // past the image's edge
        const float* o = out + q * kChunk;
        T* dst = y + at[q] + k0;
        const T* r = kResidual ? residual + at[q] + k0 : reinterpret_cast<const T*>(kZeros);
        for (int64_t ch = 0; ch < n; ++ch) {
          dst[ch] = epilogue<kResidual, kRelu, T>(o[ch], bias[k0 + ch], r + ch);
        }
      }
    }
  }
}

// V[ij][t - t_begin][c] = (B^T d_t B)[i][j] for the tiles [t_begin, t_end), into a buffer of
// `planes` tiles per ij: d_t is tile t's input patch, zero outside the image (the padding).
// Per channel the whole patch is loaded, transformed both ways and stored from registers.
template <int M, typename T>
RESNET_FUSED_VECTOR_CLONES
void input_transform_registers(const T* __restrict__ x, T* __restrict__ v, const Geometry& g,
                               int64_t t_begin, int64_t t_end, int64_t planes) {
  constexpr int A = M + 2;
  const int64_t plane = planes * g.c;  // elements between consecutive V[ij]
  const T* zeros = reinterpret_cast<const T*>(kZeros);  // all-zero bits: 0 in every float type
  const T* pixels[A * A];
  const T* src[A * A];
  T* dst[A * A];
  for (int64_t t = t_begin; t < t_end; ++t) {
    patch_pixels<M>(x, g, t, pixels);
    for (int64_t c0 = 0; c0 < g.c; c0 += kChunk) {
      const int64_t n = std::min(kChunk, g.c - c0);
      for (int k = 0; k < A * A; ++k) {
        src[k] = pixels[k] != nullptr ? pixels[k] + c0 : zeros;
        dst[k] = v + k * plane + (t - t_begin) * g.c + c0;
      }
#pragma GCC ivdep
      for (int64_t ch = 0; ch < n; ++ch) {
        float d[A * A], r[A * A], o[A * A];
        for (int k = 0; k < A * A; ++k) d[k] = load(src[k][ch]);
        for (int j = 0; j < A; ++j) input_1d<M, A, A>(d + j, r + j);      // down the columns
        for (int i = 0; i < A; ++i) input_1d<M, 1, 1>(r + i * A, o + i * A);  // along the rows
        for (int k = 0; k < A * A; ++k) dst[k][ch] = store<T>(o[k]);
      }
    }
  }
}

// y[tile t] = act(A^T m_t A + bias (+ residual)) for the tiles [t_begin, t_end), where m_t is
// tile t's slice M[ij][t - t_begin][k] of GEMM results for `planes` tiles per ij; outputs past
// the image's edge go to a scratch row and are dropped.
template <int M, bool kResidual, bool kRelu, typename T>
RESNET_FUSED_VECTOR_CLONES
void output_transform_registers(const T* __restrict__ m, const float* __restrict__ bias,
                                const T* __restrict__ residual, T* __restrict__ y,
                                const Geometry& g, int64_t t_begin, int64_t t_end,
                                int64_t planes) {
  constexpr int A = M + 2;
  const int64_t plane = planes * g.k;
  alignas(64) T sink[kChunk];
  const T* zeros = reinterpret_cast<const T*>(kZeros);
  const T* src[A * A];
  T* dst[M * M];
  const T* res[M * M];
  int64_t at[M * M];
  for (int64_t t = t_begin; t < t_end; ++t) {
    tile_outputs<M>(g, t, at);
    for (int64_t k0 = 0; k0 < g.k; k0 += kChunk) {
      const int64_t n = std::min(kChunk, g.k - k0);
      for (int ij = 0; ij < A * A; ++ij) src[ij] = m + ij * plane + (t - t_begin) * g.k + k0;
      for (int q = 0; q < M * M; ++q) {
        dst[q] = at[q] >= 0 ? y + at[q] + k0 : sink;
        res[q] = at[q] >= 0 && kResidual ? residual + at[q] + k0 : zeros;
      }
      const float* bk = bias + k0;
#pragma GCC ivdep
      for (int64_t ch = 0; ch < n; ++ch) {
        float s[A * A], c[M * A], o[M * M];
        for (int k = 0; k < A * A; ++k) s[k] = load(src[k][ch]);
        for (int j = 0; j < A; ++j) output_1d<M, A, A>(s + j, c + j);      // down the columns
        for (int i = 0; i < M; ++i) output_1d<M, 1, 1>(c + i * A, o + i * M);  // along the rows
        for (int k = 0; k < M * M; ++k) {
          dst[k][ch] = epilogue<kResidual, kRelu, T>(o[k], bk[ch], res[k] + ch);
        }
      }
    }
  }
}

template <int M, typename T>
void input_transform(const T* x, T* v, const Geometry& g, int64_t t_begin, int64_t t_end,
                     int64_t planes) {
  if constexpr (M == 4) {
    input_transform_staged<M, T>(x, v, g, t_begin, t_end, planes);
  } else {
    input_transform_registers<M, T>(x, v, g, t_begin, t_end, planes);
  }
}

// The output transform for F(m,3), with the epilogue's options as template arguments (no branch
// per element): staged for F(4,3), in registers for F(2,3).
template <int M, typename T>
void output_transform(const T* m, const float* bias, const T* residual, T* y, bool relu,
                      const Geometry& g, int64_t t_begin, int64_t t_end, int64_t planes) {
  const auto go = [&](auto with_residual, auto with_relu) {
    constexpr bool kResidual = decltype(with_residual)::value, kRelu = decltype(with_relu)::value;
    if constexpr (M == 4) {
      output_transform_staged<M, kResidual, kRelu, T>(m, bias, residual, y, g, t_begin, t_end,
                                                      planes);
    } else {
      output_transform_registers<M, kResidual, kRelu, T>(m, bias, residual, y, g, t_begin, t_end,
                                                         planes);
    }
  };
  if (residual != nullptr) {
    relu ? go(std::true_type{}, std::true_type{}) : go(std::true_type{}, std::false_type{});
  } else {
    relu ? go(std::false_type{}, std::true_type{}) : go(std::false_type{}, std::false_type{});
  }
}

// Bytes of V (or M) per block of tiles when the tiles are split into blocks: small enough that a
// block's V, M and the filter U stay in the caches between the three steps, large enough that
// the block's GEMMs run at full speed. Unblocked, a 56x56 layer at batch 8 writes and reads
// 14 MiB twice, fresh pages included.
constexpr int64_t kBlockBytes = 512 * 1024;
// Blocks (up to kMaxBlockedFilterBytes of filter) only pay when every block's GEMM can re-read
// U from cache, and only in float32: ATen's
// bf16/fp16 GEMM (oneDNN) packs U again on every call, which costs more than the blocks save.
// In development runs on the 2-core AVX-512 VM (ResNet-50's 3x3 layers alone, batch 1 and 8),
// blocked F(4,3) ran 1.7-1.9x as fast as oneDNN's direct conv at C = 64 and 128 (U: 0.6 and
// 2.4 MiB), unblocked 1.4-1.6x; at C = 256 (U: 9.4 MiB) blocked fell to 1.0x, unblocked 1.2-1.3x;
// blocked bf16 was slower than unblocked at every size tried.

template <int M, typename T>
at::Tensor run(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
               const at::Tensor* residual, bool relu, const Geometry& g) {
  constexpr int64_t A = M + 2;
  const auto opts = x.options();
  at::Tensor y =
      at::empty({g.n, g.k, g.h, g.w}, opts.memory_format(at::MemoryFormat::ChannelsLast));
  const T* xs = x.const_data_ptr<T>();
  const T* r = residual != nullptr ? residual->const_data_ptr<T>() : nullptr;
  const float* b = bias.const_data_ptr<float>();
  T* ys = y.mutable_data_ptr<T>();
  const int64_t row_bytes = A * A * std::max(g.c, g.k) * static_cast<int64_t>(sizeof(T));
  const int64_t block = std::max<int64_t>(1, kBlockBytes / row_bytes);
  const int64_t blocks = (g.tiles + block - 1) / block;
  const int64_t u_bytes = u.numel() * static_cast<int64_t>(sizeof(T));
  if (std::is_same_v<T, float> && u_bytes <= kMaxBlockedFilterBytes &&
      blocks >= 2 * at::get_num_threads()) {
    // Each task runs whole blocks, transform -> GEMM -> transform, on its own buffers. ATen runs
    // the GEMM single-threaded inside a parallel region: the threads split the blocks instead.
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t t0 = i * block, t1 = std::min(g.tiles, t0 + block), tb = t1 - t0;
        at::Tensor vb = scratch(kV, {A * A, tb, g.c}, opts);
        at::Tensor mb = scratch(kM, {A * A, tb, g.k}, opts);
        input_transform<M, T>(xs, vb.mutable_data_ptr<T>(), g, t0, t1, tb);
        at::bmm_out(mb, vb, u);
        output_transform<M, T>(mb.const_data_ptr<T>(), b, r, ys, relu, g, t0, t1, tb);
      }
    });
    return y;
  }
  // Few tiles: one GEMM over all of them (threaded inside), transforms split by tiles.
  at::Tensor v = scratch(kV, {A * A, g.tiles, g.c}, opts);
  at::parallel_for(0, g.tiles, kTilesPerTask, [&](int64_t begin, int64_t end) {
    input_transform<M, T>(xs, v.mutable_data_ptr<T>() + begin * g.c, g, begin, end, g.tiles);
  });
  at::Tensor m = scratch(kM, {A * A, g.tiles, g.k}, opts);
  at::bmm_out(m, v, u);
  at::parallel_for(0, g.tiles, kTilesPerTask, [&](int64_t begin, int64_t end) {
    output_transform<M, T>(m.const_data_ptr<T>() + begin * g.k, b, r, ys, relu, g, begin, end,
                           g.tiles);
  });
  return y;
}

// (16, C, K) -> pair-packed (16, C/2, K, 2) for even C, and back (dropping a zero pad channel).
at::Tensor pack_pairs(const at::Tensor& u) {
  return u.view({u.size(0), u.size(1) / 2, 2, u.size(2)}).transpose(2, 3).contiguous();
}

at::Tensor unpack_pairs(const at::Tensor& u, int64_t c) {
  return u.transpose(2, 3).reshape({u.size(0), 2 * u.size(1), u.size(2)}).narrow(1, 0, c)
      .contiguous();
}

// The op's `kernel` argument: "auto" (the AVX-512 pipelines where they run, else the portable
// path), "amx" (the bf16 pipeline's GEMMs on AMX tiles) or "amx_model" (those through the
// tiles' software model, for tests).
GemmKernel parse_kernel(const char* op, c10::string_view name) {
  if (name == "auto") return GemmKernel::kAvx512;
  if (name == "amx") return GemmKernel::kAmx;
  if (name == "amx_model") return GemmKernel::kAmxModel;
  TORCH_CHECK(false, op, ": kernel must be \"auto\", \"amx\" or \"amx_model\", got \"",
              std::string(name), "\"");
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                                bool relu, c10::string_view kernel_name) {
  constexpr const char* op = "winograd_conv3x3";
  const GemmKernel kernel = parse_kernel(op, kernel_name);
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got ", input.dim(),
              "-D with sizes ", input.sizes());
  TORCH_CHECK(is_supported_dtype(input.scalar_type()), op,
              ": input must be float32, bfloat16 or float16, got ", input.scalar_type());
  TORCH_CHECK(input.device().is_cpu(), op, " (cpu): input must be a CPU tensor");
  // (P, C_in, C_out), or bf16 F(2,3)'s pair-packed form (16, ceil(C_in / 2), C_out, 2).
  const bool packed = weight.dim() == 4;
  TORCH_CHECK((weight.dim() == 3 && (weight.size(0) == 36 || weight.size(0) == 16)) ||
                  (packed && weight.size(0) == 16 && weight.size(3) == 2),
              op, ": weight must be a transformed filter of shape (36, C_in, C_out) for F(4,3), "
              "(16, C_in, C_out) for F(2,3), or (16, ceil(C_in / 2), C_out, 2) pair-packed for "
              "bfloat16 F(2,3), got sizes ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type() && weight.device().is_cpu(), op,
              ": weight must be a CPU tensor of input's dtype (", input.scalar_type(), "), got ",
              weight.scalar_type(), " on ", weight.device());
  TORCH_CHECK(!packed || input.scalar_type() == at::kBFloat16, op,
              ": a pair-packed weight (4-D) is for bfloat16 only, input is ",
              input.scalar_type());
  const int64_t weight_channels = packed ? (input.size(1) + 1) / 2 : input.size(1);
  TORCH_CHECK(weight.size(1) == weight_channels, op, ": weight has ", weight.size(1),
              packed ? " channel pairs" : " input channels", " (dim 1), input has ",
              input.size(1), " channels", packed ? ", needs (C_in + 1) / 2 pairs" : "");
  const int64_t k = weight.size(2);
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == k && bias.scalar_type() == at::kFloat &&
                  bias.device().is_cpu(),
              op, ": bias must be a float32 CPU tensor of shape (", k, "), got ",
              bias.scalar_type(), " with sizes ", bias.sizes(), " on ", bias.device());
  const int64_t m = weight.size(0) == 36 ? 4 : 2;
  TORCH_CHECK(m == 2 || input.scalar_type() == at::kFloat, op,
              ": F(4,3) (a 36-plane weight) is for float32 only; ", input.scalar_type(),
              " needs F(2,3), whose error bound it meets");
  if (kernel != GemmKernel::kAvx512) {
    const char* name = kernel == GemmKernel::kAmx ? "amx" : "amx_model";
    TORCH_CHECK(winograd::pipelines_available(), op, ": kernel \"", name,
                "\" runs inside the AVX512_BF16 pipeline, which this CPU lacks");
    check_amx_kernel(op, name, input.scalar_type(), kernel == GemmKernel::kAmx);
    TORCH_CHECK(input.size(1) % amx::kStepChannels == 0 && k % amx::kBlockColumns == 0, op,
                ": kernel \"", name, "\" needs C_in and C_out multiples of ",
                amx::kStepChannels, " (one AMX tile row, one block), got C_in = ",
                input.size(1), ", C_out = ", k);
  }
  Geometry g{input.size(0), input.size(2), input.size(3), input.size(1), k, 0, 0, 0};
  g.tiles_h = (g.h + m - 1) / m;
  g.tiles_w = (g.w + m - 1) / m;
  g.tiles = g.n * g.tiles_h * g.tiles_w;
  const at::Tensor* res = nullptr;
  at::Tensor res_cl;
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK(r.sizes() == at::IntArrayRef({g.n, k, g.h, g.w}), op,
                ": residual must have the output's sizes [", g.n, ", ", k, ", ", g.h, ", ", g.w,
                "], got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == input.scalar_type() && r.device().is_cpu(), op,
                ": residual must be a CPU tensor of input's dtype (", input.scalar_type(),
                "), got ", r.scalar_type(), " on ", r.device());
    res_cl = r.contiguous(at::MemoryFormat::ChannelsLast);
    res = &res_cl;
  }
  if (g.n == 0 || g.h == 0 || g.w == 0 || k == 0) {
    return at::empty({g.n, k, g.h, g.w},
                     input.options().memory_format(at::MemoryFormat::ChannelsLast));
  }
  if (g.c == 0) {  // no input channels: the convolution is 0, the result the epilogue of bias
    at::Tensor y = bias.view({1, k, 1, 1}).expand({g.n, k, g.h, g.w});
    if (res != nullptr) y = y + res->to(at::kFloat);
    if (relu) y = y.relu();
    return y.to(input.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
  }
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor u = weight.contiguous();
  const at::Tensor b = bias.contiguous();
  if (k % 16 == 0) {  // the AVX-512 pipelines, where this CPU has them (winograd_avx512.cpp)
    if (input.scalar_type() == at::kBFloat16 && g.c % 2 == 0 &&
        winograd::pipelines_available()) {
      return winograd::run_bf16_pipeline(x, packed ? u : pack_pairs(u), b, res, relu, g,
                                         kernel);
    }
    if (input.scalar_type() == at::kFloat && m == 4 && winograd::pipelines_available()) {
      return winograd::run_f32_pipeline(x, u, b, res, relu, g);
    }
  }
  if (packed) u = unpack_pairs(u, g.c);
  const auto go = [&](auto zero) {
    using T = decltype(zero);
    if constexpr (std::is_same_v<T, float>) {
      if (m == 4) return run<4, T>(x, u, b, res, relu, g);
    }
    return run<2, T>(x, u, b, res, relu, g);  // (F(4,3) in bf16/fp16 was refused above)
  };
  switch (x.scalar_type()) {
    case at::kBFloat16: return go(c10::BFloat16());
    case at::kHalf: return go(c10::Half());
    default: return go(float());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fused, CPU, m) {
  m.impl("winograd_conv3x3", &winograd_conv3x3_cpu);
}

}  // namespace resnet_fused
