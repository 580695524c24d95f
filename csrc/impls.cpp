// Which CUDA implementations this build contains (csrc/impls.h), and the ops that say so:
// cuda_impls() and cuda_impl_status(impl), registered for every device (they take no tensor), so
// a CPU-only machine can ask what a build has. setup.py passes the build's facts as macros:
// RESNET_FUSED_WITH_CUDA, RESNET_FUSED_WITH_SM90, or RESNET_FUSED_SM90_ABSENT=<reason code>.
#include "impls.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cstring>

#include "sm90/conv_plan.h"

namespace resnet_fused {
namespace {

constexpr const char* kMmaSyncName = "mma_sync";
constexpr const char* kSm90Name = "sm90_cutlass";

#ifndef RESNET_FUSED_SM90_ABSENT
#define RESNET_FUSED_SM90_ABSENT 0
#endif

// Reason codes setup.py uses for RESNET_FUSED_SM90_ABSENT.
const char* sm90_absent_reason() {
#if defined(RESNET_FUSED_WITH_SM90)
  return "";
#elif !defined(RESNET_FUSED_WITH_CUDA)
  return "this build has no CUDA kernels at all";
#else
  switch (RESNET_FUSED_SM90_ABSENT) {
    case 1: return "RESNET_FUSED_NO_SM90 was set at build time";
    case 2: return "TORCH_CUDA_ARCH_LIST had no 9.0 or 9.0a at build time";
    case 3:
      return "no CUTLASS headers at build time (pip install the pinned nvidia-cutlass, or set "
             "CUTLASS_PATH, then rebuild)";
    case 4: return "nvcc is older than CUDA 12.0 (sm_90a needs 12.0+)";
    default: return "not compiled into this build";
  }
#endif
}

std::vector<std::string> config_names() {
  std::vector<std::string> names;
  for (const auto& cfg : sm90::kConfigs) names.push_back(std::string(kSm90Name) + ":" + cfg.name);
  return names;
}

std::string known_names() {
  std::string s = std::string(kMmaSyncName) + ", " + kSm90Name;
  for (const auto& n : config_names()) s += ", " + n;
  return s;
}

}  // namespace

ImplChoice parse_impl(const std::string& name) {
  if (name == kMmaSyncName) return {CudaImpl::kMmaSync, -1};
  if (name == kSm90Name) return {CudaImpl::kSm90Cutlass, -1};
  const std::string prefix = std::string(kSm90Name) + ":";
  if (name.compare(0, prefix.size(), prefix) == 0) {
    const int config = sm90::find_config(name.c_str() + prefix.size());
    if (config >= 0) return {CudaImpl::kSm90Cutlass, config};
  }
  TORCH_CHECK(false, "unknown CUDA implementation '", name, "'; known: ", known_names());
}

std::string impl_absent_reason(CudaImpl impl) {
#if defined(RESNET_FUSED_WITH_CUDA)
  if (impl == CudaImpl::kMmaSync) return "";
#else
  if (impl == CudaImpl::kMmaSync) return "this build has no CUDA kernels at all";
#endif
  return sm90_absent_reason();
}

namespace {
std::atomic<bool> g_poison_outputs{false};
}  // namespace

bool poison_outputs() { return g_poison_outputs.load(std::memory_order_relaxed); }

std::vector<std::string> built_impls() {
  std::vector<std::string> names;
  if (impl_absent_reason(CudaImpl::kMmaSync).empty()) names.emplace_back(kMmaSyncName);
  if (impl_absent_reason(CudaImpl::kSm90Cutlass).empty()) {
    for (auto& n : config_names()) names.push_back(std::move(n));
  }
  return names;
}

namespace {

std::vector<std::string> cuda_impls_op() { return built_impls(); }

// "built", or "absent: <why>"; raises for an unknown name.
std::string cuda_impl_status_op(c10::string_view impl) {
  const std::string why = impl_absent_reason(parse_impl(std::string(impl)).impl);
  return why.empty() ? "built" : "absent: " + why;
}

}  // namespace

// Sets the switch, returns its previous value.
bool poison_outputs_op(bool enable) { return g_poison_outputs.exchange(enable); }

TORCH_LIBRARY_IMPL(resnet_fused, CompositeExplicitAutograd, m) {
  m.impl("cuda_impls", &cuda_impls_op);
  m.impl("cuda_impl_status", &cuda_impl_status_op);
  m.impl("_poison_outputs", &poison_outputs_op);
}

}  // namespace resnet_fused
