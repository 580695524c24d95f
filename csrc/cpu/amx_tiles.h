// AMX (Advanced Matrix Extensions, Intel Sapphire Rapids and later) for the CPU kernels: whether
// this process may run the tile instructions, and one block of a bf16 GEMM on the tiles.
//
// AMX adds eight 2-D registers ("tiles", up to 16 rows of 64 bytes each) and a tile-by-tile
// multiply: TDPBF16PS adds A (16 rows x 32 bf16) times B (16 rows of 16 column pairs, the
// pair-packed layout gemm_avx512.h's AVX512_BF16 kernels already read) into C (16 rows x 16
// fp32). One instruction is 16 x 16 x 32 multiply-adds, 64 times what one vdpbf16ps does.
//
// Running the instructions needs three things: the CPU has them (CPUID), the OS saves the tile
// state (XCR0), and on Linux the process asked for it (arch_prctl ARCH_REQ_XCOMP_PERM); without
// the last, the first tile instruction faults. amx_bf16_absent_reason() checks all three, once.
// The build stays baseline x86-64: the tile code carries its own target attribute, compiled only
// where the compiler has AMX (GCC >= 11, Clang >= 12), and runs only when that check passes.
//
// The same block also runs through a software model of the tiles (`emulate`), instruction by
// instruction, with the tile configuration, addresses and strides the hardware would get: the
// tests run it on every CPU, so the kernel's logic is tested where no AMX exists.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <string>

namespace resnet_fused {

// "" if this process runs the AMX bf16 kernels (CPU, OS and build all allow it), else why not.
// The first call asks Linux for the tile state's permission.
const std::string& amx_bf16_absent_reason();

inline bool amx_bf16_available() { return amx_bf16_absent_reason().empty(); }

// The checks every op's AMX kernel argument shares: `op`'s kernel `name` ("amx" or
// "amx_model") needs bfloat16 input, and "amx" (`hardware`) a process that runs the tiles.
void check_amx_kernel(const char* op, const char* name, c10::ScalarType dtype, bool hardware);

namespace amx {

constexpr int64_t kBlockRows = 32;     // rows of A (pixels) per block: two A tiles of 16
constexpr int64_t kBlockColumns = 32;  // columns of B (output channels) per block: two B tiles
constexpr int64_t kStepChannels = 32;  // input channels per step: one A tile row, 64 bytes

// While alive, this thread's tiles are configured for block_bf16 (hardware: LDTILECFG, then
// TILERELEASE on destruction; emulated: the model's state). One per thread, not nested.
class TileSession {
 public:
  explicit TileSession(bool emulate);
  ~TileSession();
  TileSession(const TileSession&) = delete;
  TileSession& operator=(const TileSession&) = delete;
  bool emulate() const { return emulate_; }

 private:
  bool emulate_;
};

// acc = A x B for one 32 x 32 block, acc row-major fp32 (32 floats a row). A: 32 rows of
// `steps` x 32 bf16, rows `a_row_bytes` apart; B: pair-packed, `steps` x 16 pair rows of 32
// columns (64 bf16), pair rows `b_row_bytes` apart. Needs a TileSession in this thread.
void block_bf16(const TileSession& session, const c10::BFloat16* a, int64_t a_row_bytes,
                const c10::BFloat16* b, int64_t b_row_bytes, int64_t steps, float* acc);

}  // namespace amx
}  // namespace resnet_fused
