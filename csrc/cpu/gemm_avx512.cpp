// gemm_bf16_pairs and gemm_f32: see gemm_avx512.h; the micro-kernels are in
// gemm_avx512_kernels.h. On the 2-core AMD EPYC (Zen 4) VM a standalone development build of the
// bf16 loop ran at 190-225 GFLOP/s per core on the Winograd GEMM shapes (rows 48-96, 64-512
// channels), against ~150-175 for ATen's bf16 bmm on the same shapes (2026-11-24).
#include "gemm_avx512.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "gemm_avx512_kernels.h"

namespace resnet_fused {

#ifdef RESNET_FUSED_HAS_AVX512_KERNELS
namespace {

using avx512::kRows;

// The GEMM's tiles: accumulators start at zero and are stored as fp32 rows of out.
struct StoreTile {
  float* out;
  int64_t ldo;
  avx512::PanelPrefetch weights;  // a slice of the next column block's B (or of b_next)

  template <int Rows, int Vectors>
  [[gnu::always_inline]] RESNET_FUSED_AVX512 void init(__m512 (&acc)[Rows][Vectors]) const {
    RESNET_FUSED_UNROLL for (int r = 0; r < Rows; ++r) {
      RESNET_FUSED_UNROLL for (int v = 0; v < Vectors; ++v) acc[r][v] = _mm512_setzero_ps();
    }
  }

  [[gnu::always_inline]] void step(int64_t) const {}

  template <int Rows, int Vectors>
  [[gnu::always_inline]] RESNET_FUSED_AVX512 void finish(
      const __m512 (&acc)[Rows][Vectors]) const {
    const auto o = out;  // locals: the may_alias stores would make the compiler reload members
    const int64_t ld = ldo;
    RESNET_FUSED_UNROLL for (int r = 0; r < Rows; ++r) {
      RESNET_FUSED_UNROLL for (int v = 0; v < Vectors; ++v) {
        _mm512_storeu_ps(o + r * ld + v * kGemmColumns, acc[r][v]);
      }
    }
  }
};

// Column blocks (64 columns, fewer in the last) outermost: a block's slice of B (c x 64 columns,
// at most 128 KiB for c = 512 in fp32) stays in L2 while every row of A passes it; kRows rows of
// A per micro-kernel call, which prefetch the next block's slice (after the last, b_next's).
template <typename Kind, typename Tile>
void gemm_tiles(const typename Kind::Element* a, int64_t rows, int64_t lda,
                const typename Kind::Element* b, int64_t ldb, int64_t c, int64_t n, float* out,
                int64_t ldo, const typename Kind::Element* b_next) {
  const int64_t calls = (rows + kRows - 1) / kRows;  // per column block
  for (int64_t col = 0; col < n; col += avx512::kBlockColumns) {
    const int vectors = static_cast<int>(std::min(avx512::kBlockColumns, n - col) / kGemmColumns);
    const int64_t next_col = col + avx512::kBlockColumns;
    const typename Kind::Element* next = next_col < n ? b + Kind::column_offset(next_col) : b_next;
    for (int64_t r = 0; r < rows; r += kRows) {
      const typename Kind::Element* a_rows[kRows];
      for (int i = 0; i < kRows; ++i) a_rows[i] = a + (r + i) * lda;
      Tile tile{};
      tile.out = out + r * ldo + col;
      tile.ldo = ldo;
      tile.weights = avx512::PanelPrefetch::slice(next, Kind::steps(c), Kind::row_bytes(ldb),
                                                  r / kRows, calls);
      avx512::micro_any<Kind>(static_cast<int>(std::min<int64_t>(kRows, rows - r)), vectors,
                              a_rows, b + Kind::column_offset(col), c, ldb, tile);
    }
  }
}

// Prefetching only where the caller names what comes next (its filter is streamed).
template <typename Kind>
void gemm(const typename Kind::Element* a, int64_t rows, int64_t lda,
          const typename Kind::Element* b, int64_t ldb, int64_t c, int64_t n, float* out,
          int64_t ldo, const typename Kind::Element* b_next) {
  if (b_next != nullptr) {
    gemm_tiles<Kind, avx512::Streaming<StoreTile>>(a, rows, lda, b, ldb, c, n, out, ldo, b_next);
  } else {
    gemm_tiles<Kind, StoreTile>(a, rows, lda, b, ldb, c, n, out, ldo, b_next);
  }
}

void check_shapes(const char* name, int64_t rows, int64_t lda, int64_t ldb, int64_t c,
                  int64_t n, int64_t ldo) {
  TORCH_CHECK(n % kGemmColumns == 0 && n <= ldb && lda >= c && ldo >= n && rows >= 0, name,
              ": needs n a multiple of ", kGemmColumns, ", n <= ldb, lda >= c, ldo >= n, got c=",
              c, " n=", n, " lda=", lda, " ldb=", ldb, " ldo=", ldo);
}

}  // namespace

bool avx512_available() {
  static const bool available = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return available;
}

bool avx512_bf16_available() {
  static const bool available = avx512_available() && __builtin_cpu_supports("avx512bf16");
  return available;
}

void gemm_bf16_pairs(const c10::BFloat16* a, int64_t rows, int64_t lda,
                     const c10::BFloat16* b_pairs, int64_t ldb, int64_t c, int64_t n, float* out,
                     int64_t ldo, const c10::BFloat16* b_next) {
  TORCH_CHECK(avx512_bf16_available(), "gemm_bf16_pairs: this CPU has no AVX512_BF16");
  TORCH_CHECK(c % 2 == 0, "gemm_bf16_pairs: needs c even, got ", c);
  check_shapes("gemm_bf16_pairs", rows, lda, ldb, c, n, ldo);
  gemm<avx512::Bf16Pairs>(a, rows, lda, b_pairs, ldb, c, n, out, ldo, b_next);
}

void gemm_f32(const float* a, int64_t rows, int64_t lda, const float* b, int64_t ldb, int64_t c,
              int64_t n, float* out, int64_t ldo, const float* b_next) {
  TORCH_CHECK(avx512_available(), "gemm_f32: this CPU has no AVX-512");
  check_shapes("gemm_f32", rows, lda, ldb, c, n, ldo);
  gemm<avx512::F32>(a, rows, lda, b, ldb, c, n, out, ldo, b_next);
}

#else  // no x86-64 GCC/Clang: never available

bool avx512_available() { return false; }
bool avx512_bf16_available() { return false; }

void gemm_bf16_pairs(const c10::BFloat16*, int64_t, int64_t, const c10::BFloat16*, int64_t,
                     int64_t, int64_t, float*, int64_t, const c10::BFloat16*) {
  TORCH_CHECK(false, "gemm_bf16_pairs: not built for this platform");
}

void gemm_f32(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, float*,
              int64_t, const float*) {
  TORCH_CHECK(false, "gemm_f32: not built for this platform");
}

#endif

}  // namespace resnet_fused
