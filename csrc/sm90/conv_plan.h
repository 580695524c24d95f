// Host-side plan of the sm_90a CUTLASS implicit-GEMM convolution: everything about a call that is
// not GPU code, free of torch and of CUTLASS so that it compiles into every build (the CPU one
// too) and is unit-tested on machines without a GPU through the `_sm90_conv_plan` debug op.
//
// The CUTLASS translation units (cutlass_conv.cuh) build their arguments from a ConvPlan, so the
// code the tests check is the code that runs. A plan holds:
//   - the shape family (1x1 stride 1, 1x1 strided, 3x3 and other filters, the stem) and the tile
//     configuration chosen from that family's candidates (kConfigs below, kept as data),
//   - the operands as the kernel reads them: NHWC activations, KRSC filters, NPQK output and
//     residual, all dense, with C zero-padded to a multiple of 8 (the stem's 3 channels -> 8),
//   - CUTLASS's conv problem (shapes, strides, padding, traversal stride) and its GEMM view,
//   - what the TMA descriptors will encode (im2col for the activations, tiled for the filters),
//     checked against the hardware's limits,
//   - the epilogue's parameters: per-output-channel scale and shift vectors, the residual as the
//     epilogue source C (present or absent), the ReLU flag, and the output/source strides,
//   - or, when the kernel cannot take the problem, why (`why`).
#pragma once

#include <cstdint>

#include "../cuda/dtype.h"

namespace resnet_fused {
namespace sm90 {

// One kernel configuration: CTA tile (M = output pixels, N = output channels, K = reduction
// slice) and thread-block cluster. Each is instantiated for fp16 and bf16, without a residual
// and (when `residual_variant`) with one, in csrc/sm90/cutlass_conv_config<i>.cu. `gemm`: not
// the implicit-GEMM conv kernel but CUTLASS's persistent GEMM (cutlass_gemm.cuh), for 1x1
// stride-1 convs only, with the pingpong schedule (`pingpong`) or the cooperative one, walking
// output tiles (the persistent scheduler) or, with `stream_k`, spreading the reduction's k-tiles
// over the SMs (CUTLASS's stream-K scheduler, cooperative only).
struct TileConfig {
  const char* name;
  int tile_m, tile_n, tile_k;
  int cluster_m, cluster_n;
  bool residual_variant;
  bool gemm = false;
  bool pingpong = false;
  bool stream_k = false;
};

// The configurations, by index. Changing this table changes what is compiled: keep it small
// (every entry costs ~1-2 minutes of nvcc and a few hundred KB of _C).
//   0: 128x128 tile, 2x1 cluster: the two CTAs of a cluster share (TMA-multicast) the filter
//      tile; the large 1x1 and 3x3 layers (C_out >= 128).
//   1: the same tile without a cluster: no pairing constraint on the grid.
//   2: 128x64: layers with C_out = 64 (a 128-wide N tile would be half empty) and small grids.
//   3: 128x64 with a 16-wide K slice: the stem (C_in = 3 padded to 8) and other narrow inputs,
//      where a 64-wide slice over a handful of channels would be mostly zeros. With a residual
//      variant too: the stem has none, but every narrow conv the family takes may (C_in = 16
//      with a skip path), and the family has no other configuration to fall back on.
//   4: 1x1 stride-1 convs (two thirds of ResNet-50's memory-bound time) as a persistent pingpong
//      GEMM: two consumer warpgroups alternate tiles, so one's epilogue (and the residual's TMA
//      load) overlaps the other's MMAs; one CTA per SM walks the tiles in swizzled order.
//   5: the same as a cooperative 256x128 GEMM with a 1x2 cluster: the two CTAs of a cluster
//      compute neighbouring output-channel tiles of the same pixels and multicast the activation
//      tile, so each activation is read from L2/DRAM once per pair (C_out >= 256 layers).
//   6: small 1x1 GEMMs (batch 1: layer4's 7x7 has 49 pixels, one M tile; 16 output tiles for
//      132 SMs) on the stream-K scheduler: the k-tiles of all output tiles are dealt evenly to
//      the SMs, and CTAs that share a tile add their fp32 partial sums through a workspace in a
//      fixed order (deterministic: same bits on every run) before the one epilogue. CUTLASS's
//      heuristic may instead split K evenly or keep whole tiles when that balances better.
//      Only for problems of at most kStreamKMaxTiles output tiles (see conv_plan.cpp).
inline constexpr TileConfig kConfigs[] = {
    {"128x128x64_c2x1", 128, 128, 64, 2, 1, true},
    {"128x128x64_c1x1", 128, 128, 64, 1, 1, true},
    {"128x64x64_c1x1", 128, 64, 64, 1, 1, true},
    {"128x64x16_c1x1", 128, 64, 16, 1, 1, true},
    {"gemm_128x128x64_pingpong", 128, 128, 64, 1, 1, true, true, true},
    {"gemm_256x128x64_c1x2_coop", 256, 128, 64, 1, 2, true, true, false},
    {"gemm_128x128x64_streamk", 128, 128, 64, 1, 1, true, true, false, true},
};
inline constexpr int kNumConfigs = static_cast<int>(sizeof(kConfigs) / sizeof(kConfigs[0]));

// Shape families: which configurations are candidates for a problem.
enum class Family : int {
  kConv1x1 = 0,         // 1x1 filter, stride 1 (a plain GEMM over pixels)
  kConv1x1Strided = 1,  // 1x1 filter, stride > 1 (the bottleneck's downsample shortcut)
  kConv3x3 = 2,         // 3x3 and any other filter with C_in > 16
  kStem = 3,            // C_in <= 16 after padding (the 7x7 stem with its 3 channels)
};
inline constexpr int kNumFamilies = 4;
const char* family_name(Family f);

// Candidate configuration indices of a family, first = the family's default. Returns the count.
int family_candidates(Family f, const int** out);

// Index of the configuration called `name`, or -1.
int find_config(const char* name);

// Stream-K is a candidate only for GEMMs of at most this many output tiles (about 4 waves on an
// H100's 132 SMs): past that, whole-tile waves leave at most a quarter of the time to imbalance,
// and each extra candidate costs tuning time on the GPU.
inline constexpr int64_t kStreamKMaxTiles = 512;

// Elements per 16 bytes: channels (C_in, C_out) must be multiples of this for TMA.
inline constexpr int kChannelAlignment = 8;

// The convolution as the caller gives it (before any padding).
struct ConvProblem {
  int64_t n = 0, c = 0, h = 0, w = 0;  // input (N, C, H, W)
  int64_t k = 0, r = 0, s = 0;         // weight (C_out, C_in, R, S)
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  cuda::DType dtype = cuda::DType::kBFloat16;
  bool residual = false;
  bool relu = false;
  int sm = 0;  // the device's compute capability, major * 10 + minor
};

struct ConvPlan {
  bool ok = false;
  char why[320] = {};  // when !ok: the first precondition that fails, with its numbers

  Family family = Family::kConv3x3;
  int config = -1;  // index into kConfigs
  bool gemm = false;  // kConfigs[config].gemm: the persistent GEMM kernel (cutlass_gemm.cuh)
  bool stream_k = false;  // kConfigs[config].stream_k: needs a device workspace (cutlass_conv.h)
  cuda::DType dtype = cuda::DType::kBFloat16;
  bool residual = false;
  bool relu = false;
  int element_bytes = 2;

  // Operands as the kernel reads them (dense; elements; [0] outermost).
  int64_t c_padded = 0;       // C_in rounded up to kChannelAlignment
  bool pad_channels = false;  // the caller zero-pads input and weight channels c -> c_padded
  int act_shape[4] = {};      // N, H, W, C_padded
  int64_t act_stride[4] = {};
  int flt_shape[4] = {};  // K, R, S, C_padded
  int64_t flt_stride[4] = {};
  int out_shape[4] = {};  // N, P, Q, K (output, and the residual when there is one)
  int64_t out_stride[4] = {};

  // CUTLASS's ConvProblemShape<kFprop, 2> arguments beyond the tensors, as (h, w).
  int lower_padding[2] = {};
  int upper_padding[2] = {};
  int traversal_stride[2] = {};
  int dilation[2] = {};

  // GEMM view: M = N*P*Q output pixels, N = C_out, K = R*S*C_padded.
  int64_t gemm_m = 0, gemm_n = 0, gemm_k = 0;
  int64_t k_tiles = 0;          // mainloop iterations per CTA: R * S * ceil(C_padded / tile_k)
  int64_t grid_m = 0, grid_n = 0;  // CTAs along M (rounded up to the cluster) and N
  int64_t output_tiles = 0;        // tile_m x tile_n tiles of the output: ceil(M/tm) * ceil(N/tn)

  // TMA im2col descriptor of the activations (innermost dimension first, as the driver takes it).
  int64_t tma_a_dims[4] = {};           // C_padded, W, H, N
  int64_t tma_a_strides_bytes[3] = {};  // of W, H, N
  int tma_a_lower_corner[2] = {};       // (w, h): -padding
  int tma_a_upper_corner[2] = {};       // (w, h): padding - (filter - 1)
  int tma_a_element_strides[4] = {};    // 1, stride_w, stride_h, 1
  int tma_a_channels_per_pixel = 0;     // tile_k
  int tma_a_pixels_per_column = 0;      // tile_m
  // TMA tiled descriptor of the filter.
  int64_t tma_b_dims[4] = {};           // C_padded, S, R, K
  int64_t tma_b_strides_bytes[3] = {};  // of S, R, K
  int tma_b_box[2] = {};                // tile_k channels x tile_n filters

  // Epilogue: out = act(scale[k] * acc + shift[k] (+ residual)), fp32 math, one store.
  // CUTLASS's stride of the output and of the source C (the residual): ((Q, P, N), K, L).
  int64_t epi_stride_qpn[3] = {};
  int64_t epi_vector_len = 0;  // scale/shift elements (C_out), read as 16-byte fp32 vectors
};

// Plans `p` with configuration `config` (an index into kConfigs), or with the family's default
// when config < 0. Never throws; a plan that cannot run has ok == false and says why.
ConvPlan plan_conv(const ConvProblem& p, int config = -1);

// The family of a problem (its candidates decide which configurations plan_conv accepts).
Family classify(const ConvProblem& p);

}  // namespace sm90
}  // namespace resnet_fused
