"""Builds resnet_fused._C: the C++ (CPU) ops always, plus the CUDA kernels when possible.

Build with `pip install --no-build-isolation .` (or `-e .`): the extension compiles against the
torch already installed, so pip must not fetch another one into an isolated build environment.

Environment knobs:
  RESNET_FUSED_NO_CUDA=1     skip the CUDA sources even when torch has CUDA and nvcc exists
  MAX_JOBS=N                 parallel compile jobs (nvcc needs a few GB of memory per job)
  TORCH_CUDA_ARCH_LIST       GPU architectures; default "8.0;9.0" when no GPU is visible
  CUTLASS_PATH               not needed: the CUDA kernels are self-contained (see csrc/cuda/)

The extension uses only the limited Python API (csrc/ops.cpp creates an empty module; all ops are
reached through torch.ops), so it is built as an abi3 `_C.abi3.so`: one build serves every
CPython >= 3.10 with the same torch (e.g. a `_C` built on Python 3.11 loads on 3.12).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - exercised only on a machine without torch
    sys.exit(
        "resnet_fused: PyTorch is not importable in this build environment.\n"
        "Install torch first (e.g. `pip install torch==2.13.0`), then build with\n"
        "`pip install --no-build-isolation .` so the extension compiles against that torch."
    )

HERE = os.path.dirname(os.path.abspath(__file__))
# The oldest CPython this abi3 build serves (pyproject's requires-python), as Py_LIMITED_API wants.
PY_LIMITED_API = "0x030A0000"


def _cuda_build_wanted() -> tuple[bool, str]:
    if os.environ.get("RESNET_FUSED_NO_CUDA", "0") not in ("", "0"):
        return False, "RESNET_FUSED_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc was not found (set CUDA_HOME)"
    if not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        # torch guesses CUDA_HOME from the nvcc on PATH; a wrapper script in /usr/local/bin makes
        # that /usr/local, which has no CUDA headers. Fail here rather than deep in the compile.
        sys.exit(f"resnet_fused: CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h; set "
                 "CUDA_HOME to the CUDA toolkit's root (e.g. /usr/local/cuda), or "
                 "RESNET_FUSED_NO_CUDA=1 for the CPU ops only.")
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"


def _extension():
    cpu_sources = ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    # -fopenmp: at::parallel_for is header-inlined. Py_LIMITED_API: see the module docstring.
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", f"-DPy_LIMITED_API={PY_LIMITED_API}"]
    with_cuda, why = _cuda_build_wanted()
    if not with_cuda:
        print(f"resnet_fused: building the CPU ops only ({why}).")
        return CppExtension(
            "resnet_fused._C", cpu_sources, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"], py_limited_api=True,
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU to ask: build for A100 and H100 (the kernels' sm_90 paths need 9.0).
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "from the visible GPU")
    print(f"resnet_fused: building CPU + CUDA ops ({why}; TORCH_CUDA_ARCH_LIST={arch}).")
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    return CUDAExtension(
        "resnet_fused._C", cpu_sources + cuda_sources,
        extra_compile_args={
            "cxx": [*cxx_flags, "-DRESNET_FUSED_WITH_CUDA"],
            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo",
                     "-DRESNET_FUSED_WITH_CUDA", "--expt-relaxed-constexpr"],
        },
        extra_link_args=["-fopenmp"], py_limited_api=True,
    )


setup(
    packages=find_packages(include=["resnet_fused", "resnet_fused.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
