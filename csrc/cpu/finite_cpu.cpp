// all_finite(x): one read of x, true iff no element is NaN or infinite. A fused model asks this
// of its input on every CPU call (resnet_fused/fused.py), so it must cost next to nothing: one
// thread (at batch 1 the input is 600 KB, less than waking a thread pool costs) and a loop the
// compiler vectorizes: an integer OR over "exponent bits all ones", the IEEE mark of NaN and
// infinity (a float sum would not vectorize without reassociation).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "../checks.h"
#include "vector_clones.h"

namespace resnet_fused {
namespace {

template <typename Bits, Bits kExponent>
RESNET_FUSED_VECTOR_CLONES
bool any_nonfinite(const Bits* __restrict__ x, int64_t n) {
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<Bits>((x[i] & kExponent) == kExponent);
  return bad != 0;
}

at::Tensor all_finite_cpu(const at::Tensor& x) {
  TORCH_CHECK(is_supported_dtype(x.scalar_type()),
              "all_finite: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), "all_finite (cpu): x must be a CPU tensor");
  if (!x.is_non_overlapping_and_dense()) return at::isfinite(x).all();
  // A dense tensor's elements fill one block of memory in some order: read it in memory order.
  const void* data = x.const_data_ptr();
  const int64_t n = x.numel();
  bool bad = false;
  switch (x.scalar_type()) {
    case at::kFloat:
      bad = any_nonfinite<uint32_t, 0x7f800000u>(static_cast<const uint32_t*>(data), n);
      break;
    case at::kBFloat16:
      bad = any_nonfinite<uint16_t, 0x7f80u>(static_cast<const uint16_t*>(data), n);
      break;
    default:  // float16
      bad = any_nonfinite<uint16_t, 0x7c00u>(static_cast<const uint16_t*>(data), n);
  }
  return at::scalar_tensor(!bad, x.options().dtype(at::kBool));
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fused, CPU, m) { m.impl("all_finite", &all_finite_cpu); }

}  // namespace resnet_fused
