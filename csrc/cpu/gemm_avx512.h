// Register-blocked GEMMs on AVX-512 for the Winograd transform domain: out (fp32) = a @ b, with
// a row-major (rows x c) and b (c x k) in the layout each instruction multiplies with.
//
// * bf16 (AVX512_BF16's vdpbf16ps): b "pair-packed", input channels in pairs, each output
//   channel's pair adjacent: b_pairs[c / 2][k][2] (element (ci, ko) at (ci / 2) * 2k + 2 ko +
//   ci % 2). ATen's bf16 GEMM (oneDNN) repacks B into its own layout on every call; a filter
//   packed once when a model is fused skips that.
// * fp32 (AVX512F's FMA): b plain row-major, b[c][k].
//
// Either way the GEMM can then run on blocks of tiles small enough to stay in cache between the
// Winograd transforms (winograd_avx512.cpp).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

// The ISA extensions the AVX-512 kernels use, for their definitions' target attributes (the
// extension is built for baseline x86-64; callers check avx512_available/avx512_bf16_available).
#define RESNET_FUSED_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define RESNET_FUSED_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace resnet_fused {

// Columns of B per vector of fp32 results; k must be a multiple of this.
constexpr int64_t kGemmColumns = 16;

// True if this CPU runs the RESNET_FUSED_AVX512 kernels (AVX-512 F, BW and VL, with the OS
// saving AVX-512 state) and the build has them (x86-64 with GCC or Clang); false elsewhere, where
// they must not be called.
bool avx512_available();

// The same for the RESNET_FUSED_AVX512_BF16 kernels (also AVX512_BF16).
bool avx512_bf16_available();

// out[:, 0:n] = a @ b[:, 0:n] for bf16 a (rows x c) and pair-packed b (c x ldb: pair rows of
// 2 ldb elements; b may point at a later column, 2 elements a column). Requires c even, n a
// multiple of kGemmColumns, n <= ldb, lda >= c, ldo >= n, rows >= 0. Accumulates in fp32 (each
// vdpbf16ps adds two products to a lane). `b_next`: the 64 columns of B (same layout and ldb)
// the caller multiplies with next, prefetched during the last column block; nullptr: none.
void gemm_bf16_pairs(const c10::BFloat16* a, int64_t rows, int64_t lda,
                     const c10::BFloat16* b_pairs, int64_t ldb, int64_t c, int64_t n, float* out,
                     int64_t ldo, const c10::BFloat16* b_next = nullptr);

// The same in fp32 (FMA), b plain row-major (c x ldb).
void gemm_f32(const float* a, int64_t rows, int64_t lda, const float* b, int64_t ldb, int64_t c,
              int64_t n, float* out, int64_t ldo, const float* b_next = nullptr);

}  // namespace resnet_fused
