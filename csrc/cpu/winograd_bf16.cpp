// bf16 Winograd F(2,3) on CPUs with AVX512_BF16: the pipeline the op (winograd_cpu.cpp) runs
// there for C_in even and C_out a multiple of 16 (all of ResNet's layers).
//
// Against the portable path (transforms in plain loops, ATen's bmm in between):
// * the GEMM is gemm_bf16_pairs on a filter pair-packed once when the model is fused, where
//   ATen's bf16 GEMM (oneDNN) packs the filter again on every call, so it can run on blocks of
//   tiles small enough to stay in L2 between the three steps: V (bf16) and M (fp32) never go
//   to memory;
// * M stays fp32 (the portable path rounds it to bf16 for ATen's GEMM): one rounding fewer;
// * the transforms are written with AVX-512 intrinsics, 16 channels per register, converting
//   with vcvtneps2bf16 (round to nearest even in one instruction; the portable loops round bit by
//   bit, and GCC compiles them 8 floats wide). In a development profile (perf, batch 8, 64
//   channels, 56x56, 1 thread) the portable transforms took ~45% of the op with this GEMM.
//
// Numerics as the portable F(2,3): transforms in fp32, V rounded to bf16 once, GEMM accumulating in
// fp32; then the output transform and the epilogue in fp32 and one rounding to bf16. The
// AVX512_BF16 instructions flush denormal inputs and results to zero (they ignore MXCSR); NaN
// stays NaN.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "gemm_bf16.h"
#include "winograd_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RESNET_FUSED_HAS_WINOGRAD_BF16 1
#include <immintrin.h>
#endif

namespace resnet_fused::winograd {

#ifdef RESNET_FUSED_HAS_WINOGRAD_BF16
namespace {


constexpr int64_t kLanes = 16;  // fp32 values (channels) per register
constexpr int kA = 4;           // F(2,3): 4x4 input patches, 16 planes
constexpr int kPlanes = kA * kA;

[[gnu::always_inline]] RESNET_FUSED_AVX512_BF16 inline __m512 load_bf16(const uint16_t* p,
                                                                       __mmask16 mask) {
  // bf16 -> fp32 is exact: the 16 bits become the top half of the float. (The maskz forms:
  // the plain ones start from an "undefined" register, which GCC 12 warns about.)
  constexpr __mmask16 kAll = 0xFFFF;
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(kAll, _mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, wide, 16));
}

[[gnu::always_inline]] RESNET_FUSED_AVX512_BF16 inline void store_bf16(uint16_t* p, __m512 v,
                                                                      __mmask16 mask) {
  _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(v));
}

// V[ij][t - t0][c] = (B^T d_t B)[i][j] for the tiles [t0, t1): as input_transform_registers in
// winograd_cpu.cpp (same B^T, same order of operations), 16 channels at a time.
RESNET_FUSED_AVX512_BF16 void input_transform(const uint16_t* x, uint16_t* v, const Geometry& g,
                                              int64_t t0, int64_t t1) {
  const int64_t plane = (t1 - t0) * g.c;  // elements between consecutive V[ij]
  const uint16_t* src[kPlanes];
  for (int64_t t = t0; t < t1; ++t) {
    const TileOrigin origin = tile_origin<2>(g, t);
    const int64_t y0 = origin.y - 1, x0 = origin.x - 1;
    const uint16_t* image = x + origin.image * g.h * g.w * g.c;
    for (int i = 0; i < kA; ++i) {
      for (int j = 0; j < kA; ++j) {
        const int64_t yy = y0 + i, xx = x0 + j;
        const bool inside = yy >= 0 && yy < g.h && xx >= 0 && xx < g.w;
        src[i * kA + j] = inside ? image + (yy * g.w + xx) * g.c : nullptr;
      }
    }
    uint16_t* dst = v + (t - t0) * g.c;
    for (int64_t c0 = 0; c0 < g.c; c0 += kLanes) {
      const int64_t n = std::min(kLanes, g.c - c0);
      const __mmask16 mask = static_cast<__mmask16>((uint32_t{1} << n) - 1);
      __m512 d[kPlanes], r[kPlanes], o[kPlanes];
      for (int k = 0; k < kPlanes; ++k) {
        d[k] = src[k] != nullptr ? load_bf16(src[k] + c0, mask) : _mm512_setzero_ps();
      }
      for (int j = 0; j < kA; ++j) {  // down the columns: B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0;
        r[j] = _mm512_sub_ps(d[j], d[2 * kA + j]);  //        0 1 0 -1]
        r[kA + j] = _mm512_add_ps(d[kA + j], d[2 * kA + j]);
        r[2 * kA + j] = _mm512_sub_ps(d[2 * kA + j], d[kA + j]);
        r[3 * kA + j] = _mm512_sub_ps(d[kA + j], d[3 * kA + j]);
      }
      for (int i = 0; i < kA; ++i) {  // along the rows
        const __m512* ri = r + i * kA;
        o[i * kA] = _mm512_sub_ps(ri[0], ri[2]);
        o[i * kA + 1] = _mm512_add_ps(ri[1], ri[2]);
        o[i * kA + 2] = _mm512_sub_ps(ri[2], ri[1]);
        o[i * kA + 3] = _mm512_sub_ps(ri[1], ri[3]);
      }
      for (int k = 0; k < kPlanes; ++k) store_bf16(dst + k * plane + c0, o[k], mask);
    }
  }
}

// y[tile t] = act(A^T m_t A + bias (+ residual)) for the tiles [t0, t1), m fp32 (16, t1 - t0, K):
// as output_transform_registers in winograd_cpu.cpp, 16 channels at a time (K % 16 == 0).
template <bool kResidual, bool kRelu>
RESNET_FUSED_AVX512_BF16 void output_transform(const float* m, const float* bias,
                                               const uint16_t* residual, uint16_t* y,
                                               const Geometry& g, int64_t t0, int64_t t1) {
  const int64_t plane = (t1 - t0) * g.k;
  constexpr __mmask16 kAll = 0xFFFF;
  for (int64_t t = t0; t < t1; ++t) {
    const TileOrigin origin = tile_origin<2>(g, t);
    const int64_t offset = origin.image * g.h * g.w * g.k;
    int64_t at[4];
    bool inside[4];
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        inside[i * 2 + j] = origin.y + i < g.h && origin.x + j < g.w;
        at[i * 2 + j] = offset + ((origin.y + i) * g.w + origin.x + j) * g.k;
      }
    }
    const float* src = m + (t - t0) * g.k;
    for (int64_t k0 = 0; k0 < g.k; k0 += kLanes) {
      __m512 s[kPlanes], c[2 * kA], o[4];
      for (int k = 0; k < kPlanes; ++k) s[k] = _mm512_loadu_ps(src + k * plane + k0);
      for (int j = 0; j < kA; ++j) {  // down the columns: A^T = [1 1 1 0; 0 1 -1 -1]
        c[j] = _mm512_add_ps(_mm512_add_ps(s[j], s[kA + j]), s[2 * kA + j]);
        c[kA + j] = _mm512_sub_ps(_mm512_sub_ps(s[kA + j], s[2 * kA + j]), s[3 * kA + j]);
      }
      for (int i = 0; i < 2; ++i) {  // along the rows
        const __m512* ci = c + i * kA;
        o[i * 2] = _mm512_add_ps(_mm512_add_ps(ci[0], ci[1]), ci[2]);
        o[i * 2 + 1] = _mm512_sub_ps(_mm512_sub_ps(ci[1], ci[2]), ci[3]);
      }
      const __m512 b = _mm512_loadu_ps(bias + k0);
      for (int q = 0; q < 4; ++q) {
        if (!inside[q]) continue;  // past the image's edge
        __m512 out = _mm512_add_ps(o[q], b);
        if constexpr (kResidual) out = _mm512_add_ps(out, load_bf16(residual + at[q] + k0, kAll));
        // max(0, NaN) is NaN (maxps returns its second operand when unordered).
        if constexpr (kRelu) out = _mm512_maskz_max_ps(kAll, _mm512_setzero_ps(), out);
        store_bf16(y + at[q] + k0, out, kAll);
      }
    }
  }
}

// V (bf16) and M (fp32) of one block together within a 1-2 MiB L2.
constexpr int64_t kBlockBytes = 768 * 1024;
// No block smaller than two of the GEMM's 6-row steps.
constexpr int64_t kMinBlockTiles = 12;

}  // namespace

bool bf16_pairs_available() { return gemm_bf16_available(); }

at::Tensor run_bf16_pairs(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
                          const at::Tensor* residual, bool relu, const Geometry& g) {
  TORCH_CHECK(bf16_pairs_available() && g.c % 2 == 0 && g.k % kLanes == 0,
              "run_bf16_pairs: needs AVX512_BF16, C_in even and C_out a multiple of 16");
  const auto opts = x.options();
  at::Tensor y =
      at::empty({g.n, g.k, g.h, g.w}, opts.memory_format(at::MemoryFormat::ChannelsLast));
  const auto* xs = reinterpret_cast<const uint16_t*>(x.const_data_ptr<c10::BFloat16>());
  const c10::BFloat16* us = u.const_data_ptr<c10::BFloat16>();
  const auto* r = residual != nullptr
                      ? reinterpret_cast<const uint16_t*>(residual->const_data_ptr<c10::BFloat16>())
                      : nullptr;
  const float* b = bias.const_data_ptr<float>();
  auto* ys = reinterpret_cast<uint16_t*>(y.mutable_data_ptr<c10::BFloat16>());
  const auto transform_out = [&](const float* m, int64_t t0, int64_t t1) {
    if (r != nullptr) {
      relu ? output_transform<true, true>(m, b, r, ys, g, t0, t1)
           : output_transform<true, false>(m, b, r, ys, g, t0, t1);
    } else {
      relu ? output_transform<false, true>(m, b, r, ys, g, t0, t1)
           : output_transform<false, false>(m, b, r, ys, g, t0, t1);
    }
  };
  // As many blocks as the cache asks for, rounded up to a multiple of the threads (equal
  // shares at batch 1), none smaller than kMinBlockTiles.
  const int64_t tile_bytes = kPlanes * (g.c * 2 + g.k * 4);
  const int64_t max_block = std::max(kMinBlockTiles, kBlockBytes / tile_bytes);
  const int64_t threads = at::get_num_threads();
  int64_t blocks = (g.tiles + max_block - 1) / max_block;
  blocks = (blocks + threads - 1) / threads * threads;
  blocks = std::max<int64_t>(1, std::min(blocks, g.tiles / kMinBlockTiles));
  const int64_t block = (g.tiles + blocks - 1) / blocks;
  // Each task runs whole blocks, transform -> 16 GEMMs -> transform, on its own buffers.
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t0 = i * block, t1 = std::min(g.tiles, t0 + block), tb = t1 - t0;
      if (tb <= 0) continue;
      auto* v = static_cast<c10::BFloat16*>(scratch_bytes(kV, kPlanes * tb * g.c * 2));
      auto* m = static_cast<float*>(scratch_bytes(kM, kPlanes * tb * g.k * 4));
      input_transform(xs, reinterpret_cast<uint16_t*>(v), g, t0, t1);
      for (int64_t p = 0; p < kPlanes; ++p) {
        gemm_bf16_pairs(v + p * tb * g.c, tb, g.c, us + p * g.c * g.k, g.c, g.k,
                        m + p * tb * g.k, g.k);
      }
      transform_out(m, t0, t1);
    }
  });
  return y;
}

#else  // no x86-64 GCC/Clang: never available

bool bf16_pairs_available() { return false; }

at::Tensor run_bf16_pairs(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor*, bool, const Geometry&) {
  TORCH_CHECK(false, "run_bf16_pairs: not built for this platform");
}

#endif

}  // namespace resnet_fused::winograd
