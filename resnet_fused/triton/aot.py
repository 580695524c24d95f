"""Ahead-of-time Triton work without a GPU: record the launches an op call would make, bind them
for a GPU target as Triton's JIT would, compile them.

Used by ``.ci/compile_triton.py`` (compile every config for sm_90/sm_80: shared memory, registers,
spills) and ``benchmarks/gpu_plan.py`` (count the distinct compiles a GPU step will need, and warm
Triton's on-disk cache in parallel on the GPU machine before the step runs).

Recording: :func:`record_launches` runs an op's Python launch path on CPU tensors with
``resnet_fused.triton.launch.wrap_triton`` swapped for a recorder, so the arguments are the
launcher's own. Binding: :func:`bind` feeds a recorded launch through Triton's JIT binder for the
target, so constexprs and specializations (ints equal to 1, 16-divisible ints and pointers) are
exactly what a real launch of that shape would compile; equal bindings are one compile.
TRITON_INTERPRET must be unset before triton is imported in a process that uses this module.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

# The kernels, by name: module and attribute (also how worker processes find them again).
KERNELS = {
    "conv_bn_act": ("resnet_fused.triton.conv_bn_act", "_conv_bn_act_kernel"),
    "add_relu": ("resnet_fused.triton.add_relu", "_add_relu_kernel"),
}


@dataclasses.dataclass(frozen=True)
class Launch:
    kernel: str  # a KERNELS name
    args: tuple
    kwargs: dict = dataclasses.field(hash=False)


@dataclasses.dataclass(frozen=True)
class Binding:
    """One compile: what JITFunction.run would hand to ``triton.compile`` on ``arch``."""

    kernel: str
    arch: int
    signature: dict = dataclasses.field(hash=False, compare=False)
    constexprs: dict = dataclasses.field(hash=False, compare=False)
    attrs: dict = dataclasses.field(hash=False, compare=False)
    options: dict = dataclasses.field(hash=False, compare=False)
    key: str = ""  # canonical text of all of the above: equal keys are one compile

    @classmethod
    def make(cls, kernel, arch, signature, constexprs, attrs, options) -> Binding:
        def canon(d: dict) -> list:
            return sorted((repr(k), repr(v)) for k, v in d.items())

        text = repr((kernel, arch, *(canon(d) for d in (signature, constexprs, attrs, options))))
        return cls(kernel, arch, signature, constexprs, attrs, options, text)


def kernel_fn(name: str):
    module, attr = KERNELS[name]
    return getattr(importlib.import_module(module), attr)


def _kernel_name(fn) -> str:
    for name in KERNELS:
        if kernel_fn(name) is fn:
            return name
    raise KeyError(f"not a resnet_fused Triton kernel: {fn!r}")


def record_launches(call: Callable[[], object]) -> list[Launch]:
    """Runs ``call()`` with kernel launches recorded instead of run; returns them in order."""
    from . import launch as launch_module

    launches: list[Launch] = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def record(*args, **kwargs):
                launches.append(Launch(_kernel_name(self.fn), args, kwargs))
            return record

    saved = launch_module.wrap_triton
    launch_module.wrap_triton = Recorder
    try:
        call()
    finally:
        launch_module.wrap_triton = saved
    return launches


def bind(launch: Launch, arch: int) -> Binding:
    """The compile a launch needs on ``sm_<arch>`` (Triton's own binder decides)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = kernel_fn(launch.kernel)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization,
                                                          options)
    return Binding.make(launch.kernel, arch, signature, constexprs, attrs, dict(options.__dict__))


def compile_binding(binding: Binding):
    """``triton.compile`` of one binding (fills Triton's cache); returns the compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(kernel_fn(binding.kernel), binding.signature, binding.constexprs,
                    binding.attrs)
    return triton.compile(src, target=GPUTarget("cuda", binding.arch, 32),
                          options=binding.options)
