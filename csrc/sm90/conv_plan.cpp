// Host-side plan of the sm_90a CUTLASS conv (see conv_plan.h). Torch-free and CUTLASS-free.
#include "conv_plan.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <initializer_list>

namespace resnet_fused {
namespace sm90 {
namespace {

// Family candidates (indices into kConfigs), the default first.
constexpr int kCandidates1x1[] = {1, 0, 2, 4, 5, 6};
constexpr int kCandidates1x1Strided[] = {1, 2};
constexpr int kCandidates3x3[] = {1, 0, 2};
constexpr int kCandidatesStem[] = {3};

constexpr int64_t kInt32Max = 2147483647;
// TMA limits (CUDA driver, cuTensorMapEncodeIm2col / cuTensorMapEncodeTiled): every dimension
// <= 2^32, every stride a multiple of 16 bytes and < 2^40, element strides in [1, 8].
constexpr int64_t kTmaMaxDim = int64_t{1} << 32;
constexpr int64_t kTmaMaxStrideBytes = int64_t{1} << 40;
constexpr int kTmaMaxElementStride = 8;
// im2col on a 4-D (2 spatial dims) tensor: corners are signed 8-bit, filter offsets unsigned
// 8-bit; CUTLASS's can_implement also bounds the padding by 256.
constexpr int kIm2colCornerLimit = 1 << 7;
constexpr int kIm2colOffsetLimit = (1 << 8) - 1;
constexpr int kIm2colPaddingLimit = 256;
// Grid: CUTLASS's non-persistent kernel launches (M tiles, N tiles, 1) CTAs.
constexpr int64_t kMaxGridY = 65535;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool fail(ConvPlan& plan, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(plan.why, sizeof(plan.why), fmt, args);
  va_end(args);
  plan.ok = false;
  return false;
}

const char* dtype_name(cuda::DType t) {
  switch (t) {
    case cuda::DType::kFloat32: return "float32";
    case cuda::DType::kFloat16: return "float16";
    case cuda::DType::kBFloat16: return "bfloat16";
  }
  return "?";
}

// Packed (dense, last dimension contiguous) strides of a 4-D shape.
void packed_strides(const int (&shape)[4], int64_t (&stride)[4]) {
  stride[3] = 1;
  for (int i = 2; i >= 0; --i) stride[i] = stride[i + 1] * shape[i + 1];
}

bool check_problem(const ConvProblem& p, ConvPlan& plan) {
  if (p.dtype != cuda::DType::kFloat16 && p.dtype != cuda::DType::kBFloat16) {
    return fail(plan, "sm90_cutlass takes float16 and bfloat16 only, got %s (float32 stays on "
                "mma_sync, whose TF32 path follows PyTorch's flags)", dtype_name(p.dtype));
  }
  if (p.sm != 90) {
    return fail(plan, "sm90_cutlass needs an sm_90 GPU (H100/H200: compute capability 9.0); this "
                "device is %d.%d, and sm_90a code runs on no other architecture",
                p.sm / 10, p.sm % 10);
  }
  if (p.n < 1 || p.c < 1 || p.h < 1 || p.w < 1 || p.k < 1 || p.r < 1 || p.s < 1) {
    return fail(plan, "empty problem (N=%lld, C_in=%lld, H=%lld, W=%lld, C_out=%lld, R=%lld, "
                "S=%lld): nothing to launch", static_cast<long long>(p.n),
                static_cast<long long>(p.c), static_cast<long long>(p.h),
                static_cast<long long>(p.w), static_cast<long long>(p.k),
                static_cast<long long>(p.r), static_cast<long long>(p.s));
  }
  if (p.stride_h < 1 || p.stride_w < 1 || p.pad_h < 0 || p.pad_w < 0) {
    return fail(plan, "stride must be >= 1 and padding >= 0, got stride (%lld, %lld), padding "
                "(%lld, %lld)", static_cast<long long>(p.stride_h),
                static_cast<long long>(p.stride_w), static_cast<long long>(p.pad_h),
                static_cast<long long>(p.pad_w));
  }
  if (p.h + 2 * p.pad_h < p.r || p.w + 2 * p.pad_w < p.s) {
    return fail(plan, "the padded input (%lld x %lld) is smaller than the filter (%lld x %lld)",
                static_cast<long long>(p.h + 2 * p.pad_h),
                static_cast<long long>(p.w + 2 * p.pad_w), static_cast<long long>(p.r),
                static_cast<long long>(p.s));
  }
  if (p.k % kChannelAlignment != 0) {
    return fail(plan, "C_out = %lld is not a multiple of %d: the output's TMA store needs "
                "16-byte rows", static_cast<long long>(p.k), kChannelAlignment);
  }
  return true;
}

}  // namespace

const char* family_name(Family f) {
  switch (f) {
    case Family::kConv1x1: return "1x1";
    case Family::kConv1x1Strided: return "1x1_strided";
    case Family::kConv3x3: return "3x3";
    case Family::kStem: return "stem";
  }
  return "?";
}

int family_candidates(Family f, const int** out) {
  switch (f) {
    case Family::kConv1x1:
      *out = kCandidates1x1;
      return static_cast<int>(sizeof(kCandidates1x1) / sizeof(int));
    case Family::kConv1x1Strided:
      *out = kCandidates1x1Strided;
      return static_cast<int>(sizeof(kCandidates1x1Strided) / sizeof(int));
    case Family::kConv3x3:
      *out = kCandidates3x3;
      return static_cast<int>(sizeof(kCandidates3x3) / sizeof(int));
    case Family::kStem:
      *out = kCandidatesStem;
      return static_cast<int>(sizeof(kCandidatesStem) / sizeof(int));
  }
  *out = nullptr;
  return 0;
}

int find_config(const char* name) {
  for (int i = 0; i < kNumConfigs; ++i) {
    if (std::strcmp(kConfigs[i].name, name) == 0) return i;
  }
  return -1;
}

Family classify(const ConvProblem& p) {
  const int64_t c_padded = ceil_div(p.c, kChannelAlignment) * kChannelAlignment;
  if (c_padded <= 16) return Family::kStem;
  if (p.r == 1 && p.s == 1) {
    return (p.stride_h == 1 && p.stride_w == 1) ? Family::kConv1x1 : Family::kConv1x1Strided;
  }
  return Family::kConv3x3;
}

ConvPlan plan_conv(const ConvProblem& p, int config) {
  ConvPlan plan;
  plan.dtype = p.dtype;
  plan.residual = p.residual;
  plan.relu = p.relu;
  plan.element_bytes = 2;
  if (!check_problem(p, plan)) return plan;

  // --- configuration: the family's default, or a named candidate of the family -----------------
  plan.family = classify(p);
  const int* candidates = nullptr;
  const int count = family_candidates(plan.family, &candidates);
  if (config < 0) {
    config = candidates[0];
  } else {
    bool candidate = false;
    for (int i = 0; i < count; ++i) candidate = candidate || candidates[i] == config;
    if (config >= kNumConfigs) {
      fail(plan, "no configuration with index %d (there are %d)", config, kNumConfigs);
      return plan;
    }
    if (!candidate) {
      char names[160] = {};
      for (int i = 0; i < count; ++i) {
        std::strncat(names, i ? ", " : "", sizeof(names) - std::strlen(names) - 1);
        std::strncat(names, kConfigs[candidates[i]].name, sizeof(names) - std::strlen(names) - 1);
      }
      fail(plan, "configuration %s is not a candidate for the %s family (candidates: %s)",
           kConfigs[config].name, family_name(plan.family), names);
      return plan;
    }
  }
  plan.config = config;
  const TileConfig& cfg = kConfigs[config];
  plan.gemm = cfg.gemm;
  plan.stream_k = cfg.stream_k;
  if (p.residual && !cfg.residual_variant) {
    fail(plan, "configuration %s is built without a residual epilogue", cfg.name);
    return plan;
  }

  // --- operands: dense NHWC / KRSC / NPQK, channels padded to 16 bytes -----------------------
  plan.c_padded = ceil_div(p.c, kChannelAlignment) * kChannelAlignment;
  plan.pad_channels = plan.c_padded != p.c;
  const int64_t out_h = (p.h + 2 * p.pad_h - p.r) / p.stride_h + 1;
  const int64_t out_w = (p.w + 2 * p.pad_w - p.s) / p.stride_w + 1;
  for (int64_t v : {p.n, p.h, p.w, plan.c_padded, p.k, p.r, p.s, out_h, out_w}) {
    if (v > kInt32Max) {
      fail(plan, "a size (%lld) does not fit CUTLASS's 32-bit conv extents",
           static_cast<long long>(v));
      return plan;
    }
  }
  const int act[4] = {static_cast<int>(p.n), static_cast<int>(p.h), static_cast<int>(p.w),
                      static_cast<int>(plan.c_padded)};
  const int flt[4] = {static_cast<int>(p.k), static_cast<int>(p.r), static_cast<int>(p.s),
                      static_cast<int>(plan.c_padded)};
  const int out[4] = {static_cast<int>(p.n), static_cast<int>(out_h), static_cast<int>(out_w),
                      static_cast<int>(p.k)};
  for (int i = 0; i < 4; ++i) {
    plan.act_shape[i] = act[i];
    plan.flt_shape[i] = flt[i];
    plan.out_shape[i] = out[i];
  }
  packed_strides(plan.act_shape, plan.act_stride);
  packed_strides(plan.flt_shape, plan.flt_stride);
  packed_strides(plan.out_shape, plan.out_stride);

  plan.lower_padding[0] = plan.upper_padding[0] = static_cast<int>(p.pad_h);
  plan.lower_padding[1] = plan.upper_padding[1] = static_cast<int>(p.pad_w);
  plan.traversal_stride[0] = static_cast<int>(p.stride_h);
  plan.traversal_stride[1] = static_cast<int>(p.stride_w);
  plan.dilation[0] = plan.dilation[1] = 1;

  // --- GEMM view and grid ----------------------------------------------------------------------
  plan.gemm_m = p.n * out_h * out_w;
  plan.gemm_n = p.k;
  plan.gemm_k = p.r * p.s * plan.c_padded;
  if (plan.gemm_m > kInt32Max || plan.gemm_k > kInt32Max) {
    fail(plan, "GEMM extents M = N*P*Q = %lld, K = R*S*C = %lld exceed CUTLASS's 32-bit problem "
         "shape", static_cast<long long>(plan.gemm_m), static_cast<long long>(plan.gemm_k));
    return plan;
  }
  if (plan.gemm && (p.r != 1 || p.s != 1 || p.stride_h != 1 || p.stride_w != 1 ||
                    p.pad_h != 0 || p.pad_w != 0)) {
    fail(plan, "configuration %s is a GEMM: 1x1 filters with stride 1 and no padding only",
         cfg.name);
    return plan;
  }
  plan.k_tiles = p.r * p.s * ceil_div(plan.c_padded, cfg.tile_k);
  plan.grid_m = ceil_div(ceil_div(plan.gemm_m, cfg.tile_m), cfg.cluster_m) * cfg.cluster_m;
  plan.grid_n = ceil_div(ceil_div(plan.gemm_n, cfg.tile_n), cfg.cluster_n) * cfg.cluster_n;
  plan.output_tiles = ceil_div(plan.gemm_m, cfg.tile_m) * ceil_div(plan.gemm_n, cfg.tile_n);
  if (cfg.stream_k && plan.output_tiles > kStreamKMaxTiles) {
    fail(plan, "configuration %s is for small GEMMs: %lld output tiles here, stream-K is tried "
         "up to %lld (the whole-tile GEMMs balance larger ones)", cfg.name,
         static_cast<long long>(plan.output_tiles), static_cast<long long>(kStreamKMaxTiles));
    return plan;
  }
  if (plan.grid_n > kMaxGridY) {
    fail(plan, "C_out = %lld needs %lld CTAs along the grid's y dimension (limit %lld)",
         static_cast<long long>(p.k), static_cast<long long>(plan.grid_n),
         static_cast<long long>(kMaxGridY));
    return plan;
  }

  // --- TMA descriptors ------------------------------------------------------------------------
  const int64_t eb = plan.element_bytes;
  plan.tma_a_dims[0] = plan.c_padded;
  plan.tma_a_dims[1] = p.w;
  plan.tma_a_dims[2] = p.h;
  plan.tma_a_dims[3] = p.n;
  plan.tma_a_strides_bytes[0] = plan.act_stride[2] * eb;  // one pixel (W step)
  plan.tma_a_strides_bytes[1] = plan.act_stride[1] * eb;  // one row (H step)
  plan.tma_a_strides_bytes[2] = plan.act_stride[0] * eb;  // one image (N step)
  plan.tma_a_lower_corner[0] = -static_cast<int>(p.pad_w);
  plan.tma_a_lower_corner[1] = -static_cast<int>(p.pad_h);
  plan.tma_a_upper_corner[0] = static_cast<int>(p.pad_w - (p.s - 1));
  plan.tma_a_upper_corner[1] = static_cast<int>(p.pad_h - (p.r - 1));
  plan.tma_a_element_strides[0] = 1;
  plan.tma_a_element_strides[1] = static_cast<int>(p.stride_w);
  plan.tma_a_element_strides[2] = static_cast<int>(p.stride_h);
  plan.tma_a_element_strides[3] = 1;
  plan.tma_a_channels_per_pixel = cfg.tile_k;
  plan.tma_a_pixels_per_column = cfg.tile_m;

  plan.tma_b_dims[0] = plan.c_padded;
  plan.tma_b_dims[1] = p.s;
  plan.tma_b_dims[2] = p.r;
  plan.tma_b_dims[3] = p.k;
  plan.tma_b_strides_bytes[0] = plan.flt_stride[2] * eb;
  plan.tma_b_strides_bytes[1] = plan.flt_stride[1] * eb;
  plan.tma_b_strides_bytes[2] = plan.flt_stride[0] * eb;
  plan.tma_b_box[0] = cfg.tile_k;
  plan.tma_b_box[1] = cfg.tile_n;

  for (int64_t d : plan.tma_a_dims) {
    if (d > kTmaMaxDim) {
      fail(plan, "a TMA dimension (%lld) exceeds 2^32", static_cast<long long>(d));
      return plan;
    }
  }
  for (const int64_t* strides : {plan.tma_a_strides_bytes, plan.tma_b_strides_bytes}) {
    for (int i = 0; i < 3; ++i) {
      if (strides[i] % 16 != 0 || strides[i] >= kTmaMaxStrideBytes) {
        fail(plan, "a TMA stride (%lld bytes) is not a multiple of 16 below 2^40",
             static_cast<long long>(strides[i]));
        return plan;
      }
    }
  }
  if (p.stride_h > kTmaMaxElementStride || p.stride_w > kTmaMaxElementStride) {
    fail(plan, "stride (%lld, %lld): TMA im2col traverses with element strides of at most %d",
         static_cast<long long>(p.stride_h), static_cast<long long>(p.stride_w),
         kTmaMaxElementStride);
    return plan;
  }
  if (p.pad_h > kIm2colPaddingLimit || p.pad_w > kIm2colPaddingLimit) {
    fail(plan, "padding (%lld, %lld) exceeds TMA im2col's limit of %d",
         static_cast<long long>(p.pad_h), static_cast<long long>(p.pad_w), kIm2colPaddingLimit);
    return plan;
  }
  for (int i = 0; i < 2; ++i) {
    for (int corner : {plan.tma_a_lower_corner[i], plan.tma_a_upper_corner[i]}) {
      if (corner < -kIm2colCornerLimit || corner > kIm2colCornerLimit - 1) {
        fail(plan, "TMA im2col corner %d (padding minus filter extent) is outside [%d, %d]",
             corner, -kIm2colCornerLimit, kIm2colCornerLimit - 1);
        return plan;
      }
    }
  }
  if (p.r - 1 >= kIm2colOffsetLimit || p.s - 1 >= kIm2colOffsetLimit) {
    fail(plan, "filter %lld x %lld: TMA im2col filter offsets must be below %d",
         static_cast<long long>(p.r), static_cast<long long>(p.s), kIm2colOffsetLimit);
    return plan;
  }

  // --- epilogue ---------------------------------------------------------------------------------
  plan.epi_stride_qpn[0] = plan.out_stride[2];  // Q step: one pixel = C_out elements
  plan.epi_stride_qpn[1] = plan.out_stride[1];  // P step: one output row
  plan.epi_stride_qpn[2] = plan.out_stride[0];  // N step: one output image
  plan.epi_vector_len = p.k;

  plan.ok = true;
  return plan;
}

}  // namespace sm90
}  // namespace resnet_fused
