// Fused conv + BatchNorm (+ residual) (+ ReLU) for NHWC tensors: implicit GEMM on tensor cores.
//
// GEMM view of the convolution (NHWC input, KRSC weight, NHWC output):
//   rows    m in [0, M),      M = N * P * Q       (one output pixel each)
//   columns n in [0, K)                          (output channels)
//   depth   kk in [0, R*S*C), kk = (r * S + s) * C + c
//   out[m, n] = sum_kk A[m, kk] * B[n, kk], A[m, kk] = input[img, oh*sh - ph + r, ow*sw - pw + s, c],
//   B[n, kk] = weight[n, r, s, c] (KRSC memory is exactly B row-major: no weight transform).
// Because C is a multiple of one 16-byte chunk (the binding pads it), every chunk of 8 (fp16/bf16)
// or 4 (fp32) consecutive kk shares one (r, s): each is a single contiguous 16-byte load, or a
// zero-fill when the pixel lies in the padding. That one rule covers 1x1, 3x3 and the 7x7 stem
// (C = 3 padded to 8, where one k-block spans several (r, s)).
//
// Per CTA: a BM x BN output tile; per k-block, a BM x 64-byte A tile and a BN x 64-byte B tile go
// through a STAGES-deep cp.async ring in shared memory (XOR-swizzled so ldmatrix is conflict-free);
// warps run mma.sync (m16n8k16 fp16/bf16, m16n8k8 tf32) into fp32 accumulators; the epilogue
// applies scale/shift, the residual and ReLU in registers and writes the output once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <cstdint>

#include "conv_bn_act_kernel.h"
#include "element.cuh"

namespace resnet_fused {
namespace cuda {
// A named (not anonymous) namespace: builds for pre-sm_80 archs compile the sm_80 helpers out of
// the kernels, and nvcc would then flag the internal-linkage leftovers as unused.
namespace conv_detail {

// Two adjacent elements at a 2-element-aligned address.
__device__ __forceinline__ float2 load_pair(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load_pair(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}
__device__ __forceinline__ float2 load_pair(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ void store_pair(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store_pair(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// The fused epilogue for output channels n and n + 1 of pixel m (n is even). `pair` says both
// channels exist and m * K + n is even, so the 2-element vector accesses are aligned.
template <typename T>
__device__ __forceinline__ void epilogue_pair(const ConvBnActParams& p, int64_t m, int n, float v0,
                                              float v1) {
  const int64_t off = m * p.k + n;
  const bool has1 = n + 1 < p.k;
  const bool pair = has1 && (p.k % 2 == 0);
  v0 = v0 * __ldg(p.scale + n) + __ldg(p.shift + n);
  if (has1) v1 = v1 * __ldg(p.scale + n + 1) + __ldg(p.shift + n + 1);
  if (p.residual != nullptr) {
    const T* res = static_cast<const T*>(p.residual) + off;
    if (pair) {
      const float2 rv = load_pair(res);
      v0 += rv.x;
      v1 += rv.y;
    } else {
      v0 += to_float(res[0]);
      if (has1) v1 += to_float(res[1]);
    }
  }
  v0 = relu_if(v0, p.relu);
  v1 = relu_if(v1, p.relu);
  T* out = static_cast<T*>(p.output) + off;
  if (pair) {
    store_pair(out, v0, v1);
  } else {
    out[0] = from_float<T>(v0);
    if (has1) out[1] = from_float<T>(v1);
  }
}

// ------------------------------------------------------------------------------------------------
// sm_80 primitives (inline PTX). Only compiled into device code for sm_80+; the host never
// launches the kernels that use them on older GPUs (select_conv_path picks kDirect there).

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define RF_HAS_SM80 1
#else
#define RF_HAS_SM80 0
#endif

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if RF_HAS_SM80
// 16-byte global -> shared copy; src-size 0 writes 16 zero bytes without reading `src`, which is
// how the conv's zero padding and out-of-range rows/columns/depth are produced.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
               "l"(__cvta_generic_to_global(src)), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and each lane gets
// (row lane/4, b16 columns 2*(lane%4), +1) of every matrix (one 32-bit value per matrix).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1, __half) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1, __nv_bfloat16) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// fp32 inputs: m16n8k8 TF32 (the fp32 bit patterns, rounded to TF32 by to_tf32 first).
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1, float) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Round-to-nearest to TF32 (feeding raw fp32 bits would truncate, doubling the error).
__device__ __forceinline__ uint32_t to_tf32(uint32_t x) {
  uint32_t y;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(y) : "f"(__uint_as_float(x)));
  return y;
}
#endif  // RF_HAS_SM80

// ------------------------------------------------------------------------------------------------
// Tile shapes (data; launch_tensor_core below picks one per problem).

enum class Math { kMma, kFma };

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int STAGES = STAGES_;
  static constexpr int THREADS = WARPS_M * WARPS_N * 32;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile (mma paths)
  static constexpr int CHUNKS = 4;                            // 16-byte chunks per k-block row
  static constexpr int ROW_BYTES = CHUNKS * 16;
  static constexpr int ROW_STEP = THREADS / CHUNKS;  // loader: rows covered per pass
  static constexpr int A_ROWS = BM / ROW_STEP;       // loader: A rows per thread
  static constexpr int B_ROWS = BN / ROW_STEP;       // loader: B rows per thread
  static constexpr int STAGE_BYTES = (BM + BN) * ROW_BYTES;
  static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES;
  static_assert(BM % ROW_STEP == 0 && BN % ROW_STEP == 0, "loader must cover the tile exactly");
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be whole 16x16 mma pairs");
  static_assert(STAGES >= 2, "need at least double buffering");
};

using TileLarge = Tile<128, 128, 2, 4, 4>;  // 8 warps of 64x32; 64 KiB smem
using TileMedium = Tile<128, 64, 2, 2, 4>;  // 4 warps of 64x32; 48 KiB smem
using TileSmall = Tile<64, 64, 2, 2, 4>;    // 4 warps of 32x32; 32 KiB smem
using TileFma = Tile<64, 64, 2, 4, 3>;      // fp32 SIMT: 256 threads, 4x4 outputs each

// Byte offset of 16-byte chunk `chunk` (0..3) of tile row `row` within a tile. Rows are 64 bytes,
// so rows 2 apart share banks; XOR-ing the chunk with bits 1..2 of the row spreads any 8
// consecutive rows of one logical chunk over all 32 banks (the ldmatrix and cp.async patterns).
__device__ __forceinline__ uint32_t swizzle(int row, int chunk) {
  return static_cast<uint32_t>(row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4));
}

// ------------------------------------------------------------------------------------------------
// The implicit-GEMM kernel (tensor-core or fp32-FMA math, same loader and epilogue).

template <typename T, Math kMath, class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS) conv_gemm_kernel(const ConvBnActParams p) {
#if RF_HAS_SM80
  constexpr int BM = Cfg::BM, BN = Cfg::BN, STAGES = Cfg::STAGES;
  constexpr int EPC = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  constexpr int BKE = Cfg::CHUNKS * EPC;                  // depth (elements) per k-block
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x;
  const int64_t M = static_cast<int64_t>(p.n) * p.p * p.q;
  const int64_t PQ = static_cast<int64_t>(p.p) * p.q;
  const int k_total = p.r * p.s * p.c;
  const int num_kb = (k_total + BKE - 1) / BKE;
  // Column tiles vary fastest: consecutive CTAs share one A (activation) tile, so it is read
  // from DRAM once while the small weight matrix stays resident in L2.
  const int tiles_n = (p.k + BN - 1) / BN;
  const int tile_n = static_cast<int>(blockIdx.x % tiles_n);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x / tiles_n) * BM;
  const int n0 = tile_n * BN;

  const T* __restrict__ in = static_cast<const T*>(p.input);
  const T* __restrict__ wt = static_cast<const T*>(p.weight);

  // ---- loader state: each thread copies chunk `lchunk` of rows lrow + i * ROW_STEP ----
  const int lchunk = tid % Cfg::CHUNKS;
  const int lrow = tid / Cfg::CHUNKS;
  int64_t a_base[Cfg::A_ROWS];  // element offset of (img, h0, w0, 0); may be "negative" (padding)
  int a_h0[Cfg::A_ROWS], a_w0[Cfg::A_ROWS];
#pragma unroll
  for (int i = 0; i < Cfg::A_ROWS; ++i) {
    const int64_t m = m0 + lrow + i * Cfg::ROW_STEP;
    if (m < M) {
      const int64_t img = m / PQ;
      const int rem = static_cast<int>(m - img * PQ);
      const int oh = rem / p.q, ow = rem - (rem / p.q) * p.q;
      a_h0[i] = oh * p.stride_h - p.pad_h;
      a_w0[i] = ow * p.stride_w - p.pad_w;
      a_base[i] = ((img * p.h + a_h0[i]) * p.w + a_w0[i]) * static_cast<int64_t>(p.c);
    } else {
      a_h0[i] = INT_MIN / 2;  // h0 + r stays negative: the row always zero-fills
      a_w0[i] = 0;
      a_base[i] = 0;
    }
  }
  int64_t b_base[Cfg::B_ROWS];
  bool b_ok[Cfg::B_ROWS];
#pragma unroll
  for (int i = 0; i < Cfg::B_ROWS; ++i) {
    const int n = n0 + lrow + i * Cfg::ROW_STEP;
    b_ok[i] = n < p.k;
    b_base[i] = b_ok[i] ? static_cast<int64_t>(n) * k_total : 0;
  }
  // (r, s, c) of this thread's chunk in the next k-block to load; kflat = (r * S + s) * C + c.
  int kflat = lchunk * EPC, lc = lchunk * EPC, lr = 0, ls = 0;
  while (lc >= p.c) {  // only when C < BKE (the padded stem): the chunk is in a later (r, s)
    lc -= p.c;
    if (++ls == p.s) { ls = 0; ++lr; }
  }

  const uint32_t smem_base = smem_u32(smem);
  auto load_stage = [&](int stage) {
    const uint32_t sa = smem_base + stage * Cfg::STAGE_BYTES;
    const uint32_t sb = sa + BM * Cfg::ROW_BYTES;
    const bool k_ok = lr < p.r;  // equivalently kflat < k_total
    const int64_t rs_off = (static_cast<int64_t>(lr) * p.w + ls) * p.c + lc;
#pragma unroll
    for (int i = 0; i < Cfg::A_ROWS; ++i) {
      const int h = a_h0[i] + lr, w = a_w0[i] + ls;
      const bool ok = k_ok && static_cast<unsigned>(h) < static_cast<unsigned>(p.h) &&
                      static_cast<unsigned>(w) < static_cast<unsigned>(p.w);
      cp_async_16(sa + swizzle(lrow + i * Cfg::ROW_STEP, lchunk), ok ? in + a_base[i] + rs_off : in,
                  ok);
    }
#pragma unroll
    for (int i = 0; i < Cfg::B_ROWS; ++i) {
      const bool ok = k_ok && b_ok[i];
      cp_async_16(sb + swizzle(lrow + i * Cfg::ROW_STEP, lchunk), ok ? wt + b_base[i] + kflat : wt,
                  ok);
    }
    // Advance to the same chunk of the next k-block.
    kflat += BKE;
    lc += BKE;
    while (lc >= p.c) {
      lc -= p.c;
      if (++ls == p.s) { ls = 0; ++lr; }
    }
  };

  // ---- math state ----
  const int lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp % Cfg::WARPS_M, warp_n = warp / Cfg::WARPS_M;
  constexpr int MI = Cfg::WM / 16, NI = Cfg::WN / 8;
  float acc_mma[kMath == Math::kMma ? MI : 1][kMath == Math::kMma ? NI : 1][4];
  float acc_fma[4][4];
  if constexpr (kMath == Math::kMma) {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int v = 0; v < 4; ++v) acc_mma[i][j][v] = 0.f;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc_fma[i][j] = 0.f;
  }
  // FMA path: thread (tx, ty) owns rows ty + 16 i and column pairs 2 tx + 32 jj (+0, +1).
  const int tx = tid % 16, ty = tid / 16;

  auto compute_stage = [&](int stage) {
    const uint32_t sa = smem_base + stage * Cfg::STAGE_BYTES;
    const uint32_t sb = sa + BM * Cfg::ROW_BYTES;
    if constexpr (kMath == Math::kMma) {
      // Each mma consumes two chunks of depth (16 fp16/bf16 or 8 tf32): two steps per k-block.
#pragma unroll
      for (int ks = 0; ks < Cfg::CHUNKS / 2; ++ks) {
        uint32_t a[MI][4], b[NI][2];
#pragma unroll
        for (int i = 0; i < MI; ++i) {
          // Matrices 0..3 = rows +0..7 / +8..15 (lane bit 3) x chunk 2ks / 2ks+1 (lane bit 4):
          // exactly the a0..a3 fragment registers of m16n8k16 (and of m16n8k8 tf32).
          const int row = warp_m * Cfg::WM + i * 16 + (lane & 15);
          ldmatrix_x4(a[i], sa + swizzle(row, 2 * ks + (lane >> 4)));
        }
#pragma unroll
        for (int j = 0; j < NI / 2; ++j) {
          // Matrices: (n +0..7, chunk 2ks), (n +0..7, 2ks+1), (n +8..15, 2ks), (n +8..15, 2ks+1):
          // b0, b1 of column block 2j, then b0, b1 of column block 2j + 1.
          const int row = warp_n * Cfg::WN + j * 16 + (lane & 7) + ((lane >> 4) << 3);
          uint32_t t[4];
          ldmatrix_x4(t, sb + swizzle(row, 2 * ks + ((lane >> 3) & 1)));
          b[2 * j][0] = t[0];
          b[2 * j][1] = t[1];
          b[2 * j + 1][0] = t[2];
          b[2 * j + 1][1] = t[3];
        }
        if constexpr (sizeof(T) == 4) {
#pragma unroll
          for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int v = 0; v < 4; ++v) a[i][v] = to_tf32(a[i][v]);
#pragma unroll
          for (int j = 0; j < NI; ++j) {
            b[j][0] = to_tf32(b[j][0]);
            b[j][1] = to_tf32(b[j][1]);
          }
        }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int j = 0; j < NI; ++j) mma_16816(acc_mma[i][j], a[i], b[j][0], b[j][1], T());
      }
    } else {
      static_assert(kMath != Math::kFma || sizeof(T) == 4, "the FMA path is for fp32");
      static_assert(kMath != Math::kFma || (Cfg::THREADS == 256 && BM == 64 && BN == 64),
                    "the FMA thread mapping assumes 256 threads on a 64x64 tile");
      const float* As = reinterpret_cast<const float*>(smem + stage * Cfg::STAGE_BYTES);
      const float* Bs = As + BM * (Cfg::ROW_BYTES / 4);
#pragma unroll
      for (int kk = 0; kk < Cfg::CHUNKS * 4; ++kk) {
        const int chunk = kk >> 2, e = kk & 3;
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = ty + 16 * i;
          a[i] = As[swizzle(row, chunk) / 4 + e];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int row = 2 * tx + 32 * (j >> 1) + (j & 1);
          b[j] = Bs[swizzle(row, chunk) / 4 + e];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc_fma[i][j] = fmaf(a[i], b[j], acc_fma[i][j]);
      }
      (void)sb;
    }
  };

  // ---- multistage pipeline: STAGES - 1 k-blocks in flight while one is computed ----
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < num_kb) load_stage(st);
    cp_async_commit();  // empty groups keep the wait_group count uniform
  }
  int read_stage = 0, write_stage = STAGES - 1;
  for (int kb = 0; kb < num_kb; ++kb) {
    cp_async_wait<STAGES - 2>();  // k-block kb has landed (for this thread) ...
    __syncthreads();              // ... for all threads, and stage kb-1 is no longer being read
    if (kb + STAGES - 1 < num_kb) load_stage(write_stage);
    cp_async_commit();
    write_stage = (write_stage + 1 == STAGES) ? 0 : write_stage + 1;
    compute_stage(read_stage);
    read_stage = (read_stage + 1 == STAGES) ? 0 : read_stage + 1;
  }
  cp_async_wait<0>();

  // ---- epilogue: scale/shift (+ residual) (ReLU), straight from the accumulators ----
  if constexpr (kMath == Math::kMma) {
    // m16n8 accumulator fragment: c0, c1 at (row lane/4, cols 2*(lane%4) + 0/1), c2, c3 8 rows down.
#pragma unroll
    for (int j = 0; j < NI; ++j) {
      const int n = n0 + warp_n * Cfg::WN + j * 8 + 2 * (lane & 3);
      if (n >= p.k) continue;
#pragma unroll
      for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t m = m0 + warp_m * Cfg::WM + i * 16 + (lane >> 2) + half * 8;
          if (m < M) {
            epilogue_pair<T>(p, m, n, acc_mma[i][j][2 * half], acc_mma[i][j][2 * half + 1]);
          }
        }
      }
    }
  } else {
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {
      const int n = n0 + 2 * tx + 32 * jj;
      if (n >= p.k) continue;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = m0 + ty + 16 * i;
        if (m < M) epilogue_pair<T>(p, m, n, acc_fma[i][2 * jj], acc_fma[i][2 * jj + 1]);
      }
    }
  }
#else
  __trap();  // unreachable: select_conv_path never picks this kernel below sm_80
#endif  // RF_HAS_SM80
}

// ------------------------------------------------------------------------------------------------
// The fallback: one thread per output element, any channel count or alignment, any GPU.

template <typename T>
__global__ void __launch_bounds__(256) conv_direct_kernel(const ConvBnActParams p) {
  const int64_t M = static_cast<int64_t>(p.n) * p.p * p.q;
  const int64_t total = M * p.k;
  const T* in = static_cast<const T*>(p.input);
  const T* wt = static_cast<const T*>(p.weight);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Channel fastest: consecutive threads write consecutive NHWC addresses.
    const int n = static_cast<int>(idx % p.k);
    const int64_t m = idx / p.k;
    const int64_t pq = static_cast<int64_t>(p.p) * p.q;
    const int64_t img = m / pq;
    const int64_t rem = m - img * pq;
    const int oh = static_cast<int>(rem / p.q), ow = static_cast<int>(rem % p.q);
    float acc = 0.f;
    for (int r = 0; r < p.r; ++r) {
      const int h = oh * p.stride_h - p.pad_h + r;
      if (h < 0 || h >= p.h) continue;
      for (int s = 0; s < p.s; ++s) {
        const int w = ow * p.stride_w - p.pad_w + s;
        if (w < 0 || w >= p.w) continue;
        const T* x = in + ((img * p.h + h) * p.w + w) * static_cast<int64_t>(p.c);
        const T* f = wt + ((static_cast<int64_t>(n) * p.r + r) * p.s + s) * p.c;
        for (int c = 0; c < p.c; ++c) acc = fmaf(to_float(x[c]), to_float(f[c]), acc);
      }
    }
    float v = acc * p.scale[n] + p.shift[n];
    if (p.residual != nullptr) v += to_float(static_cast<const T*>(p.residual)[idx]);
    static_cast<T*>(p.output)[idx] = from_float<T>(relu_if(v, p.relu));
  }
}

// ------------------------------------------------------------------------------------------------
// Host side.

// Opt in to > 48 KiB of dynamic shared memory once per (kernel, device): the attribute is set
// on the first call, outside any CUDA-graph capture in practice (captures follow a warm-up run).
template <typename Kernel>
cudaError_t ensure_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& done_mask) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const uint64_t bit = dev < 64 ? (uint64_t{1} << dev) : 0;
  if (bit && (done_mask.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && bit) done_mask.fetch_or(bit, std::memory_order_release);
  return err;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t num_tiles(const ConvBnActParams& p, int bm, int bn) {
  return ceil_div(static_cast<int64_t>(p.n) * p.p * p.q, bm) * ceil_div(p.k, bn);
}

template <typename T, Math kMath, class Cfg>
cudaError_t launch_gemm(const ConvBnActParams& p, cudaStream_t stream) {
  static std::atomic<uint64_t> smem_configured{0};
  auto kernel = conv_gemm_kernel<T, kMath, Cfg>;
  cudaError_t err = ensure_smem(kernel, Cfg::SMEM_BYTES, smem_configured);
  if (err != cudaSuccess) return err;
  const int64_t tiles = num_tiles(p, Cfg::BM, Cfg::BN);  // <= INT_MAX: select_conv_path checked
  kernel<<<static_cast<unsigned>(tiles), Cfg::THREADS, Cfg::SMEM_BYTES, stream>>>(p);
  return cudaGetLastError();
}

// Tile choice: the biggest tile (most reuse per byte loaded) that still gives every SM a CTA;
// late, small grids (7x7, 14x14 at small batch) drop to 64x64 to fill the GPU. A 128-wide column
// tile is skipped when K <= 64 (half of it would be padding).
template <typename T>
cudaError_t launch_tensor_core(const ConvBnActParams& p, int num_sms, cudaStream_t stream) {
  if (p.k > 64 && num_tiles(p, TileLarge::BM, TileLarge::BN) >= num_sms) {
    return launch_gemm<T, Math::kMma, TileLarge>(p, stream);
  }
  if (num_tiles(p, TileMedium::BM, TileMedium::BN) >= num_sms) {
    return launch_gemm<T, Math::kMma, TileMedium>(p, stream);
  }
  return launch_gemm<T, Math::kMma, TileSmall>(p, stream);
}

template <typename T>
cudaError_t launch_direct(const ConvBnActParams& p, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(p.n) * p.p * p.q * p.k;
  const int64_t blocks = ceil_div(total, 256);
  const unsigned grid = static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));
  conv_direct_kernel<T><<<grid, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace conv_detail

using namespace conv_detail;

int conv_bn_act_channel_alignment(DType dtype) { return dtype == DType::kFloat32 ? 4 : 8; }

ConvPath select_conv_path(const ConvBnActParams& p, int sm, const char** why) {
  auto fallback = [&](const char* reason) {
    if (why != nullptr) *why = reason;
    return ConvPath::kDirect;
  };
  if (why != nullptr) *why = nullptr;
  if (sm < 80) return fallback("the tensor-core kernels need compute capability 8.0 or newer");
  if (p.c <= 0 || p.h <= 0 || p.w <= 0) {
    return fallback("the input is empty (C_in, H or W is 0; only padding would be read)");
  }
  if (static_cast<int64_t>(p.p) * p.q > INT_MAX) {
    return fallback("one image's output plane exceeds 2^31 pixels");
  }
  if (p.c % conv_bn_act_channel_alignment(p.dtype) != 0) {
    return fallback("input channels are not padded to a whole 16-byte chunk");
  }
  if (!aligned16(p.input) || !aligned16(p.weight) || !aligned16(p.output) ||
      (p.residual != nullptr && !aligned16(p.residual))) {
    return fallback("a tensor's data pointer is not 16-byte aligned");
  }
  const int64_t k_total = static_cast<int64_t>(p.r) * p.s * p.c;
  if (k_total > INT_MAX - 64) return fallback("R * S * C_in exceeds the 32-bit depth index");
  if (num_tiles(p, TileSmall::BM, TileSmall::BN) > INT_MAX) {
    return fallback("the output needs more CTAs than one grid dimension allows");
  }
  if (p.dtype == DType::kFloat32 && !p.allow_tf32) return ConvPath::kSimt;
  return ConvPath::kTensorCore;
}

cudaError_t launch_conv_bn_act(const ConvBnActParams& p, ConvPath path, int num_sms,
                               cudaStream_t stream) {
  if (p.n == 0 || p.k == 0 || p.p == 0 || p.q == 0) return cudaSuccess;
  switch (path) {
    case ConvPath::kTensorCore:
      switch (p.dtype) {
        case DType::kFloat16: return launch_tensor_core<__half>(p, num_sms, stream);
        case DType::kBFloat16: return launch_tensor_core<__nv_bfloat16>(p, num_sms, stream);
        case DType::kFloat32: return launch_tensor_core<float>(p, num_sms, stream);
      }
      break;
    case ConvPath::kSimt:
      if (p.dtype != DType::kFloat32) return cudaErrorInvalidValue;
      return launch_gemm<float, Math::kFma, TileFma>(p, stream);
    case ConvPath::kDirect:
      switch (p.dtype) {
        case DType::kFloat16: return launch_direct<__half>(p, stream);
        case DType::kBFloat16: return launch_direct<__nv_bfloat16>(p, stream);
        case DType::kFloat32: return launch_direct<float>(p, stream);
      }
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace resnet_fused
