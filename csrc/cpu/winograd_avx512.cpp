// Winograd on AVX-512 CPUs: the pipelines the op (winograd_cpu.cpp) runs there for C_out a
// multiple of 16 (all of ResNet's layers): bf16 F(2,3) with AVX512_BF16 (C_in even), and fp32
// F(4,3) with AVX512F where the filter fits the caches (see winograd_cpu.cpp's dispatch).
//
// Against the portable path (transforms in plain loops, ATen's bmm in between):
// * the GEMM is this package's (gemm_avx512.cpp) on the filter as fused (bf16: pair-packed once
//   when the model was fused, where ATen's bf16 GEMM (oneDNN) packs the filter again on every
//   call), so it can run on blocks of tiles small enough to stay in L2 between the three steps:
//   V and M never go to memory;
// * M stays fp32 (the portable bf16 path rounds it to bf16 for ATen's GEMM): one rounding fewer;
// * the transforms are written with AVX-512 intrinsics, 16 channels per register; bf16 converts
//   with vcvtneps2bf16 (round to nearest even in one instruction, where the portable loops
//   round bit by bit), and GCC compiles the portable loops 8 floats wide. In development
//   profiles (perf, batch 8, 64 channels, 56x56, 1 thread) the portable transforms took ~45%
//   (bf16, with this GEMM) and ~30% (fp32, with ATen's) of the op.
//
// Numerics as the portable path: transforms in fp32, V in the compute dtype, GEMM accumulating
// in fp32; the output transform and the epilogue in fp32 and one rounding to the output dtype.
// The AVX512_BF16 instructions flush denormal inputs and results to zero (they ignore MXCSR);
// NaN stays NaN.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx_tiles.h"
#include "gemm_avx512_kernels.h"
#include "winograd_cpu.h"

namespace resnet_fused::winograd {

#ifdef RESNET_FUSED_HAS_AVX512_KERNELS
namespace {

using avx512::kAll;
using avx512::kLanes;
using avx512::load16;
using avx512::store16;
using avx512::tail_mask;

// One pipeline's dtype (T: the activations' and V's), output tile edge M and GEMM.
struct Bf16F23 {
  using T = c10::BFloat16;
  static constexpr int M = 2;
  // out[:, col:col + n] = a @ u[:, col:col + n] for a (rows x C) and the plane u (C x K); the
  // caller multiplies with `next` next (prefetched; nullptr: nothing), a plane's first column.
  static void gemm(const T* a, int64_t rows, const T* u, int64_t col, int64_t n,
                   const Geometry& g, float* out, const T* next) {
    gemm_bf16_pairs(a, rows, g.c, u + 2 * col, g.k, g.c, n, out + col, g.k, next);
  }
  static int64_t column_offset(int64_t col) { return 2 * col; }  // pair-packed
};

struct F32F43 {
  using T = float;
  static constexpr int M = 4;
  static void gemm(const T* a, int64_t rows, const T* u, int64_t col, int64_t n,
                   const Geometry& g, float* out, const T* next) {
    gemm_f32(a, rows, g.c, u + col, g.k, g.c, n, out + col, g.k, next);
  }
  static int64_t column_offset(int64_t col) { return col; }
};

// The GEMM of one parallel task: made in the task (its thread), then called per plane and
// column block as P::gemm. The pipelines' own AVX-512 GEMMs need no state.
template <typename P>
struct Avx512Gemm {
  explicit Avx512Gemm(bool /*emulate*/) {}
  void operator()(const typename P::T* a, int64_t rows, const typename P::T* u, int64_t col,
                  int64_t n, const Geometry& g, float* out, const typename P::T* next) const {
    P::gemm(a, rows, u, col, n, g, out, next);
  }
};

// bf16 F(2,3)'s GEMMs on AMX tiles (amx_tiles.h; `emulate`: the tiles' software model): 32
// tiles x 32 output channels a block, the filter plane's pair rows (4K bytes apart) read as
// TDPBF16PS's B in place, V's rows as A. A last group of fewer than 32 tiles is copied into a
// zero-padded buffer first (its extra rows are computed, never stored). C_in and the columns a
// call asks for must be multiples of 32 (the op checks). The accumulators go from the block's
// tile store to M row by row.
class AmxGemm {
 public:
  using T = c10::BFloat16;
  explicit AmxGemm(bool emulate) : session_(emulate) {}
  void operator()(const T* a, int64_t rows, const T* u, int64_t col, int64_t n,
                  const Geometry& g, float* out, const T* /*next*/) {
    const int64_t a_row_bytes = g.c * static_cast<int64_t>(sizeof(T));
    const int64_t b_row_bytes = 2 * g.k * static_cast<int64_t>(sizeof(T));  // one pair row
    const int64_t steps = g.c / amx::kStepChannels;
    for (int64_t r = 0; r < rows; r += amx::kBlockRows) {
      const int64_t count = std::min(amx::kBlockRows, rows - r);
      const T* block = a + r * g.c;
      if (count < amx::kBlockRows) {
        padded_.assign(amx::kBlockRows * g.c, T(0.0f));
        std::copy_n(block, count * g.c, padded_.data());
        block = padded_.data();
      }
      for (int64_t j = 0; j < n; j += amx::kBlockColumns) {
        amx::block_bf16(session_, block, a_row_bytes, u + 2 * (col + j), b_row_bytes, steps,
                        acc_);
        for (int64_t i = 0; i < count; ++i) {
          std::memcpy(out + (r + i) * g.k + col + j, acc_ + i * amx::kBlockColumns,
                      amx::kBlockColumns * sizeof(float));
        }
      }
    }
  }

 private:
  amx::TileSession session_;
  std::vector<T> padded_;
  alignas(64) float acc_[amx::kBlockRows * amx::kBlockColumns];
};

// V[ij][t - t0][c] = (B^T d_t B)[i][j] for the tiles [t0, t1), into a buffer of `planes`
// tiles per ij, 16 channels at a time: as the portable input transform (same B^T, same order:
// down the columns, then along the rows).
template <typename P>
RESNET_FUSED_AVX512_BF16 void input_transform(const typename P::T* x, typename P::T* v,
                                              const Geometry& g, int64_t t0, int64_t t1,
                                              int64_t planes) {
  constexpr int A = P::M + 2;
  const int64_t plane = planes * g.c;  // elements between consecutive V[ij]
  const typename P::T* src[A * A];
  for (int64_t t = t0; t < t1; ++t) {
    patch_pixels<P::M>(x, g, t, src);
    typename P::T* dst = v + (t - t0) * g.c;
    for (int64_t c0 = 0; c0 < g.c; c0 += kLanes) {
      const __mmask16 mask = tail_mask(g.c - c0);
      __m512 d[A * A], r[A * A], o[A * A];
      for (int k = 0; k < A * A; ++k) {
        d[k] = src[k] != nullptr ? load16(src[k] + c0, mask) : _mm512_setzero_ps();
      }
      for (int j = 0; j < A; ++j) input_1d<P::M, A, A>(d + j, r + j);      // down the columns
      for (int i = 0; i < A; ++i) input_1d<P::M, 1, 1>(r + i * A, o + i * A);  // along the rows
      for (int k = 0; k < A * A; ++k) store16(dst + k * plane + c0, o[k], mask);
    }
  }
}

// y[tile t] = act(A^T m_t A + bias (+ residual)) for the tiles [t0, t1), m fp32 with `planes`
// tiles per ij (M[ij][t - t0][k]), 16 channels at a time (K % 16 == 0); outputs past the image's
// edge are skipped.
template <typename P, bool kResidual, bool kRelu>
RESNET_FUSED_AVX512_BF16 void output_transform(const float* m, const float* bias,
                                               const typename P::T* residual,
                                               typename P::T* y, const Geometry& g, int64_t t0,
                                               int64_t t1, int64_t planes) {
  constexpr int M = P::M, A = M + 2;
  const int64_t plane = planes * g.k;
  int64_t at[M * M];
  for (int64_t t = t0; t < t1; ++t) {
    tile_outputs<M>(g, t, at);
    const float* src = m + (t - t0) * g.k;
    for (int64_t k0 = 0; k0 < g.k; k0 += kLanes) {
      __m512 s[A * A], c[M * A], o[M * M];
      for (int k = 0; k < A * A; ++k) s[k] = _mm512_loadu_ps(src + k * plane + k0);
      for (int j = 0; j < A; ++j) output_1d<M, A, A>(s + j, c + j);      // down the columns
      for (int i = 0; i < M; ++i) output_1d<M, 1, 1>(c + i * A, o + i * M);  // along the rows
      const __m512 b = _mm512_loadu_ps(bias + k0);
      for (int q = 0; q < M * M; ++q) {
        if (at[q] < 0) continue;  // past the image's edge
        __m512 out = _mm512_add_ps(o[q], b);
        if constexpr (kResidual) out = _mm512_add_ps(out, load16(residual + at[q] + k0, kAll));
        // max(0, NaN) is NaN (maxps returns its second operand when unordered).
        if constexpr (kRelu) out = avx512::relu(out);
        store16(y + at[q] + k0, out, kAll);
      }
    }
  }
}

// V (compute dtype) and M (fp32) of one block together within a 1-2 MiB L2.
constexpr int64_t kBlockBytes = 768 * 1024;
// No block smaller than two of the GEMM's 6-row steps.
constexpr int64_t kMinBlockTiles = 12;
// Above kMaxBlockedFilterBytes (bf16 C = K = 512: 8 MiB; fp32 C = K = 256: 9 MiB) each step
// runs over all tiles, reading each filter plane once: blocked, layer4's bf16 7x7 convs at batch
// 8 took 1.30-1.36x the direct conv's time inside ResNet-50
// (benchmarks/results/cpu/2026-11-24-cpu-bf16gemm-layers.log).
// Columns of the filter per parallel GEMM task over all tiles (the GEMM's widest block).
constexpr int64_t kTaskColumns = 64;

template <typename P, typename Gemm = Avx512Gemm<P>>
at::Tensor run(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
               const at::Tensor* residual, bool relu, const Geometry& g, bool emulate = false) {
  using T = typename P::T;
  constexpr int64_t kPlanes = (P::M + 2) * (P::M + 2);
  at::Tensor y = at::empty({g.n, g.k, g.h, g.w},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const T* xs = x.const_data_ptr<T>();
  const T* us = u.const_data_ptr<T>();
  const T* r = residual != nullptr ? residual->const_data_ptr<T>() : nullptr;
  const float* b = bias.const_data_ptr<float>();
  T* ys = y.mutable_data_ptr<T>();
  // m: M for the tiles [t0, t1) with `planes` tiles per ij.
  const auto transform_out = [&](const float* m, int64_t t0, int64_t t1, int64_t planes) {
    if (r != nullptr) {
      relu ? output_transform<P, true, true>(m, b, r, ys, g, t0, t1, planes)
           : output_transform<P, true, false>(m, b, r, ys, g, t0, t1, planes);
    } else {
      relu ? output_transform<P, false, true>(m, b, r, ys, g, t0, t1, planes)
           : output_transform<P, false, false>(m, b, r, ys, g, t0, t1, planes);
    }
  };
  const int64_t plane_elements = g.c * g.k;  // of the filter, either layout
  // Whether the GEMMs prefetch the filter they multiply with next (avx512::PanelPrefetch).
  const bool streamed = kPlanes * plane_elements * static_cast<int64_t>(sizeof(T)) >
                        avx512::kStreamedWeightBytes;
  const int64_t v_bytes = kPlanes * g.c * static_cast<int64_t>(sizeof(T));  // per tile
  const int64_t m_bytes = kPlanes * g.k * static_cast<int64_t>(sizeof(float));
  if (kPlanes * plane_elements * static_cast<int64_t>(sizeof(T)) > kMaxBlockedFilterBytes) {
    // Each step over all tiles: transform (split by tiles) -> GEMMs (split by plane and
    // columns: each task's filter slice stays in cache) -> transform.
    at::Tensor vt = scratch(kV, {kPlanes, g.tiles, g.c}, x.options());
    at::Tensor mt = scratch(kM, {kPlanes, g.tiles, g.k}, x.options().dtype(at::kFloat));
    T* v = vt.mutable_data_ptr<T>();
    float* m = mt.mutable_data_ptr<float>();
    at::parallel_for(0, g.tiles, kTilesPerTask, [&](int64_t begin, int64_t end) {
      input_transform<P>(xs, v + begin * g.c, g, begin, end, g.tiles);
    });
    const int64_t column_blocks = (g.k + kTaskColumns - 1) / kTaskColumns;
    at::parallel_for(0, kPlanes * column_blocks, 1, [&](int64_t begin, int64_t end) {
      Gemm gemm(emulate);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / column_blocks, col = task % column_blocks * kTaskColumns;
        const int64_t np = (task + 1) / column_blocks;  // the next task's plane and columns
        const T* next = np < kPlanes && streamed ? us + np * plane_elements +
                                           P::column_offset((task + 1) % column_blocks *
                                                            kTaskColumns)
                                     : nullptr;
        gemm(v + p * g.tiles * g.c, g.tiles, us + p * plane_elements, col,
             std::min(kTaskColumns, g.k - col), g, m + p * g.tiles * g.k, next);
      }
    });
    at::parallel_for(0, g.tiles, kTilesPerTask, [&](int64_t begin, int64_t end) {
      transform_out(m + begin * g.k, begin, end, g.tiles);
    });
    return y;
  }
  // As many blocks as the cache asks for, rounded up to a multiple of the threads (equal
  // shares at batch 1), none smaller than kMinBlockTiles.
  const int64_t max_block = std::max(kMinBlockTiles, kBlockBytes / (v_bytes + m_bytes));
  const int64_t threads = at::get_num_threads();
  int64_t blocks = (g.tiles + max_block - 1) / max_block;
  blocks = (blocks + threads - 1) / threads * threads;
  blocks = std::max<int64_t>(1, std::min(blocks, g.tiles / kMinBlockTiles));
  const int64_t block = (g.tiles + blocks - 1) / blocks;
  // Each task runs whole blocks, transform -> GEMM per plane -> transform, on its own buffers.
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    Gemm gemm(emulate);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t0 = i * block, t1 = std::min(g.tiles, t0 + block), tb = t1 - t0;
      if (tb <= 0) continue;
      auto* v = static_cast<T*>(scratch_bytes(kV, tb * v_bytes));
      auto* m = static_cast<float*>(scratch_bytes(kM, tb * m_bytes));
      input_transform<P>(xs, v, g, t0, t1, tb);
      for (int64_t p = 0; p < kPlanes; ++p) {
        // Then the next plane (after the last, the first again, for the next block).
        const T* next = streamed ? us + (p + 1 < kPlanes ? p + 1 : 0) * plane_elements
                                 : nullptr;
        gemm(v + p * tb * g.c, tb, us + p * plane_elements, 0, g.k, g, m + p * tb * g.k, next);
      }
      transform_out(m, t0, t1, tb);
    }
  });
  return y;
}

}  // namespace

// The transforms are compiled once for both pipelines, with AVX512_BF16 allowed (the fp32 ones
// use none of its instructions, but nothing promises that): fp32 asks for the same CPU.
bool pipelines_available() { return avx512_bf16_available(); }

at::Tensor run_bf16_pipeline(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
                             const at::Tensor* residual, bool relu, const Geometry& g,
                             GemmKernel kernel) {
  TORCH_CHECK(pipelines_available() && g.c % 2 == 0 && g.k % kLanes == 0 && u.dim() == 4,
              "run_bf16_pipeline: needs AVX512_BF16, C_in even, C_out a multiple of 16 and a "
              "pair-packed filter");
  if (kernel == GemmKernel::kAvx512) return run<Bf16F23>(x, u, bias, residual, relu, g);
  TORCH_CHECK(g.c % amx::kStepChannels == 0 && g.k % amx::kBlockColumns == 0,
              "run_bf16_pipeline: the AMX GEMM needs C_in and C_out multiples of 32");
  return run<Bf16F23, AmxGemm>(x, u, bias, residual, relu, g,
                               /*emulate=*/kernel == GemmKernel::kAmxModel);
}

at::Tensor run_f32_pipeline(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
                            const at::Tensor* residual, bool relu, const Geometry& g) {
  TORCH_CHECK(pipelines_available() && g.k % kLanes == 0 && u.size(0) == 36,
              "run_f32_pipeline: needs AVX-512, C_out a multiple of 16 and an F(4,3) filter");
  return run<F32F43>(x, u, bias, residual, relu, g);
}

#else  // no x86-64 GCC/Clang: never available

bool pipelines_available() { return false; }

at::Tensor run_bf16_pipeline(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor*, bool, const Geometry&, GemmKernel) {
  TORCH_CHECK(false, "run_bf16_pipeline: not built for this platform");
}

at::Tensor run_f32_pipeline(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor*, bool, const Geometry&) {
  TORCH_CHECK(false, "run_f32_pipeline: not built for this platform");
}

#endif

}  // namespace resnet_fused::winograd
