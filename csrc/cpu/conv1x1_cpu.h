// What the 1x1 convolution's kernels share (csrc/cpu/conv1x1_cpu.cpp: the ops and the AVX-512
// kernel; conv1x1_amx.cpp: the AMX kernel): the problem's shape, the weight's panels, and how
// the work is cut into tasks.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>

namespace resnet_fused {

constexpr int64_t kConv1x1Panel = 64;  // output channels per weight panel

struct Conv1x1Shape {
  int64_t n, h, w, c;   // input (NHWC)
  int64_t k, ho, wo;    // output
  int64_t sh, sw;       // stride
  int64_t pixels() const { return n * ho * wo; }
  int64_t panels() const { return (k + kConv1x1Panel - 1) / kConv1x1Panel; }
  bool strided() const { return sh != 1 || sw != 1; }
  // Where output pixel p's input pixel starts, in elements from the input's start.
  int64_t input_offset(int64_t p) const {
    if (!strided()) return p * c;
    const int64_t image = p / (ho * wo), oy = p / wo % ho, ox = p % wo;
    return ((image * h + oy * sh) * w + ox * sw) * c;
  }
};

// The tasks (at::parallel_for): `row_blocks` blocks of `block_rows` output pixels (the last may
// be shorter), each by one weight panel: task t is rows [t / panels * block_rows, ...) by panel
// t % panels. The rows are cut into as few equal blocks as keep a block's input rows within
// kInputBlockBytes, so that they stay in L2 while the panels pass them and the weight is read
// once per block (at batch 8 a 1024 x 2048 fp32 weight is 8 MiB), and as many more as make the
// tasks a multiple of the threads. Equal blocks keep threads balanced: 49 pixels (7x7, batch 1)
// are one block of 32 one-panel tasks, not 48 + 1 rows; a 64 -> 64 conv (one panel) at 56x56
// is cut in two blocks at batch 1 for two threads, not left to one. A block's rows are a
// multiple of `row_multiple` (one micro-kernel's rows).
// 512 KiB, half of a Zen 4 core's L2: budgets of 128 KiB-2 MiB timed within a few percent of one
// another on ResNet-50's residual convs at batch 1 and 8, the weight-heavy 7x7 layers faster
// from 256 KiB up (2-core Zen 4 VM, development runs).
struct Conv1x1Tasks {
  int64_t block_rows, row_blocks;

  static Conv1x1Tasks split(const Conv1x1Shape& s, int64_t element_bytes, int64_t row_multiple,
                            int64_t threads) {
    constexpr int64_t kInputBlockBytes = int64_t{512} << 10;
    const int64_t pixels = s.pixels(), panels = s.panels();
    const int64_t input_bytes = pixels * s.c * element_bytes;
    int64_t blocks = std::max<int64_t>(1, (input_bytes + kInputBlockBytes - 1) / kInputBlockBytes);
    while ((blocks * panels) % threads != 0 && blocks * row_multiple < pixels) ++blocks;
    const int64_t rows =
        ((pixels + blocks - 1) / blocks + row_multiple - 1) / row_multiple * row_multiple;
    return {rows, (pixels + rows - 1) / rows};
  }
};

// out = act(conv1x1(x, w) + bias (+ out if accumulate)) on the AMX tiles (conv1x1_amx.cpp), bf16,
// the weight packed as for the AVX-512 kernel ((ceil(K / 64), C / 2, 64, 2)). Needs C a multiple
// of 32, K of 16, AVX512_BF16 (the epilogue), and amx_bf16_available() unless `emulate` (the
// tiles' software model, amx_tiles.h). Arguments are checked by the caller.
void conv1x1_amx_bf16(const c10::BFloat16* x, const c10::BFloat16* w, const float* bias,
                      c10::BFloat16* out, bool accumulate, bool relu, const Conv1x1Shape& s,
                      bool emulate);

}  // namespace resnet_fused
