// A bf16 GEMM for CPUs with AVX512_BF16 (vdpbf16ps), for the Winograd transform domain.
//
// out[rows x k] (fp32) = a[rows x c] (bf16, row-major) @ b (bf16, c x k, "pair-packed").
//
// Pair-packed B is the layout vdpbf16ps multiplies with: input channels in pairs, each output
// channel's pair adjacent, b_pairs[c / 2][k][2] (element (ci, ko) at (ci / 2) * 2k + 2 ko + ci % 2).
// ATen's bf16 GEMM (oneDNN) repacks B into its own layout on every call; a filter packed once
// when a model is fused skips that, and the GEMM then runs on blocks small enough to stay in
// cache between the Winograd transforms (see winograd_cpu.cpp).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

// The ISA extensions of AVX512_BF16's CPUs that the bf16 kernels use, for their definitions'
// target attribute (the extension is built for baseline x86-64; see gemm_bf16_available).
#define RESNET_FUSED_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace resnet_fused {

// Columns of B per vector of fp32 results; k must be a multiple of this.
constexpr int64_t kGemmBf16Columns = 16;

// True if this CPU runs the RESNET_FUSED_AVX512_BF16 kernels (AVX-512 F, BW, VL and BF16, with
// the OS saving AVX-512 state) and the build has them (x86-64 with GCC or Clang); false
// elsewhere, where they must not be called.
bool gemm_bf16_available();

// out = a @ b. Requires c even, k a multiple of kGemmBf16Columns, lda >= c, ldo >= k; rows >= 0.
// Accumulates in fp32 (each vdpbf16ps adds two products to a lane, rounding once per pair).
void gemm_bf16_pairs(const c10::BFloat16* a, int64_t rows, int64_t lda,
                     const c10::BFloat16* b_pairs, int64_t c, int64_t k, float* out,
                     int64_t ldo);

}  // namespace resnet_fused
