// amx_bf16_absent_reason, TileSession and block_bf16: see amx_tiles.h.
#include "amx_tiles.h"

#include <c10/util/Exception.h>

#include <cerrno>
#include <cstring>

#if defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define RESNET_FUSED_HAS_AMX_KERNELS 1
#include <cpuid.h>
#include <immintrin.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define RESNET_FUSED_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))
#endif

namespace resnet_fused {
namespace amx {
namespace {

constexpr int kTiles = 8;
constexpr int kTileRows = 16;
constexpr int kTileRowBytes = 64;
constexpr int64_t kAccRowBytes = kBlockColumns * sizeof(float);

// LDTILECFG's 64-byte operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t row_bytes[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// Every tile block_bf16 uses is 16 rows of 64 bytes: C (0-3) 16 x 16 fp32, A (4, 5) 16 x 32
// bf16, B (6, 7) 16 pair rows x 16 column pairs. Tiles past 8 do not exist in palette 1.
TileConfig block_config() {
  TileConfig config{};
  config.palette = 1;
  for (int t = 0; t < kTiles; ++t) {
    config.row_bytes[t] = kTileRowBytes;
    config.rows[t] = kTileRows;
  }
  return config;
}

const TileConfig kConfig = block_config();

// One 32 x 32 block, written once for the hardware and the model: tiles 0-3 accumulate C (0: rows
// 0-15 x columns 0-15, 1: rows 0-15 x 16-31, 2: rows 16-31 x 0-15, 3: rows 16-31 x 16-31), 4 and
// 5 hold A's two 16-row halves, 6 and 7 B's two 16-column halves (64 bytes apart in a pair row).
// Each step consumes 32 input channels: 64 bytes of an A row, 16 pair rows of B.
#define RESNET_FUSED_AMX_BLOCK(ZERO, LOAD, DP, STORE)                                         \
  ZERO(0);                                                                                    \
  ZERO(1);                                                                                    \
  ZERO(2);                                                                                    \
  ZERO(3);                                                                                    \
  for (int64_t step = 0; step < steps; ++step) {                                              \
    const char* a_step = a_bytes + step * kTileRowBytes;                                      \
    const char* b_step = b_bytes + step * kTileRows * b_row_bytes;                            \
    LOAD(4, a_step, a_row_bytes);                                                             \
    LOAD(5, a_step + kTileRows * a_row_bytes, a_row_bytes);                                   \
    LOAD(6, b_step, b_row_bytes);                                                             \
    LOAD(7, b_step + kTileRowBytes, b_row_bytes);                                             \
    DP(0, 4, 6);                                                                              \
    DP(1, 4, 7);                                                                              \
    DP(2, 5, 6);                                                                              \
    DP(3, 5, 7);                                                                              \
  }                                                                                           \
  STORE(0, acc, kAccRowBytes);                                                                \
  STORE(1, acc + kTileRows, kAccRowBytes);                                                    \
  STORE(2, acc + kTileRows * kBlockColumns, kAccRowBytes);                                    \
  STORE(3, acc + kTileRows * kBlockColumns + kTileRows, kAccRowBytes);

// --- the software model ----------------------------------------------------------------------
// The instructions as the Intel SDM defines them: loads fill a tile's configured rows and bytes
// and zero the rest; TDPBF16PS treats bf16 denormal inputs as zero, adds each pair's two
// products in turn (a bf16 x bf16 product is exact in fp32; each add rounds to nearest even) and
// flushes denormal results to zero. Shapes are checked as the hardware would fault on them.
struct Model {
  TileConfig config{};
  bool configured = false;
  alignas(64) unsigned char data[kTiles][kTileRows][kTileRowBytes];

  void check(int t) const {
    TORCH_CHECK(configured && t >= 0 && t < kTiles, "AMX model: tile ", t,
                " used without a configuration");
  }
  void zero(int t) {
    check(t);
    std::memset(data[t], 0, sizeof(data[t]));
  }
  void load(int t, const void* base, int64_t stride) {
    check(t);
    zero(t);
    for (int r = 0; r < config.rows[t]; ++r) {
      std::memcpy(data[t][r], static_cast<const char*>(base) + r * stride, config.row_bytes[t]);
    }
  }
  void store(int t, void* base, int64_t stride) const {
    check(t);
    for (int r = 0; r < config.rows[t]; ++r) {
      std::memcpy(static_cast<char*>(base) + r * stride, data[t][r], config.row_bytes[t]);
    }
  }
  static float bf16_input(const unsigned char* p) {  // denormals as zero
    uint16_t bits;
    std::memcpy(&bits, p, sizeof(bits));
    if ((bits & 0x7F80) == 0) bits &= 0x8000;
    const uint32_t wide = uint32_t{bits} << 16;
    float value;
    std::memcpy(&value, &wide, sizeof(value));
    return value;
  }
  static float flush(float value) {  // denormal results to zero
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    if ((bits & 0x7F800000) == 0) bits &= 0x80000000;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }
  void dpbf16ps(int c, int a, int b) {
    check(c);
    check(a);
    check(b);
    const int m = config.rows[c], n = config.row_bytes[c] / 4, k = config.row_bytes[a] / 4;
    TORCH_CHECK(config.rows[a] == m && config.rows[b] == k && config.row_bytes[b] == 4 * n,
                "AMX model: TDPBF16PS on tiles of mismatched shapes");
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < n; ++j) {
        float sum;
        std::memcpy(&sum, data[c][i] + 4 * j, sizeof(sum));
        for (int p = 0; p < k; ++p) {
          for (int half = 0; half < 2; ++half) {
            const float x = bf16_input(data[a][i] + 4 * p + 2 * half);
            const float y = bf16_input(data[b][p] + 4 * j + 2 * half);
            sum = flush(sum + x * y);
          }
        }
        std::memcpy(data[c][i] + 4 * j, &sum, sizeof(sum));
      }
    }
  }
};

thread_local Model t_model;

void block_model(const char* a_bytes, int64_t a_row_bytes, const char* b_bytes,
                 int64_t b_row_bytes, int64_t steps, float* acc) {
#define RESNET_FUSED_MODEL_ZERO(t) t_model.zero(t)
#define RESNET_FUSED_MODEL_LOAD(t, p, s) t_model.load(t, p, s)
#define RESNET_FUSED_MODEL_DP(c, a, b) t_model.dpbf16ps(c, a, b)
#define RESNET_FUSED_MODEL_STORE(t, p, s) t_model.store(t, p, s)
  RESNET_FUSED_AMX_BLOCK(RESNET_FUSED_MODEL_ZERO, RESNET_FUSED_MODEL_LOAD, RESNET_FUSED_MODEL_DP,
                         RESNET_FUSED_MODEL_STORE)
}

// --- the hardware ------------------------------------------------------------------------------
#ifdef RESNET_FUSED_HAS_AMX_KERNELS

RESNET_FUSED_AMX_TARGET void configure_hardware() { _tile_loadconfig(&kConfig); }

RESNET_FUSED_AMX_TARGET void release_hardware() { _tile_release(); }

RESNET_FUSED_AMX_TARGET void block_hardware(const char* a_bytes, int64_t a_row_bytes,
                                            const char* b_bytes, int64_t b_row_bytes,
                                            int64_t steps, float* acc) {
  // GCC writes the tile instructions as asm statements that name no memory operands: without
  // these barriers it could keep stores to A (a gathered copy) in registers past the loads, or
  // read acc before the tile stores.
  __asm__ volatile("" ::: "memory");
  RESNET_FUSED_AMX_BLOCK(_tile_zero, _tile_loadd, _tile_dpbf16ps, _tile_stored)
  __asm__ volatile("" ::: "memory");
}

std::string probe() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx & (1u << 24)) ||
      !(edx & (1u << 22))) {
    return "this CPU has no AMX-TILE and AMX-BF16";
  }
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) {
    return "the OS has not enabled XSAVE";
  }
  uint32_t xcr0_low = 0, xcr0_high = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
  constexpr uint32_t kTileState = (1u << 17) | (1u << 18);  // XTILECFG, XTILEDATA
  if ((xcr0_low & kTileState) != kTileState) {
    return "the OS does not save the AMX tile state (XCR0 bits 17-18)";
  }
#ifdef __linux__
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
    return std::string("Linux refused the AMX tile data permission (arch_prctl: ") +
           std::strerror(errno) + ")";
  }
  return "";
#else
  return "this build enables AMX on Linux only";
#endif
}

#else

void configure_hardware() {}
void release_hardware() {}
void block_hardware(const char*, int64_t, const char*, int64_t, int64_t, float*) {}
std::string probe() { return "this build's compiler has no AMX (GCC >= 11 or Clang >= 12)"; }

#endif

}  // namespace

TileSession::TileSession(bool emulate) : emulate_(emulate) {
  if (emulate_) {
    t_model.config = kConfig;
    t_model.configured = true;
  } else {
    TORCH_CHECK(amx_bf16_available(), "AMX: ", amx_bf16_absent_reason());
    configure_hardware();
  }
}

TileSession::~TileSession() {
  if (emulate_) {
    t_model.configured = false;
  } else {
    release_hardware();
  }
}

void block_bf16(const TileSession& session, const c10::BFloat16* a, int64_t a_row_bytes,
                const c10::BFloat16* b, int64_t b_row_bytes, int64_t steps, float* acc) {
  const char* a_bytes = reinterpret_cast<const char*>(a);
  const char* b_bytes = reinterpret_cast<const char*>(b);
  if (session.emulate()) {
    block_model(a_bytes, a_row_bytes, b_bytes, b_row_bytes, steps, acc);
  } else {
    block_hardware(a_bytes, a_row_bytes, b_bytes, b_row_bytes, steps, acc);
  }
}

}  // namespace amx

const std::string& amx_bf16_absent_reason() {
  static const std::string reason = amx::probe();
  return reason;
}

void check_amx_kernel(const char* op, const char* name, c10::ScalarType dtype, bool hardware) {
  TORCH_CHECK(dtype == c10::ScalarType::BFloat16, op, ": kernel \"", name,
              "\" needs bfloat16 input (AMX-BF16), got ", dtype);
  TORCH_CHECK(!hardware || amx_bf16_available(), op, ": kernel \"amx\" cannot run here: ",
              amx_bf16_absent_reason());
}

}  // namespace resnet_fused
