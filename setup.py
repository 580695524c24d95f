"""Builds resnet_fused._C: the C++ (CPU) ops always, plus the CUDA kernels when possible.

Build with `pip install --no-build-isolation .` (or `-e .`): the extension compiles against the
torch already installed, so pip must not fetch another one into an isolated build environment.

Environment knobs:
  RESNET_FUSED_NO_CUDA=1     skip the CUDA sources even when torch has CUDA and nvcc exists
  MAX_JOBS=N                 parallel compile jobs (nvcc needs a few GB of memory per job)
  TORCH_CUDA_ARCH_LIST       GPU architectures; default "8.0;9.0" when no GPU is visible
  CUTLASS_PATH               a CUTLASS checkout (its include/ is used) for the sm_90a kernels;
                             default: the headers of the installed `nvidia-cutlass` package
  RESNET_FUSED_NO_SM90=1     skip the sm_90a CUTLASS kernels (csrc/sm90/*.cu)
  RESNET_FUSED_WERROR=1      compile the sm_90a CUTLASS kernels with warnings and register
                             spills as errors (CI job 2 sets it)
  RESNET_FUSED_FRESH_BUILD=1 compile everything in a temporary folder instead of reusing the
                             objects kept in build/temp-torch-<version>/

The sm_90a CUTLASS kernels (csrc/sm90/cutlass_conv_config*.cu) are compiled only when the arch
list has 9.0 or 9.0a and CUTLASS's headers are found; they get their own nvcc command (only
`-gencode arch=compute_90a,code=sm_90a`, -DNDEBUG, no torch headers), so the sm_80 pass never
pays for their templates, and each reports its compile time and peak memory. A build without
them still succeeds (the mma.sync kernels only) and says why, here and in `resnet_fused info`.

The extension uses only the limited Python API (csrc/ops.cpp creates an empty module; all ops are
reached through torch.ops), so it is built as an abi3 `_C.abi3.so`: one build serves every
CPython >= 3.10 with the same torch (e.g. a `_C` built on Python 3.11 loads on 3.12).
"""

import glob
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import setuptools
from setuptools import find_packages, setup

# pyproject.toml's SPDX `license` string needs setuptools >= 77. With --no-build-isolation pip uses
# the installed setuptools whatever build-system.requires says, and an older one fails later with
# an obscure "project.license must be valid exactly by one definition".
if int(setuptools.__version__.split(".")[0]) < 77:
    sys.exit(f"resnet_fused: setuptools >= 77 is needed to build (found {setuptools.__version__}); "
             "run `pip install -U 'setuptools>=77'` and build again.")

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


# Reason codes for RESNET_FUSED_SM90_ABSENT (csrc/impls.cpp turns them into sentences).
SM90_NO_SM90_ENV, SM90_NO_ARCH, SM90_NO_CUTLASS, SM90_OLD_NVCC = 1, 2, 3, 4
SM90_SOURCES = sorted(glob.glob("csrc/sm90/*.cu"))


def _cutlass_include_dirs() -> list[str] | None:
    """CUTLASS's include dirs: $CUTLASS_PATH, else the installed nvidia-cutlass package's."""
    root = os.environ.get("CUTLASS_PATH")
    if not root:
        try:
            import cutlass_library  # the nvidia-cutlass wheel ships the headers under source/
        except ImportError:
            return None
        root = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
    dirs = [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
    if not os.path.exists(os.path.join(dirs[0], "cutlass", "cutlass.h")):
        return None
    return [d for d in dirs if os.path.isdir(d)]


def _arch_list_has_sm90() -> bool:
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if not archs and torch.cuda.is_available():  # torch builds for the visible GPUs
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return (9, 0) in caps
    entries = archs.replace(",", ";").replace(" ", ";").split(";")
    return any(e.split("+")[0] in ("9.0", "9.0a", "90", "90a") for e in entries)


def _sm90_wanted() -> tuple[int, str]:
    """(0, details) when the sm_90a kernels should be built, else (reason code, sentence)."""
    if os.environ.get("RESNET_FUSED_NO_SM90", "0") not in ("", "0"):
        return SM90_NO_SM90_ENV, "RESNET_FUSED_NO_SM90 is set"
    if not _arch_list_has_sm90():
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
        return SM90_NO_ARCH, f"TORCH_CUDA_ARCH_LIST={archs!r} has no 9.0"
    if int((torch.version.cuda or "0").split(".")[0]) < 12:
        return SM90_OLD_NVCC, f"CUDA {torch.version.cuda} is older than 12.0"
    dirs = _cutlass_include_dirs()
    if dirs is None:
        return SM90_NO_CUTLASS, ("no CUTLASS headers (pip install the pinned nvidia-cutlass, see "
                                 "pyproject.toml's `cuda` extra, or set CUTLASS_PATH)")
    return 0, f"CUTLASS headers in {dirs[0]}"


def _sm90_nvcc_command(src: str, obj: str, include_dirs: list[str]) -> list[str]:
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")
    cmd = [nvcc, "-c", src, "-o", obj, "-std=c++17", "-O3", "-DNDEBUG", "--use_fast_math",
           "--expt-relaxed-constexpr", "-lineinfo", "-Xcompiler", "-fPIC",
           "-gencode", "arch=compute_90a,code=sm_90a"]
    for d in include_dirs:
        cmd += ["-isystem", d]
    if _werror():
        cmd += ["-Werror", "all-warnings", "-Xptxas", "-warn-spills"]
    return cmd


def _werror() -> bool:
    return os.environ.get("RESNET_FUSED_WERROR", "0") not in ("", "0")


def _compile_sm90(build_temp: str, include_dirs: list[str]) -> list[str]:
    """Compiles csrc/sm90/*.cu (torch-free CUTLASS TUs) to objects; reports time and peak memory.

    Objects are reused when newer than every csrc/sm90 file (the TUs share their headers).
    """
    out_dir = os.path.join(build_temp, "sm90")
    os.makedirs(out_dir, exist_ok=True)
    deps = [*glob.glob(os.path.join(HERE, "csrc", "sm90", "*")),
            os.path.join(HERE, "csrc", "cuda", "dtype.h")]
    newest_dep = max(os.path.getmtime(d) for d in deps)
    jobs = max(1, int(os.environ.get("MAX_JOBS", "1")))

    def build(src: str) -> str:
        obj = os.path.join(out_dir, os.path.basename(src) + ".o")
        if os.path.exists(obj) and os.path.getmtime(obj) > newest_dep:
            print(f"resnet_fused: sm90 {src}: up to date")
            return obj
        start = time.monotonic()
        proc = subprocess.Popen(_sm90_nvcc_command(os.path.join(HERE, src), obj, include_dirs),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # rusage: the peak RSS of nvcc's process tree
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed on {src}:\n{output}")
        print(f"resnet_fused: sm90 {src}: {time.monotonic() - start:.0f} s, peak "
              f"{usage.ru_maxrss / 1024**2:.2f} GiB, {os.path.getsize(obj) / 1024:.0f} KiB")
        return obj

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(build, SM90_SOURCES))


class BuildWithSm90(BuildExtension):
    """BuildExtension that first compiles the sm_90a CUTLASS TUs with their own nvcc flags, its
    objects kept in build/ so that the next build (e.g. the README's test command right after the
    install command) compiles only what changed: ninja tracks each object's sources, headers and
    flags. One folder per torch build: a CUDA and a CPU torch never share objects."""

    def finalize_options(self):
        super().finalize_options()
        if not os.environ.get("RESNET_FUSED_FRESH_BUILD"):
            self.build_temp = os.path.join(HERE, "build", f"temp-torch-{torch.__version__}")

    def build_extensions(self):
        for ext in self.extensions:
            include_dirs = getattr(ext, "sm90_include_dirs", None)
            if include_dirs:
                ext.extra_objects = [*ext.extra_objects,
                                     *_compile_sm90(self.build_temp, include_dirs)]
        super().build_extensions()


def _extension():
    cpu_sources = ["csrc/ops.cpp", "csrc/impls.cpp", *sorted(glob.glob("csrc/cpu/*.cpp")),
                   *sorted(glob.glob("csrc/sm90/*.cpp"))]
    # -fopenmp: at::parallel_for is header-inlined. Py_LIMITED_API: see the module docstring.
    # No -std here: torch's BuildExtension adds the standard its headers need (C++17 for torch
    # 2.11, C++20 for 2.13 on; torch 2.15's headers no longer compile as C++17).
    cxx_flags = ["-O3", "-fopenmp", f"-DPy_LIMITED_API={PY_LIMITED_API}"]
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
    sm90_code, sm90_why = _sm90_wanted()
    if sm90_code == 0:
        print(f"resnet_fused: building the sm_90a CUTLASS kernels ({sm90_why}; "
              f"{len(SM90_SOURCES)} translation units, 1-2 min and ~4 GB each"
              f"{'; warnings and register spills are errors' if _werror() else ''}).")
        sm90_flags = ["-DRESNET_FUSED_WITH_SM90"]
    else:
        print(f"resnet_fused: NOT building the sm_90a CUTLASS kernels: {sm90_why}. The CUDA "
              "backend has the mma.sync kernels only.")
        sm90_flags = [f"-DRESNET_FUSED_SM90_ABSENT={sm90_code}"]
    ext = CUDAExtension(
        "resnet_fused._C", cpu_sources + cuda_sources,
        extra_compile_args={
            "cxx": [*cxx_flags, "-DRESNET_FUSED_WITH_CUDA", *sm90_flags],
            "nvcc": ["-O3", "--use_fast_math", "-lineinfo",
                     "-DRESNET_FUSED_WITH_CUDA", "--expt-relaxed-constexpr"],
        },
        extra_link_args=["-fopenmp"], py_limited_api=True,
    )
    ext.sm90_include_dirs = _cutlass_include_dirs() if sm90_code == 0 else None
    return ext


setup(
    packages=find_packages(include=["resnet_fused", "resnet_fused.*"]),
    package_data={"resnet_fused": ["data/*.txt"]},  # the ImageNet class names
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildWithSm90.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
