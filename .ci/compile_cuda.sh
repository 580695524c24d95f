#!/usr/bin/env bash
# Compile check for the CUDA backend on a machine without a GPU (and without a CUDA build of torch).
#
#  1. nvcc -c every torch-free kernel translation unit (csrc/cuda/*.cu) for sm_80 (A100) and
#     sm_90a (H100) with setup.py's nvcc flags; ptxas register-spill reports are shown.
#  2. g++ -fsyntax-only the binding (csrc/cuda/*.cpp) against the installed torch's headers, which
#     ship ATen/c10 CUDA headers even in CPU wheels. Two shims make that possible there:
#     C10_CUDA_NO_CMAKE_CONFIGURE_FILE (the CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h) and
#     /usr/local/cuda/include for cuda_runtime.h. Skipped (with a note) when torch is not importable.
#
# Fails on the first error; prints one line per translation unit. Usage: .ci/compile_cuda.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="${NVCC:-$(command -v nvcc || echo "$CUDA_HOME/bin/nvcc")}"
if [[ ! -x "$NVCC" ]]; then
  echo "compile_cuda: nvcc not found (set CUDA_HOME or NVCC)" >&2
  exit 1
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# setup.py's nvcc flags, plus the ones torch's BuildExtension adds (no implicit half/bf16
# conversions or operators, -fPIC), plus warnings-as-errors and a ptxas register-spill warning.
NVCC_FLAGS=(-std=c++17 -O3 --use_fast_math -lineinfo -DRESNET_FUSED_WITH_CUDA --expt-relaxed-constexpr
            -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
            -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC
            -Werror all-warnings -Xptxas -warn-spills)
ARCHS=("compute_80,code=sm_80" "compute_90a,code=sm_90a")

shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
cpp_files=(csrc/cuda/*.cpp)
if [[ ${#cu_files[@]} -eq 0 ]]; then
  echo "compile_cuda: no csrc/cuda/*.cu files" >&2
  exit 1
fi

echo "compile_cuda: $("$NVCC" --version | tail -n 1)"
for src in "${cu_files[@]}"; do
  for arch in "${ARCHS[@]}"; do
    obj="$TMP/$(basename "$src" .cu).${arch##*=}.o"
    start=$SECONDS
    if ! log="$("$NVCC" "${NVCC_FLAGS[@]}" -gencode "arch=$arch" -c "$src" -o "$obj" 2>&1)"; then
      echo "FAIL  $src [${arch##*=}]"
      echo "$log"
      exit 1
    fi
    echo "ok    $src [${arch##*=}] ($((SECONDS - start)) s, $(stat -c %s "$obj") bytes)"
  done
done

if ! TORCH_INC="$(python -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null)"; then
  echo "skip  ${cpp_files[*]}: torch is not importable, no headers to check the binding against"
  exit 0
fi
PY_INC="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
inc_flags=()
for d in $TORCH_INC "$CUDA_HOME/include" "$PY_INC"; do inc_flags+=(-isystem "$d"); done
for src in "${cpp_files[@]}"; do
  start=$SECONDS
  if ! log="$(g++ -fsyntax-only -std=c++17 -Wall -Wextra -Werror -DRESNET_FUSED_WITH_CUDA \
                -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE "${inc_flags[@]}" "$src" 2>&1)"; then
    echo "FAIL  $src [g++ -fsyntax-only]"
    echo "$log"
    exit 1
  fi
  echo "ok    $src [g++ -fsyntax-only, torch headers] ($((SECONDS - start)) s)"
done
