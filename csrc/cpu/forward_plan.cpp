// ForwardPlan: a fused model's CPU forward replayed as one C++ call.
//
// At batch 1 a ResNet-50 conv takes 0.1-0.8 ms, and the Python around each one (module call,
// checks that the prepared weights are current, choosing the kernel, dispatch from Python) took
// about 15 us of it: in bf16 on one Zen 5 core the forward took 18.7 ms with it and 18.0 ms
// without (docs/results.md). resnet_fused/cpu/plan.py records the ops one
// Python forward runs for an input shape (the op, its arguments, which arguments are the
// activations) and hands them here; a later forward of that shape runs the same ops, with the
// same arguments, in the same order, from C++: the same bits for ~1 us of overhead per op.
//
// The plan is only valid while the tensors its weights were prepared from are unchanged: `run`
// gets them anew on every call and refuses (returns no outputs) unless each is the same tensor,
// at the same address, at the same version as when recorded. The Python side checks the rest
// (module tree, hooks, attributes) and runs the model in Python whenever `run` refuses.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace resnet_fused {
namespace {

// A tuple or list given from Python (where an empty list has no type) as the schema's list type.
c10::IValue as_schema_list(const c10::IValue& value, const c10::ListTypePtr& type) {
  c10::impl::GenericList list(type->getElementType());
  if (value.isTuple()) {
    for (const c10::IValue& e : value.toTupleRef().elements()) list.push_back(e);
  } else {
    for (const c10::IValue& e : value.toListRef()) list.push_back(e);
  }
  return list;
}

int64_t version_of(const at::Tensor& t) {
  // Inference tensors keep no version counter (writes to them need the model's refresh()).
  return t.is_inference() ? -1 : static_cast<int64_t>(t._version());
}

class ForwardPlan : public torch::CustomClassHolder {
 public:
  // Appends a call of the op `name`.`overload` (e.g. "mkldnn::_convolution_pointwise", "binary")
  // with `args` in schema order, every argument given; the activations among them are taken at run
  // time from `slots` (earlier results; slot 0 is the plan's input) into `positions`. `mutated`:
  // -1 if the result is the op's return value, else the position of the argument the op writes
  // in place and whose tensor is the result. Returns the result's slot.
  int64_t add_step(const std::string& name, const std::string& overload,
                   std::vector<c10::IValue> args, std::vector<int64_t> positions,
                   std::vector<int64_t> slots, int64_t mutated) {
    TORCH_CHECK(!finished_, "ForwardPlan.add_step: the plan is already finished");
    const c10::OperatorHandle op =
        c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
    const c10::FunctionSchema& schema = op.schema();
    const auto& formals = schema.arguments();
    TORCH_CHECK(args.size() == formals.size(), "ForwardPlan.add_step: ", schema.name(), " takes ",
                formals.size(), " arguments, got ", args.size());
    TORCH_CHECK(positions.size() == slots.size(),
                "ForwardPlan.add_step: positions and slots must have the same length");
    Step step{op, {}, {}, mutated, {}};
    for (size_t i = 0; i < args.size(); ++i) {
      c10::TypePtr type = formals[i].type();
      if (const auto optional = type->cast<c10::OptionalType>()) {
        if (args[i].isNone()) continue;
        type = optional->getElementType();
      }
      if (const auto list = type->cast<c10::ListType>()) args[i] = as_schema_list(args[i], list);
    }
    for (size_t j = 0; j < positions.size(); ++j) {
      const int64_t pos = positions[j], slot = slots[j];
      TORCH_CHECK(pos >= 0 && pos < static_cast<int64_t>(args.size()),
                  "ForwardPlan.add_step: activation position ", pos, " out of range");
      TORCH_CHECK(slot >= 0 && slot < slot_count_, "ForwardPlan.add_step: slot ", slot,
                  " is not an earlier result");
      step.inputs.emplace_back(pos, slot);
    }
    TORCH_CHECK(mutated < 0 || std::any_of(step.inputs.begin(), step.inputs.end(),
                                           [&](const auto& in) { return in.first == mutated; }),
                "ForwardPlan.add_step: the mutated argument must be an activation");
    step.args = std::move(args);
    step.result = slot_count_++;
    steps_.push_back(std::move(step));
    return steps_.back().result;
  }

  // Ends the recording: the slots `run` returns, and the tensors whose identity, address and
  // version `run` checks (the numbers the plan's weights were prepared from).
  void finish(std::vector<int64_t> outputs, std::vector<at::Tensor> sources) {
    TORCH_CHECK(!finished_, "ForwardPlan.finish: the plan is already finished");
    for (int64_t s : outputs) {
      TORCH_CHECK(s > 0 && s < slot_count_, "ForwardPlan.finish: output slot ", s,
                  " is not a result");
    }
    // Free each activation after its last use, as the Python forward does: a slot's last reader
    // drops it (outputs are kept to the end).
    std::vector<int64_t> last_use(slot_count_, -1);
    for (size_t i = 0; i < steps_.size(); ++i) {
      for (const auto& in : steps_[i].inputs) last_use[in.second] = static_cast<int64_t>(i);
    }
    for (int64_t s : outputs) last_use[s] = -1;
    for (int64_t s = 0; s < slot_count_; ++s) {
      if (last_use[s] >= 0) steps_[last_use[s]].release.push_back(s);
    }
    outputs_ = std::move(outputs);
    for (const at::Tensor& t : sources) sources_.push_back({t, t.data_ptr(), version_of(t)});
    finished_ = true;
  }

  // The outputs for input x, or none if the plan does not apply: the tensors given are not the
  // ones it was prepared from (or changed since), or autograd would record this call.
  std::vector<at::Tensor> run(const at::Tensor& x, const std::vector<at::Tensor>& sources) const {
    TORCH_CHECK(finished_, "ForwardPlan.run: the plan is not finished");
    if (!current(sources)) return {};
    if (at::GradMode::is_enabled()) {
      if (x.requires_grad()) return {};
      for (const at::Tensor& t : sources) {
        if (t.requires_grad()) return {};
      }
    }
    // As the Python fast path: below autograd (nothing here is recorded).
    at::AutoDispatchBelowAutograd below_autograd;
    std::vector<at::Tensor> slots(slot_count_);
    slots[0] = x;
    torch::jit::Stack stack;
    for (const Step& step : steps_) {
      stack = step.args;
      at::Tensor mutated;
      for (const auto& in : step.inputs) {
        stack[in.first] = slots[in.second];
        if (in.first == step.mutated) mutated = slots[in.second];
      }
      step.op.callBoxed(stack);
      slots[step.result] = step.mutated < 0 ? std::move(stack[0]).toTensor() : std::move(mutated);
      for (int64_t s : step.release) slots[s].reset();
    }
    std::vector<at::Tensor> outputs;
    outputs.reserve(outputs_.size());
    for (int64_t s : outputs_) outputs.push_back(slots[s]);
    return outputs;
  }

  int64_t steps() const { return static_cast<int64_t>(steps_.size()); }

 private:
  struct Step {
    c10::OperatorHandle op;
    std::vector<c10::IValue> args;                  // the activations' places hold None
    std::vector<std::pair<int64_t, int64_t>> inputs;  // (argument position, slot)
    int64_t mutated;
    std::vector<int64_t> release;  // slots read for the last time here
    int64_t result = 0;
  };
  struct Source {
    at::Tensor tensor;  // held, so that no other tensor can take its TensorImpl's address
    const void* data;
    int64_t version;
  };

  bool current(const std::vector<at::Tensor>& sources) const {
    if (sources.size() != sources_.size()) return false;
    for (size_t i = 0; i < sources.size(); ++i) {
      const at::Tensor& t = sources[i];
      const Source& s = sources_[i];
      if (!t.is_same(s.tensor) || t.data_ptr() != s.data ||
          version_of(t) != s.version) {
        return false;
      }
    }
    return true;
  }

  std::vector<Step> steps_;
  int64_t slot_count_ = 1;
  std::vector<int64_t> outputs_;
  std::vector<Source> sources_;
  bool finished_ = false;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_fused, m) {
  m.class_<ForwardPlan>("ForwardPlan")
      .def(torch::init<>())
      .def("add_step", &ForwardPlan::add_step)
      .def("finish", &ForwardPlan::finish)
      .def("run", &ForwardPlan::run)
      .def("steps", &ForwardPlan::steps);
}

}  // namespace resnet_fused
