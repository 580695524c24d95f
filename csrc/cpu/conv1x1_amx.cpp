// The 1x1 convolution (bf16) on AMX tiles: conv1x1_amx_bf16, see conv1x1_cpu.h.
//
// Same tasks and weight as the AVX-512 kernel (conv1x1_cpu.cpp): blocks of output pixels by
// panels of 64 output channels, the weight pair-packed, which is the layout TDPBF16PS reads B in
// (a panel's pair rows are 256 bytes apart). Within a task, 32 pixels at a time: their input rows
// are read in place at stride 1 (32 rows C elements apart), or gathered into a buffer for a
// strided conv and the last, shorter group (rows past the end are zeros, their results never
// stored); then each 32-channel half of the panel is one amx::block_bf16 (32 x 32 fp32), and the
// epilogue adds bias (+ the residual, read from out), applies ReLU and rounds to bf16 in place.
//
// Numerics: fp32 accumulation of the products (as the AVX512_BF16 kernel, a different order),
// then + bias (+ residual), one rounding. NaN stays NaN.
#include <ATen/Parallel.h>

#include <vector>

#include "amx_tiles.h"
#include "conv1x1_cpu.h"
#include "gemm_avx512_kernels.h"

namespace resnet_fused {

#ifdef RESNET_FUSED_HAS_AVX512_KERNELS
namespace {

using amx::kBlockColumns;
using amx::kBlockRows;

// out[r, 0:columns] = act(acc[r] + bias (+ out[r])) for the block's first `rows` rows.
RESNET_FUSED_AVX512_BF16 void epilogue(const float* acc, int64_t rows, int64_t columns,
                                       const float* bias, c10::BFloat16* out, int64_t ldo,
                                       bool accumulate, bool relu) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < columns; j += avx512::kLanes) {
      __m512 y = _mm512_add_ps(_mm512_loadu_ps(acc + r * kBlockColumns + j),
                               _mm512_loadu_ps(bias + j));
      c10::BFloat16* o = out + r * ldo + j;
      if (accumulate) y = _mm512_add_ps(y, avx512::load16(o, avx512::kAll));
      avx512::store16(o, relu ? avx512::relu(y) : y, avx512::kAll);
    }
  }
}

}  // namespace

void conv1x1_amx_bf16(const c10::BFloat16* x, const c10::BFloat16* w, const float* bias,
                      c10::BFloat16* out, bool accumulate, bool relu, const Conv1x1Shape& s,
                      bool emulate) {
  using Element = c10::BFloat16;
  const int64_t pixels = s.pixels(), panels = s.panels();
  const Conv1x1Tasks tasks =
      Conv1x1Tasks::split(s, sizeof(Element), kBlockRows, at::get_num_threads());
  const int64_t row_bytes = s.c * static_cast<int64_t>(sizeof(Element));
  constexpr int64_t kPanelPairRowBytes = 2 * kConv1x1Panel * sizeof(Element);
  at::parallel_for(0, tasks.row_blocks * panels, 1, [&](int64_t begin, int64_t end) {
    const amx::TileSession session(emulate);
    std::vector<Element> gathered;  // a group's input rows, where they are not read in place
    alignas(64) float acc[kBlockRows * kBlockColumns];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = task / panels * tasks.block_rows;
      const int64_t r1 = std::min(pixels, r0 + tasks.block_rows);
      const int64_t q = task % panels, col = q * kConv1x1Panel;
      const int64_t panel_columns = std::min(kConv1x1Panel, s.k - col);
      const Element* panel = w + q * s.c * kConv1x1Panel;
      for (int64_t r = r0; r < r1; r += kBlockRows) {
        const int64_t rows = std::min(kBlockRows, r1 - r);
        const Element* a = x + r * s.c;
        if (s.strided() || rows < kBlockRows) {
          gathered.resize(kBlockRows * s.c);
          for (int64_t i = 0; i < rows; ++i) {
            std::copy_n(x + s.input_offset(r + i), s.c, gathered.data() + i * s.c);
          }
          std::fill(gathered.begin() + rows * s.c, gathered.end(), Element(0.0f));
          a = gathered.data();
        }
        for (int64_t half = 0; half * kBlockColumns < panel_columns; ++half) {
          // Columns past K in the last panel are zeros in the weight: computed, never stored.
          amx::block_bf16(session, a, row_bytes, panel + half * kBlockColumns * 2,
                          kPanelPairRowBytes, s.c / amx::kStepChannels, acc);
          const int64_t c0 = col + half * kBlockColumns;
          epilogue(acc, rows, std::min(kBlockColumns, s.k - c0), bias + c0, out + r * s.k + c0,
                   s.k, accumulate, relu);
        }
      }
    }
  });
}

#else

void conv1x1_amx_bf16(const c10::BFloat16*, const c10::BFloat16*, const float*, c10::BFloat16*,
                      bool, bool, const Conv1x1Shape&, bool) {
  TORCH_CHECK(false, "conv1x1: the AMX kernel is not built for this platform");
}

#endif

}  // namespace resnet_fused
