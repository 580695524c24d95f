// 1x1 convolutions on this package's AVX-512 GEMM (CPU), channels_last:
//
//     conv1x1:            y        = act(conv1x1(input, weight, stride) + bias)
//     conv1x1_residual_:  residual = act(conv1x1(input, weight, stride) + bias + residual)
//
// Most of ResNet-50's convolutions are 1x1, and so is each bottleneck block's residual conv (its
// conv3, or the downsample conv). oneDNN runs them near this CPU's peak without a residual, but
// its `sum` post-op made those 4-21% slower than the conv alone on ResNet-50's shapes (2-core Zen
// 4 VM, batch 8): it loads the residual only when a tile is done, and waits for memory. Here the
// residual goes into the accumulators before the reduction, prefetched one tile ahead, so its
// loads overlap the multiply-adds, and the in-place stores find their lines in cache. At batch 1
// oneDNN's per-call cost also shows; these kernels have none to speak of.
//
// A 1x1 convolution on NHWC memory is a GEMM: out[pixel, k] = sum_c x[pixel', c] w[c, k], where
// pixel' is the output pixel's input pixel (the same one at stride 1). The micro-kernels are
// gemm_avx512_kernels.h's: 6 pixels x 64 output channels per call, fp32 accumulators; bf16 with
// vdpbf16ps (AVX512_BF16), fp32 with FMA (AVX-512 F). The weight comes folded and packed once,
// when a model is fused (resnet_fused/conv1x1.py), in panels of 64 output channels, each panel
// contiguous: fp32 (ceil(K/64), C, 64), bf16 pair-packed (ceil(K/64), C/2, 64, 2); the columns
// past K in the last panel are zeros, never stored.
//
// Numerics: fp32 accumulation from bias (+ residual), one rounding to the output dtype; the
// AVX512_BF16 instructions flush denormal inputs and products to zero. NaN stays NaN.
//
// `kernel` picks the implementation: "avx512" (above), "amx" (bf16 on AMX tiles,
// conv1x1_amx.cpp, where amx_bf16_available()), or "amx_model" (the same AMX kernel through the
// tiles' software model, amx_tiles.h: for tests, on any CPU with AVX512_BF16).
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "amx_tiles.h"
#include "conv1x1_cpu.h"
#include "gemm_avx512_kernels.h"

namespace resnet_fused {
namespace {

constexpr int64_t kPanel = kConv1x1Panel;
using Shape = Conv1x1Shape;

#ifdef RESNET_FUSED_HAS_AVX512_KERNELS

using avx512::kRows;
static_assert(kPanel == avx512::kBlockColumns, "a weight panel is one micro-kernel's columns");

// A tile's epilogue policy for the micro-kernels. The accumulators start as bias (+ the tile's
// residual, read from `out` itself, when `accumulate`) and end, after ReLU, rounded into `out`.
// `next` is the next tile's first output row (nullptr: none), prefetched while this tile
// multiplies: for reading when it holds a residual, else for writing (its lines must be fetched
// before they are stored to; fetching them early keeps the stores from waiting).
template <typename Element>
struct OutputTile {
  Element* out;        // the tile's first row, at its first column
  int64_t ldo;         // elements between rows (K)
  const float* bias;   // at the tile's first column
  bool accumulate;
  bool relu;
  const Element* next;
  // The next task's weight panel, a slice per tile (avx512::PanelPrefetch), prefetched where
  // the tile is an avx512::Streaming one (weights past kStreamedWeightBytes). Alone, 2048 -> 512
  // at 7x7 took 0.21 ms with the weight in cache and 0.27-0.30 ms without, 0.24 with this (bf16;
  // fp32: 0.52-0.55 -> 0.46-0.47 ms; one Zen 5 core; the L2 hint gained half as much).
  avx512::PanelPrefetch weights;

  [[gnu::always_inline]] void step(int64_t) const {}

  template <int Rows, int Vectors>
  [[gnu::always_inline]] void prefetch_next() const {
    if (next == nullptr) return;
    constexpr int kLines = (Vectors * avx512::kLanes * sizeof(Element) + 63) / 64;
    const char* base = reinterpret_cast<const char*>(next);
    const int64_t stride = ldo * static_cast<int64_t>(sizeof(Element));
    RESNET_FUSED_UNROLL for (int r = 0; r < Rows; ++r) {
      RESNET_FUSED_UNROLL for (int l = 0; l < kLines; ++l) {
        const char* line = base + r * stride + 64 * l;
        if (accumulate) {
          _mm_prefetch(line, _MM_HINT_T0);
        } else {
          __builtin_prefetch(line, 1, 3);
        }
      }
    }
  }
};

// init and finish, defined once and compiled under each element type's target attribute (the
// bf16 conversions need AVX512_BF16's, which the fp32 micro-kernel, AVX-512 F only, cannot
// inline).
#define RESNET_FUSED_OUTPUT_TILE_METHODS(TARGET)                                                   \
  template <int Rows, int Vectors>                                                                \
  [[gnu::always_inline]] TARGET void init(__m512(&acc)[Rows][Vectors]) const {                    \
    RESNET_FUSED_UNROLL for (int v = 0; v < Vectors; ++v) {                                       \
      const __m512 b = _mm512_loadu_ps(bias + v * avx512::kLanes);                                \
      RESNET_FUSED_UNROLL for (int r = 0; r < Rows; ++r) {                                        \
        acc[r][v] = accumulate ? _mm512_add_ps(avx512::load16(out + r * ldo + v * avx512::kLanes, \
                                                              avx512::kAll),                      \
                                               b)                                                 \
                               : b;                                                               \
      }                                                                                           \
    }                                                                                             \
    prefetch_next<Rows, Vectors>(); /* after this tile's own loads, which it would delay */       \
  }                                                                                               \
                                                                                                  \
  template <int Rows, int Vectors>                                                                \
  [[gnu::always_inline]] TARGET void finish(const __m512(&acc)[Rows][Vectors]) const {            \
    /* Locals: the (may_alias) vector stores would make the compiler reload the members. */       \
    const auto o = out;                                                                           \
    const int64_t ld = ldo;                                                                       \
    const bool act = relu;                                                                        \
    RESNET_FUSED_UNROLL for (int r = 0; r < Rows; ++r) {                                          \
      RESNET_FUSED_UNROLL for (int v = 0; v < Vectors; ++v) {                                     \
        const __m512 y = act ? avx512::relu(acc[r][v]) : acc[r][v];                               \
        avx512::store16(o + r * ld + v * avx512::kLanes, y, avx512::kAll);                        \
      }                                                                                           \
    }                                                                                             \
  }

struct OutputTileF32 : OutputTile<float> {
  RESNET_FUSED_OUTPUT_TILE_METHODS(RESNET_FUSED_AVX512)
};

struct OutputTileBf16 : OutputTile<c10::BFloat16> {
  RESNET_FUSED_OUTPUT_TILE_METHODS(RESNET_FUSED_AVX512_BF16)
};

#undef RESNET_FUSED_OUTPUT_TILE_METHODS

template <typename Kind> struct TileFor;
template <> struct TileFor<avx512::F32> { using type = OutputTileF32; };
template <> struct TileFor<avx512::Bf16Pairs> { using type = OutputTileBf16; };

template <typename Kind, typename Tile>
void run_tiles(const typename Kind::Element* x, const typename Kind::Element* w,
               const float* bias, typename Kind::Element* out, bool accumulate, bool relu,
               const Shape& s) {
  using Element = typename Kind::Element;
  const int64_t pixels = s.pixels(), panels = s.panels();
  const Conv1x1Tasks tasks =
      Conv1x1Tasks::split(s, sizeof(Element), kRows, at::get_num_threads());
  at::parallel_for(0, tasks.row_blocks * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = task / panels * tasks.block_rows;
      const int64_t r1 = std::min(pixels, r0 + tasks.block_rows);
      const int64_t q = task % panels, col = q * kPanel;
      const int vectors = static_cast<int>(std::min(kPanel, s.k - col) / kGemmColumns);
      const Element* panel = w + q * s.c * kPanel;  // (C, 64), or (C/2, 64, 2) for bf16
      // The next task's panel (the next one, or the first again for the next row block); only
      // Streaming tiles prefetch it.
      const Element* next_panel = q + 1 < panels ? panel + s.c * kPanel
                                  : r1 < pixels  ? w
                                                 : nullptr;
      const int64_t tiles = (r1 - r0 + kRows - 1) / kRows;
      for (int64_t r = r0; r < r1; r += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, r1 - r));
        const Element* a_rows[kRows];  // past the last row: repeats of it, never used
        for (int i = 0; i < kRows; ++i) a_rows[i] = x + s.input_offset(std::min(r + i, r1 - 1));
        // The next tile: the next rows, else the next task's first (next panel, or next block).
        const Element* next = nullptr;
        if (r + kRows < r1) {
          next = out + (r + kRows) * s.k + col;
        } else if (q + 1 < panels) {
          next = out + r0 * s.k + col + kPanel;
        } else if (r1 < pixels) {
          next = out + r1 * s.k;
        }
        Tile tile;
        tile.out = out + r * s.k + col;
        tile.ldo = s.k;
        tile.bias = bias + col;
        tile.accumulate = accumulate;
        tile.relu = relu;
        tile.next = next;
        tile.weights = avx512::PanelPrefetch::slice(next_panel, Kind::steps(s.c),
                                                    Kind::row_bytes(kPanel), (r - r0) / kRows,
                                                    tiles);
        avx512::micro_any<Kind>(rows, vectors, a_rows, panel, s.c, kPanel, tile);
      }
    }
  });
}

template <typename Kind>
void run(const typename Kind::Element* x, const typename Kind::Element* w, const float* bias,
         typename Kind::Element* out, bool accumulate, bool relu, const Shape& s) {
  using Tile = typename TileFor<Kind>::type;
  const bool streamed = s.panels() * s.c * kPanel *
                            static_cast<int64_t>(sizeof(typename Kind::Element)) >
                        avx512::kStreamedWeightBytes;
  if (streamed) {
    run_tiles<Kind, avx512::Streaming<Tile>>(x, w, bias, out, accumulate, relu, s);
  } else {
    run_tiles<Kind, Tile>(x, w, bias, out, accumulate, relu, s);
  }
}

bool kernels_available(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? avx512_bf16_available() : avx512_available();
}

#else  // no x86-64 GCC/Clang build: the op exists but refuses every call

bool kernels_available(at::ScalarType) { return false; }

#endif

enum class Kernel { kAvx512, kAmx, kAmxModel };

Kernel parse_kernel(const char* op, c10::string_view name) {
  if (name == "avx512") return Kernel::kAvx512;
  if (name == "amx") return Kernel::kAmx;
  if (name == "amx_model") return Kernel::kAmxModel;
  TORCH_CHECK(false, op, ": kernel must be \"avx512\", \"amx\" or \"amx_model\", got \"",
              std::string(name), "\"");
}

// Checks what both ops share (C_out is bias.size(0)) and returns the problem's shape.
Shape check_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                 const at::Tensor& bias, at::IntArrayRef stride, Kernel kernel) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got ", input.dim(),
              "-D with sizes ", input.sizes());
  const at::ScalarType dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, op,
              ": input must be float32 or bfloat16, got ", dtype);
  TORCH_CHECK(input.device().is_cpu(), op, " (cpu): input must be a CPU tensor");
  TORCH_CHECK(kernels_available(dtype), op, ": needs a CPU with AVX-512 F/BW/VL",
              dtype == at::kBFloat16 ? " and AVX512_BF16" : "", " for ", dtype,
              " (resnet_fused.conv1x1.available says where it runs)");
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, op,
              ": stride must be two positive ints, got ", stride);
  TORCH_CHECK(bias.dim() == 1 && bias.scalar_type() == at::kFloat && bias.device().is_cpu(), op,
              ": bias must be a 1-D float32 CPU tensor of C_out elements, got ",
              bias.scalar_type(), " with sizes ", bias.sizes(), " on ", bias.device());
  Shape s{input.size(0), input.size(2), input.size(3), input.size(1), bias.size(0), 0, 0,
          stride[0], stride[1]};
  s.ho = (s.h - 1) / s.sh + 1;
  s.wo = (s.w - 1) / s.sw + 1;
  TORCH_CHECK(s.k % kGemmColumns == 0, op, ": C_out (bias.size(0) = ", s.k,
              ") must be a multiple of ", kGemmColumns);
  const bool bf16 = dtype == at::kBFloat16;
  TORCH_CHECK(!bf16 || s.c % 2 == 0, op, ": bfloat16 needs an even number of input channels, ",
              "input has ", s.c);
  TORCH_CHECK(weight.dim() == (bf16 ? 4 : 3) && weight.size(0) == s.panels() &&
                  weight.size(1) == (bf16 ? s.c / 2 : s.c) && weight.size(2) == kPanel &&
                  (!bf16 || weight.size(3) == 2),
              op, ": weight must be packed in panels of ", kPanel, " output channels, ",
              bf16 ? "(ceil(C_out / 64), C_in / 2, 64, 2) for bfloat16"
                   : "(ceil(C_out / 64), C_in, 64) for float32",
              ", here [", s.panels(), ", ", bf16 ? s.c / 2 : s.c, ", ", kPanel,
              bf16 ? ", 2" : "", "] (resnet_fused.conv1x1.pack_weight), got sizes ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == dtype && weight.device().is_cpu(), op,
              ": weight must be a CPU tensor of input's dtype (", dtype, "), got ",
              weight.scalar_type(), " on ", weight.device());
  if (kernel != Kernel::kAvx512) {
    const char* name = kernel == Kernel::kAmx ? "amx" : "amx_model";
    check_amx_kernel(op, name, dtype, kernel == Kernel::kAmx);
    TORCH_CHECK(s.c % amx::kStepChannels == 0, op, ": kernel \"", name,
                "\" needs C_in a multiple of ", amx::kStepChannels, " (one tile row), got ", s.c);
  }
  return s;
}

// out = act(conv(input) + bias (+ out if accumulate)); out channels_last-contiguous.
void compute(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
             at::Tensor& out, bool accumulate, bool relu, const Shape& s, Kernel kernel) {
  if (s.pixels() == 0 || s.k == 0) return;
#ifdef RESNET_FUSED_HAS_AVX512_KERNELS
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.contiguous();
  if (kernel != Kernel::kAvx512) {
    conv1x1_amx_bf16(x.const_data_ptr<c10::BFloat16>(), w.const_data_ptr<c10::BFloat16>(),
                     b.const_data_ptr<float>(), out.mutable_data_ptr<c10::BFloat16>(), accumulate,
                     relu, s, /*emulate=*/kernel == Kernel::kAmxModel);
  } else if (x.scalar_type() == at::kBFloat16) {
    run<avx512::Bf16Pairs>(x.const_data_ptr<c10::BFloat16>(), w.const_data_ptr<c10::BFloat16>(),
                           b.const_data_ptr<float>(), out.mutable_data_ptr<c10::BFloat16>(),
                           accumulate, relu, s);
  } else {
    run<avx512::F32>(x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                     b.const_data_ptr<float>(), out.mutable_data_ptr<float>(), accumulate, relu,
                     s);
  }
#endif
}

void conv1x1_residual_cpu(at::Tensor& residual, const at::Tensor& input, const at::Tensor& weight,
                          const at::Tensor& bias, at::IntArrayRef stride, bool relu,
                          c10::string_view kernel_name) {
  constexpr const char* op = "conv1x1_residual_";
  const Kernel kernel = parse_kernel(op, kernel_name);
  const Shape s = check_args(op, input, weight, bias, stride, kernel);
  TORCH_CHECK(residual.sizes() == at::IntArrayRef({s.n, s.k, s.ho, s.wo}), op,
              ": residual must have the output's sizes [", s.n, ", ", s.k, ", ", s.ho, ", ", s.wo,
              "] (a 1x1 conv of input at stride ", stride, ", C_out = bias.size(0)), got ",
              residual.sizes());
  TORCH_CHECK(residual.scalar_type() == input.scalar_type() && residual.device().is_cpu(), op,
              ": residual must be a CPU tensor of input's dtype (", input.scalar_type(), "), got ",
              residual.scalar_type(), " on ", residual.device());
  TORCH_CHECK(residual.is_contiguous(at::MemoryFormat::ChannelsLast), op,
              ": residual must be channels_last-contiguous (the result is written into it)");
  // The result is stored panel by panel while later panels still read the input: a residual
  // that shares memory with an argument would be read after it was overwritten.
  at::assert_no_internal_overlap(residual);
  at::assert_no_overlap(residual, input);
  at::assert_no_overlap(residual, weight);
  at::assert_no_overlap(residual, bias);
  // torch's in-place rule for inference tensors ("Inplace update to inference tensor outside
  // InferenceMode is not allowed") is enforced by the version counter, bumped before any write.
  residual.unsafeGetTensorImpl()->bump_version();
  compute(input, weight, bias, residual, /*accumulate=*/true, relu, s, kernel);
}

// Autograd: the op writes in place and has no backward. While gradients are recorded it refuses
// any argument that requires grad (torch's own message for a leaf), instead of leaving the
// graph without the op; otherwise it runs as it does below autograd.
void conv1x1_residual_autograd(at::Tensor& residual, const at::Tensor& input,
                               const at::Tensor& weight, const at::Tensor& bias,
                               at::IntArrayRef stride, bool relu, c10::string_view kernel) {
  constexpr const char* op = "conv1x1_residual_";
  if (at::GradMode::is_enabled()) {
    TORCH_CHECK(!(residual.is_leaf() && residual.requires_grad()), op,
                ": a leaf Variable that requires grad is being used in an in-place operation "
                "(residual)");
    TORCH_CHECK(!residual.requires_grad() && !input.requires_grad() && !weight.requires_grad() &&
                    !bias.requires_grad(),
                op, " has no backward (it writes into residual in place): call it under "
                "torch.no_grad(), or use resnet_fused.ops.conv_bn_act, which has one (fused "
                "models switch to it by themselves while gradients are recorded)");
  }
  static const auto redispatch =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("resnet_fused::conv1x1_residual_", "")
          .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      at::IntArrayRef, bool, c10::string_view)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  redispatch.call(residual, input, weight, bias, stride, relu, kernel);
}

at::Tensor conv1x1_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                       at::IntArrayRef stride, bool relu, c10::string_view kernel_name) {
  const Kernel kernel = parse_kernel("conv1x1", kernel_name);
  const Shape s = check_args("conv1x1", input, weight, bias, stride, kernel);
  at::Tensor out = at::empty({s.n, s.k, s.ho, s.wo},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));
  compute(input, weight, bias, out, /*accumulate=*/false, relu, s, kernel);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fused, CPU, m) {
  m.impl("conv1x1", &conv1x1_cpu);
  m.impl("conv1x1_residual_", &conv1x1_residual_cpu);
}

TORCH_LIBRARY_IMPL(resnet_fused, Autograd, m) {
  m.impl("conv1x1_residual_", &conv1x1_residual_autograd);
}

// No tensor arguments: registered for every device.
TORCH_LIBRARY_IMPL(resnet_fused, CompositeExplicitAutograd, m) {
  m.impl("cpu_amx_status", []() -> std::string {
    const std::string& why = amx_bf16_absent_reason();
    return why.empty() ? "available" : "absent: " + why;
  });
}

}  // namespace resnet_fused
