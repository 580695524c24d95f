// The register-blocked AVX-512 micro-kernels behind gemm_avx512.cpp (the Winograd GEMMs) and
// conv1x1_cpu.cpp (1x1 convolutions accumulated into their residual), with what happens to the
// accumulators before and after the reduction left to a `Tile` policy:
//
//   Tile::init<Rows, Vectors>(acc)    fills the fp32 accumulators (zeros; bias + residual)
//   Tile::finish<Rows, Vectors>(acc)  writes them out (plain fp32 rows; ReLU, rounding, in place)
//   Tile::step(i)                     called at each reduction step i: room for a prefetch
//
// One micro-kernel call computes Rows rows of A by Vectors 16-column vectors of B (at most 6 x 4:
// 24 of the 32 zmm registers hold accumulators across the whole reduction). Per reduction step
// it loads the B vectors once and broadcasts each row's element (bf16: pair of elements, one
// 32-bit load), so every B load feeds Rows multiply-adds. A's rows are given as pointers, so
// they need not be evenly spaced (a strided convolution's input pixels are not).
//
// Only for x86-64 GCC/Clang builds (RESNET_FUSED_HAS_AVX512_KERNELS); callers check
// avx512_available()/avx512_bf16_available() before running them.
#pragma once

#include "gemm_avx512.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RESNET_FUSED_HAS_AVX512_KERNELS 1
#include <immintrin.h>

#include <algorithm>
#include <cstring>

// Loops over a micro-kernel's rows and vectors (compile-time counts) must unroll fully, so that
// each accumulator is its own register; GCC's size heuristics otherwise keep some as loops over
// a stack copy.
#define RESNET_FUSED_UNROLL _Pragma("GCC unroll 8")

namespace resnet_fused {
namespace avx512 {

constexpr int kRows = 6;     // rows of A per micro-kernel call, at most
constexpr int kVectors = 4;  // 16-column vectors of B per micro-kernel call, at most
constexpr int64_t kBlockColumns = kVectors * kGemmColumns;

constexpr int64_t kLanes = kGemmColumns;  // fp32 values (channels) per register
constexpr __mmask16 kAll = 0xFFFF;

inline __mmask16 tail_mask(int64_t n) {  // the first min(n, 16) lanes
  return n >= kLanes ? kAll : static_cast<__mmask16>((uint32_t{1} << n) - 1);
}

// Loads and stores of 16 channels as fp32 registers, masked to the first lanes of `mask`.
[[gnu::always_inline]] RESNET_FUSED_AVX512_BF16 inline __m512 load16(const c10::BFloat16* p,
                                                                     __mmask16 mask) {
  // bf16 -> fp32 is exact: the 16 bits become the top half of the float. (The maskz forms:
  // the plain ones start from an "undefined" register, which GCC 12 warns about.)
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(kAll, _mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, wide, 16));
}

[[gnu::always_inline]] RESNET_FUSED_AVX512_BF16 inline void store16(c10::BFloat16* p, __m512 v,
                                                                    __mmask16 mask) {
  _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(v));
}

[[gnu::always_inline]] RESNET_FUSED_AVX512 inline __m512 load16(const float* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}

[[gnu::always_inline]] RESNET_FUSED_AVX512 inline void store16(float* p, __m512 v,
                                                               __mmask16 mask) {
  _mm512_mask_storeu_ps(p, mask, v);
}

// max(0, v): NaN stays NaN (MAXPS returns its second operand when the pair is unordered).
[[gnu::always_inline]] RESNET_FUSED_AVX512 inline __m512 relu(__m512 v) {
  return _mm512_maskz_max_ps(kAll, _mm512_setzero_ps(), v);
}

// The slice of the next weight panel (the B columns the next micro-kernel calls multiply with)
// that one call prefetches into L1, a cache line per reduction step (Tile::step): the slices of
// the calls over one panel cover the next panel once. A model's weights do not fit in L3
// (ResNet-50: 51 MB in bf16), so every forward streams them from memory, and with few calls per
// panel (batch 1, 7x7 or 14x14) each panel's first pass waited for it. A panel row (one
// reduction step's B vectors) is 64 columns: 256 bytes, 4 lines, in either dtype; the rows are
// `row_bytes` apart.
// Weights of more bytes than this (a Zen 4/5 core's L2) are prefetched; smaller ones stay in L2
// from one call to the next, and prefetching them only cost time (Winograd 64 -> 64 at 56x56).
constexpr int64_t kStreamedWeightBytes = int64_t{1} << 20;

struct PanelPrefetch {
  static constexpr int64_t kRowLines = 4;
  const char* panel = nullptr;  // nullptr: nothing to prefetch
  int64_t row_bytes = 0;
  int64_t first = 0;     // this call's first line, counting along the rows
  int64_t step_q16 = 0;  // lines per reduction step in 16.16 fixed point, at most 1

  [[gnu::always_inline]] void at(int64_t step) const {
    if (panel == nullptr) return;
    const int64_t line = first + ((step * step_q16) >> 16);
    _mm_prefetch(panel + (line >> 2) * row_bytes + (line & 3) * 64, _MM_HINT_T0);
  }

  // Call `call` of `calls` over a panel of `rows` rows, each call `rows` reduction steps long.
  static PanelPrefetch slice(const void* panel, int64_t rows, int64_t row_bytes, int64_t call,
                             int64_t calls) {
    if (panel == nullptr || rows <= 0 || calls <= 0) return {};
    const int64_t per_call = (rows * kRowLines + calls - 1) / calls;
    return {static_cast<const char*>(panel), row_bytes, call * per_call,
            std::min<int64_t>(int64_t{1} << 16, (per_call << 16) / rows)};
  }
};

// A Tile whose step(i) prefetches its `weights` slice; the plain Tile's step is empty, so the
// tiles of small (cached) weights have no per-step work at all.
template <typename Tile>
struct Streaming : Tile {
  [[gnu::always_inline]] void step(int64_t i) const { this->weights.at(i); }
};

// bf16 (vdpbf16ps) on pair-packed B: b points at the block's first column in B's first row of
// pairs, ldb is B's row length in columns (2 ldb elements per pair row).
struct Bf16Pairs {
  using Element = c10::BFloat16;

  template <int Rows, int Vectors, class Tile>
  RESNET_FUSED_AVX512_BF16 static void micro(const Element* const* a, const Element* b,
                                             int64_t c, int64_t ldb, const Tile& tile) {
    __m512 acc[Rows][Vectors];
    tile.init(acc);
    for (int64_t pair = 0; pair < c / 2; ++pair) {
      tile.step(pair);
      const Element* b_row = b + pair * 2 * ldb;
      __m512bh bv[Vectors];
      RESNET_FUSED_UNROLL for (int v = 0; v < Vectors; ++v) {
        bv[v] = (__m512bh)_mm512_loadu_si512(b_row + v * 2 * kGemmColumns);
      }
      RESNET_FUSED_UNROLL for (int r = 0; r < Rows; ++r) {
        int32_t a_pair;
        std::memcpy(&a_pair, a[r] + 2 * pair, sizeof(a_pair));
        const __m512bh av = (__m512bh)_mm512_set1_epi32(a_pair);
        RESNET_FUSED_UNROLL for (int v = 0; v < Vectors; ++v) {
          acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
        }
      }
    }
    tile.finish(acc);
  }

  static int64_t column_offset(int64_t col) { return 2 * col; }  // pairs: 2 elements a column
  static int64_t steps(int64_t c) { return c / 2; }              // reduction steps: pairs
  static int64_t row_bytes(int64_t ldb) { return 2 * ldb * int64_t{sizeof(Element)}; }
};

// fp32 (FMA) on row-major B: b points at the block's first column in B's first row.
struct F32 {
  using Element = float;

  template <int Rows, int Vectors, class Tile>
  RESNET_FUSED_AVX512 static void micro(const Element* const* a, const Element* b, int64_t c,
                                        int64_t ldb, const Tile& tile) {
    __m512 acc[Rows][Vectors];
    tile.init(acc);
    for (int64_t ci = 0; ci < c; ++ci) {
      tile.step(ci);
      const Element* b_row = b + ci * ldb;
      __m512 bv[Vectors];
      RESNET_FUSED_UNROLL for (int v = 0; v < Vectors; ++v) {
        bv[v] = _mm512_loadu_ps(b_row + v * kGemmColumns);
      }
      RESNET_FUSED_UNROLL for (int r = 0; r < Rows; ++r) {
        const __m512 av = _mm512_set1_ps(a[r][ci]);
        RESNET_FUSED_UNROLL for (int v = 0; v < Vectors; ++v) {
          acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
      }
    }
    tile.finish(acc);
  }

  static int64_t column_offset(int64_t col) { return col; }
  static int64_t steps(int64_t c) { return c; }
  static int64_t row_bytes(int64_t ldb) { return ldb * int64_t{sizeof(Element)}; }
};

// Kind::micro<Rows, Vectors> with Rows and Vectors known only at run time (1..kRows,
// 1..kVectors), so that one loop covers a GEMM's full tiles and its tails (a switch per call of
// hundreds of cycles costs nothing measurable).
template <typename Kind, int Vectors, class Tile>
void micro_rows(int rows, const typename Kind::Element* const* a,
                const typename Kind::Element* b, int64_t c, int64_t ldb, const Tile& tile) {
  switch (rows) {
    case 6: Kind::template micro<6, Vectors>(a, b, c, ldb, tile); break;
    case 5: Kind::template micro<5, Vectors>(a, b, c, ldb, tile); break;
    case 4: Kind::template micro<4, Vectors>(a, b, c, ldb, tile); break;
    case 3: Kind::template micro<3, Vectors>(a, b, c, ldb, tile); break;
    case 2: Kind::template micro<2, Vectors>(a, b, c, ldb, tile); break;
    case 1: Kind::template micro<1, Vectors>(a, b, c, ldb, tile); break;
    default: break;
  }
}

template <typename Kind, class Tile>
void micro_any(int rows, int vectors, const typename Kind::Element* const* a,
               const typename Kind::Element* b, int64_t c, int64_t ldb, const Tile& tile) {
  switch (vectors) {
    case 4: micro_rows<Kind, 4>(rows, a, b, c, ldb, tile); break;
    case 3: micro_rows<Kind, 3>(rows, a, b, c, ldb, tile); break;
    case 2: micro_rows<Kind, 2>(rows, a, b, c, ldb, tile); break;
    case 1: micro_rows<Kind, 1>(rows, a, b, c, ldb, tile); break;
    default: break;
  }
}

}  // namespace avx512
}  // namespace resnet_fused

#endif
