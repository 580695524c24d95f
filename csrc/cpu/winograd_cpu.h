// What the Winograd op (winograd_cpu.cpp) shares with its AVX512_BF16 pipeline
// (winograd_avx512.cpp): the layer's geometry, where a tile lies, the per-thread scratch buffers.
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

// The per-thread buffers for the transformed inputs V and the GEMM results M.
enum Slot { kV = 0, kM = 1 };

// A (sizes) tensor of opts' dtype in this thread's buffer `slot`, reused from call to call (see
// winograd_cpu.cpp); valid until this thread asks for the same slot again.
at::Tensor scratch(Slot slot, at::IntArrayRef sizes, const at::TensorOptions& opts);

// The same buffer as raw memory of at least `bytes` (at most 64 MiB), with no tensor made: for
// loops that ask for it once per block of tiles.
void* scratch_bytes(Slot slot, int64_t bytes);

// The AVX-512 pipelines (winograd_avx512.cpp): true where they run (a CPU with AVX512_BF16 and
// a build for it).
bool bf16_pipeline_available();
bool f32_pipeline_available();

// bf16 F(2,3) for channels_last x with C even and K a multiple of 16, filter u pair-packed
// (16, C/2, K, 2); residual (if not null) channels_last of the output's shape.
at::Tensor run_bf16_pipeline(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
                             const at::Tensor* residual, bool relu, const Geometry& g);

// fp32 F(4,3) for channels_last x with K a multiple of 16, filter u (36, C, K).
at::Tensor run_f32_pipeline(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
                            const at::Tensor* residual, bool relu, const Geometry& g);

}  // namespace resnet_fused::winograd
