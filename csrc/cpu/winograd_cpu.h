// What the Winograd op (winograd_cpu.cpp) shares with its AVX-512 pipelines
// (winograd_avx512.cpp): the layer's geometry, where a tile and its patch lie, the 1-D
// transforms, the per-thread scratch buffers.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace resnet_fused::winograd {

struct Geometry {
  int64_t n, h, w, c, k;   // batch, height, width (input = output), in/out channels
  int64_t tiles_h, tiles_w, tiles;
};

// Where output tile t lies: its image and its top-left output pixel (its input patch starts one
// pixel up and left, in the padding for the first row and column).
struct TileOrigin {
  int64_t image, y, x;
};

template <int M>
[[gnu::always_inline]] inline TileOrigin tile_origin(const Geometry& g, int64_t t) {
  return {t / (g.tiles_h * g.tiles_w), (t / g.tiles_w) % g.tiles_h * M, t % g.tiles_w * M};
}

// Tile t's (M+2)^2 input patch (it starts one pixel up and left of the tile's output):
// src[i * (M+2) + j] points at patch pixel (i, j)'s channel 0 in x (NHWC), or is null in the
// padding.
template <int M, typename T>
[[gnu::always_inline]] inline void patch_pixels(const T* x, const Geometry& g, int64_t t,
                                                const T** src) {
  constexpr int A = M + 2;
  const TileOrigin origin = tile_origin<M>(g, t);
  const T* image = x + origin.image * g.h * g.w * g.c;
  for (int i = 0; i < A; ++i) {
    for (int j = 0; j < A; ++j) {
      const int64_t yy = origin.y - 1 + i, xx = origin.x - 1 + j;
      const bool inside = yy >= 0 && yy < g.h && xx >= 0 && xx < g.w;
      src[i * A + j] = inside ? image + (yy * g.w + xx) * g.c : nullptr;
    }
  }
}

// Tile t's M x M output pixels: at[i * M + j] is pixel (i, j)'s offset (channel 0) in y (NHWC),
// or -1 past the image's edge.
template <int M>
[[gnu::always_inline]] inline void tile_outputs(const Geometry& g, int64_t t, int64_t* at) {
  const TileOrigin origin = tile_origin<M>(g, t);
  const int64_t offset = origin.image * g.h * g.w * g.k;
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < M; ++j) {
      const bool inside = origin.y + i < g.h && origin.x + j < g.w;
      at[i * M + j] = inside ? offset + ((origin.y + i) * g.w + origin.x + j) * g.k : -1;
    }
  }
}

// B^T applied along one axis: the M+2 values s[k * S] give the M+2 values d[i * D]. F(4,3) and
// F(2,3) with interpolation points 0, +-1, +-2 (and infinity), the usual choice: the smallest
// coefficients that give exact integer transforms. V is float, or a GCC/Clang vector type such
// as __m512 (elementwise arithmetic, scalars broadcast) for the AVX-512 pipelines.
template <int M, int S, int D, typename V>
[[gnu::always_inline]] inline void input_1d(const V* s, V* d) {
  if constexpr (M == 4) {
    d[0] = 4.f * s[0] - 5.f * s[2 * S] + s[4 * S];
    d[D] = -4.f * (s[S] + s[2 * S]) + s[3 * S] + s[4 * S];
    d[2 * D] = 4.f * (s[S] - s[2 * S]) - s[3 * S] + s[4 * S];
    d[3 * D] = 2.f * (s[3 * S] - s[S]) - s[2 * S] + s[4 * S];
    d[4 * D] = 2.f * (s[S] - s[3 * S]) - s[2 * S] + s[4 * S];
    d[5 * D] = 4.f * s[S] - 5.f * s[3 * S] + s[5 * S];
  } else {
    d[0] = s[0] - s[2 * S];
    d[D] = s[S] + s[2 * S];
    d[2 * D] = s[2 * S] - s[S];
    d[3 * D] = s[S] - s[3 * S];
  }
}

// A^T applied along one axis: M+2 values -> M values (same addressing as input_1d).
template <int M, int S, int D, typename V>
[[gnu::always_inline]] inline void output_1d(const V* s, V* d) {
  if constexpr (M == 4) {
    const V p12 = s[S] + s[2 * S], m12 = s[S] - s[2 * S];
    const V p34 = s[3 * S] + s[4 * S], m34 = s[3 * S] - s[4 * S];
    d[0] = s[0] + p12 + p34;
    d[D] = m12 + 2.f * m34;
    d[2 * D] = p12 + 4.f * p34;
    d[3 * D] = m12 + 8.f * m34 + s[5 * S];
  } else {
    d[0] = s[0] + s[S] + s[2 * S];
    d[D] = s[S] - s[2 * S] - s[3 * S];
  }
}

// The per-thread buffers for the transformed inputs V and the GEMM results M.
enum Slot { kV = 0, kM = 1 };

// A (sizes) tensor of opts' dtype in this thread's buffer `slot`, reused from call to call (see
// winograd_cpu.cpp); valid until this thread asks for the same slot again.
at::Tensor scratch(Slot slot, at::IntArrayRef sizes, const at::TensorOptions& opts);

// The same buffer as raw memory of at least `bytes` (at most 64 MiB), with no tensor made: for
// loops that ask for it once per block of tiles.
void* scratch_bytes(Slot slot, int64_t bytes);

// Tiles per parallel transform task when a step runs over all tiles: enough work per task to
// amortize the scheduling, enough tasks for every thread at batch 1 of a 14x14 layer.
constexpr int64_t kTilesPerTask = 4;
// Blocks of tiles (each running transform -> GEMM -> transform on its own) re-read the whole
// filter: above this size a call runs each step over all tiles instead.
constexpr int64_t kMaxBlockedFilterBytes = int64_t{4} << 20;

// The AVX-512 pipelines (winograd_avx512.cpp): true where they run (a CPU with AVX512_BF16 and
// a build for it).
bool pipelines_available();

// What runs the bf16 pipeline's GEMMs: its AVX512_BF16 micro-kernels, or AMX tiles (the
// hardware, or their software model for tests; amx_tiles.h).
enum class GemmKernel { kAvx512, kAmx, kAmxModel };

// bf16 F(2,3) for channels_last x with C even and K a multiple of 16 (AMX: C and K multiples of
// 32), filter u pair-packed (16, C/2, K, 2); residual (if not null) channels_last of the
// output's shape.
at::Tensor run_bf16_pipeline(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
                             const at::Tensor* residual, bool relu, const Geometry& g,
                             GemmKernel kernel = GemmKernel::kAvx512);

// fp32 F(4,3) for channels_last x with K a multiple of 16, filter u (36, C, K).
at::Tensor run_f32_pipeline(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
                            const at::Tensor* residual, bool relu, const Geometry& g);

}  // namespace resnet_fused::winograd
