"""Forward plans: a fused model's CPU forward, recorded once per input shape, replayed from C++.

The CPU fast path spends ~15 us of Python around each conv (module call, checks that the prepared
weights are current, choosing the kernel, dispatch from Python): in bf16 at batch 1 on one Zen 5
core the forward took 18.7 ms with it and 18.0 ms without (plans, 4%). Once a model has run an
input shape, the ops that forward runs are known: the stem, the max-pool and each block's convs, in
order, with their prepared weights. So :class:`PlanCache` records them on a later call of that
shape (every fast-path op is a :class:`RecordedOp`), checks that replaying them gives the Python
forward's output bit for bit, and from then on runs that shape as one call of
``torch.classes.resnet_fused.ForwardPlan`` (csrc/cpu/forward_plan.cpp): the same ops with the same
arguments in the same order, the same bits, ~1 us per op around the kernels.

A plan is used only while nothing it depends on has changed; otherwise the model runs in Python
(which prepares again where needed) and a new plan is recorded later:

* the tensors the weights were prepared from (every parameter and buffer of the planned modules)
  are the same tensors, at the same addresses and versions (checked in C++ on every call);
* the planned modules are the same objects with the same plain attributes (``relu``,
  ``stride``, ``backend``, ...), no forward hooks (theirs or global) and no patched ``forward``;
* autograd would not record the call, the input is all finite (the caller checks), and
  ``RESNET_FUSED_FORWARD_PLAN`` is not ``never``.

A recording that meets anything other than a :class:`RecordedOp` on the fast path (an op on the
raw path, an activation made elsewhere, an input written in place) is abandoned, and tried again
only after twice as many calls; so is one whose replay differs from the Python forward.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules import module as nn_module

from ..backends import env_choice

__all__ = ["PlanCache", "RecordedOp", "policy"]

POLICIES = ("auto", "never")

_local = threading.local()  # .recorder: the Recorder of this thread's recording forward, if any


def policy() -> str:
    """``RESNET_FUSED_FORWARD_PLAN``: ``auto`` (default: plan each shape seen twice) or
    ``never`` (every forward in Python)."""
    return env_choice("RESNET_FUSED_FORWARD_PLAN", POLICIES)


class RecordedOp:
    """A fast-path op (an ``OpOverload``) that a recording forward appends to its plan.

    ``activations``: the argument positions that hold activations (the others are weights and
    constants); ``mutated``: the position of the argument the op writes and whose tensor is its
    result (in-place ops), or -1 if the result is the op's return value.
    """

    def __init__(self, op: torch._ops.OpOverload, activations: tuple[int, ...],
                 mutated: int = -1) -> None:
        self.op = op
        self.activations = activations
        self.mutated = mutated
        self.name = op._schema.name
        self.overload = op._schema.overload_name

    def __call__(self, *args):
        result = self.op(*args)
        recorder = getattr(_local, "recorder", None)
        if recorder is not None:
            recorder.append(self, args, args[self.mutated] if self.mutated >= 0 else result)
        return result


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Ops run inside are not recorded (e.g. the trial runs of measuring an algorithm)."""
    recorder = getattr(_local, "recorder", None)
    _local.recorder = None
    try:
        yield
    finally:
        _local.recorder = recorder


class _Recorder:
    """Turns the RecordedOp calls of one forward into a ForwardPlan's steps."""

    def __init__(self, x: Tensor) -> None:
        self.plan = torch.classes.resnet_fused.ForwardPlan()
        self.slots = {id(x): 0}  # id of each live activation -> its slot
        # An activation's id leaves `slots` when the tensor is freed (CPython frees at once, so
        # before a new tensor can reuse the id): the recording holds no activation alive, which
        # at a large batch would be every activation of the forward at once.
        self.forget: list[weakref.ref] = []
        self.failed: str | None = None

    def append(self, op: RecordedOp, args: tuple, result: Tensor) -> None:
        if self.failed:
            return
        positions, slots, constants = [], [], []
        for i, a in enumerate(args):
            slot = self.slots.get(id(a)) if isinstance(a, Tensor) else None
            if i in op.activations and a is not None:
                if slot is None:
                    self.failed = f"{op.name}'s argument {i} was made outside the recorded ops"
                    return
                if i == op.mutated and slot == 0:
                    self.failed = f"{op.name} writes the input in place"
                    return
                positions.append(i)
                slots.append(slot)
                constants.append(None)
            elif slot is not None:
                self.failed = f"{op.name} takes an activation as its argument {i}"
                return
            else:
                constants.append(tuple(a) if isinstance(a, list) else a)
        slot = self.plan.add_step(op.name, op.overload, constants, positions, slots, op.mutated)
        key = id(result)
        self.slots[key] = slot
        self.forget.append(weakref.ref(result, lambda _, key=key, slot=slot: self._freed(key,
                                                                                        slot)))

    def _freed(self, key: int, slot: int) -> None:
        # An in-place op's result is the same tensor under a newer slot: only the newest goes.
        if self.slots.get(key) == slot:
            del self.slots[key]

    def slot_of(self, t: Tensor) -> int | None:
        return self.slots.get(id(t))


def _hook_dicts(module: nn.Module) -> list[dict]:
    return [module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
            module._backward_pre_hooks]


def _tensors(module: nn.Module) -> list[Tensor]:
    """The module's own parameters and buffers (not its children's)."""
    return [t for d in (module._parameters, module._buffers) for t in d.values()
            if t is not None]


def _global_hooks() -> bool:
    return bool(nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks)


class _Plan:
    """A recorded forward and what it was recorded against (see the module docstring)."""

    def __init__(self, plan, modules: list[nn.Module]) -> None:
        self.plan = plan
        # Every tensor of the planned modules, fetched anew each call (the C++ side compares).
        self.tensor_places = [(d, k) for m in modules for d in (m._parameters, m._buffers)
                              for k, t in d.items() if t is not None]
        # (dict, key) -> the object found there when recording: children, plain attributes,
        # parameters and buffers that are None, and no instance-level forward.
        places, expected = [], []
        for m in modules:
            for d in (m._parameters, m._buffers):
                for name, t in d.items():
                    if t is None:
                        places.append((d, name))
                        expected.append(None)
            for name, child in m._modules.items():
                places.append((m._modules, name))
                expected.append(child)
            for name, value in m.__dict__.items():
                if not name.startswith("_"):
                    places.append((m.__dict__, name))
                    expected.append(value)
            places.append((m.__dict__, "forward"))
            expected.append(None)
        self.places, self.expected = places, expected
        # Children added since (the checks above see replaced and removed ones).
        self.children = [m._modules for m in modules]
        self.child_counts = [len(d) for d in self.children]
        self.hook_dicts = [d for m in modules for d in _hook_dicts(m)]

    def sources(self) -> list[Tensor]:
        return [d[k] for d, k in self.tensor_places]

    def unchanged(self) -> bool:
        return (not any(self.hook_dicts) and not _global_hooks()
                and [d.get(k) for d, k in self.places] == self.expected
                and [len(d) for d in self.children] == self.child_counts)

    def run(self, x: Tensor, sources: list[Tensor]) -> list[Tensor] | None:
        """The outputs, or None if the C++ side finds the sources changed."""
        return self.plan.run(x, sources) or None


class PlanCache:
    """The forward plans of one model, per input key (shape, strides, dtype, outputs wanted).

    ``run(key, x, modules, forward)``: the planned outputs for ``x``, or ``forward()``'s (the
    Python forward, returning its outputs and whether every conv kept finite numbers), recording
    a plan on the second call of a key.
    """

    MAX_PLANS = 4  # input keys with a plan; the least recently used goes first
    _MAX_KEYS = 64  # keys counted at all

    def __init__(self) -> None:
        self.plans: dict[tuple, _Plan] = {}
        self.calls: dict[tuple, int] = {}  # key -> Python forwards since the last attempt
        self.wait: dict[tuple, int] = {}  # key -> calls to wait before the next attempt
        self.why_not: dict[tuple, str] = {}  # key -> why the last attempt made no plan

    def clear(self) -> None:
        self.plans.clear()
        self.calls.clear()
        self.wait.clear()
        self.why_not.clear()

    def run(self, key: tuple, x: Tensor, modules: Callable[[], list[nn.Module]],
            forward: Callable[[], tuple[list[Tensor], bool]]) -> list[Tensor]:
        if policy() == "never":
            return forward()[0]
        plan = self.plans.pop(key, None)
        if plan is not None and plan.unchanged():
            sources = plan.sources()
            if torch.is_grad_enabled() and (x.requires_grad
                                            or any(t.requires_grad for t in sources)):
                self.plans[key] = plan  # autograd records this call: Python, plan kept
                return forward()[0]
            outputs = plan.run(x, sources)
            if outputs is not None:
                self.plans[key] = plan  # most recently used last
                return outputs
        # No plan, or a stale one (dropped): run in Python, record again later.
        calls = self.calls.get(key, 0) + 1
        if calls < self.wait.get(key, 2):
            if key in self.calls or len(self.calls) < self._MAX_KEYS:
                self.calls[key] = calls
            return forward()[0]
        planned = modules()
        if torch.is_grad_enabled() and (x.requires_grad or any(
                t.requires_grad for m in planned for t in _tensors(m))):
            return forward()[0]  # autograd records this forward (fine-tuning): try later
        if _global_hooks() or any(any(_hook_dicts(m)) or "forward" in m.__dict__
                                  for m in planned):
            return forward()[0]  # hooks or a patched forward run in Python: try later
        self.calls[key] = 0
        outputs, plan, why = self._record(x, planned, forward)
        if plan is None:
            self.why_not[key] = why
            self.wait[key] = min(2 * self.wait.get(key, 2), 1024)
            return outputs
        self.why_not.pop(key, None)
        if len(self.plans) >= self.MAX_PLANS:
            del self.plans[next(iter(self.plans))]
        self.plans[key] = plan
        return outputs

    @staticmethod
    def _record(x: Tensor, modules: list[nn.Module],
                forward: Callable[[], tuple[list[Tensor], bool]]
                ) -> tuple[list[Tensor], _Plan | None, str]:
        recorder = _Recorder(x)
        _local.recorder = recorder
        try:
            outputs, finite = forward()
        finally:
            _local.recorder = None
        if recorder.failed:
            return outputs, None, recorder.failed
        if not finite:
            return outputs, None, "a conv's numbers are not all finite"
        slots = [recorder.slot_of(y) for y in outputs]
        if None in slots or 0 in slots:
            return outputs, None, "an output was not made by the recorded ops"
        plan = _Plan(recorder.plan, modules)
        recorder.plan.finish(slots, plan.sources())
        replayed = plan.run(x, plan.sources())
        if (replayed is None or len(replayed) != len(outputs)
                or not all(torch.equal(a, b) for a, b in zip(replayed, outputs, strict=True))):
            return outputs, None, "the replay differed from the Python forward"
        return outputs, plan, ""
