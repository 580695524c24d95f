"""Builds resnet_fused._C: the C++ (CPU) ops always, plus the CUDA kernels when possible.

Build with `pip install --no-build-isolation .` (or `-e .`): the extension compiles against the
torch already installed, so pip must not fetch another one into an isolated build environment.

Environment knobs:
  RESNET_FUSED_NO_CUDA=1     skip the CUDA sources even when torch has CUDA and nvcc exists
  MAX_JOBS=N                 parallel compile jobs (nvcc needs a few GB of memory per job)
  TORCH_CUDA_ARCH_LIST       GPU architectures; default "8.0;9.0" when no GPU is visible
  CUTLASS_PATH               not needed: the CUDA kernels are self-contained (see csrc/cuda/)
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


def _cuda_build_wanted() -> tuple[bool, str]:
    if os.environ.get("RESNET_FUSED_NO_CUDA", "0") not in ("", "0"):
        return False, "RESNET_FUSED_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"


def _extension():
    cpu_sources = ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]  # -fopenmp: at::parallel_for is header-inlined
    with_cuda, why = _cuda_build_wanted()
    if not with_cuda:
        print(f"resnet_fused: building the CPU ops only ({why}).")
        return CppExtension(
            "resnet_fused._C", cpu_sources, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"], py_limited_api=False,
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
        extra_link_args=["-fopenmp"],
    )


setup(
    packages=find_packages(include=["resnet_fused", "resnet_fused.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
