#!/usr/bin/env bash
# Compile check for the CUDA backend on a machine without a GPU (and without a CUDA build of torch).
#
#  1. nvcc -c every torch-free kernel translation unit (csrc/cuda/*.cu) for sm_80 (A100) and
#     sm_90a (H100) with setup.py's nvcc flags; ptxas register-spill reports are shown.
#  2. nvcc -c the sm_90a CUTLASS translation units (csrc/sm90/*.cu) for sm_90a only, with
#     setup.py's flags for them (-DNDEBUG, CUTLASS's headers as system includes) and warnings as
#     errors; skipped with a line saying so when no CUTLASS headers are found ($CUTLASS_PATH, or
#     the `nvidia-cutlass` package of the `python` on PATH). Each takes ~1.5 min and ~4 GB.
#  3. g++ -fsyntax-only the binding (csrc/cuda/*.cpp) against the installed torch's headers, which
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

sm90_files=(csrc/sm90/*.cu)
CUTLASS_ROOT="${CUTLASS_PATH:-$(python -c 'import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), "source"))' 2>/dev/null || true)}"
if [[ ${#sm90_files[@]} -gt 0 && ( -z "$CUTLASS_ROOT" || ! -f "$CUTLASS_ROOT/include/cutlass/cutlass.h" ) ]]; then
  echo "skip  ${sm90_files[*]}: no CUTLASS headers (set CUTLASS_PATH or pip install nvidia-cutlass)"
else
  SM90_FLAGS=(-std=c++17 -O3 -DNDEBUG --use_fast_math --expt-relaxed-constexpr -lineinfo -Xcompiler -fPIC
              -isystem "$CUTLASS_ROOT/include" -isystem "$CUTLASS_ROOT/tools/util/include"
              -Werror all-warnings -Xptxas -warn-spills -gencode arch=compute_90a,code=sm_90a)
  for src in "${sm90_files[@]}"; do
    obj="$TMP/$(basename "$src" .cu).sm_90a.o"
    start=$SECONDS
    if ! log="$("$NVCC" "${SM90_FLAGS[@]}" -c "$src" -o "$obj" 2>&1)"; then
      echo "FAIL  $src [sm_90a, CUTLASS]"
      echo "$log"
      exit 1
    fi
    echo "ok    $src [sm_90a, CUTLASS] ($((SECONDS - start)) s, $(stat -c %s "$obj") bytes)"
  done
fi

if ! TORCH_INC="$(python -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null)"; then
  echo "skip  ${cpp_files[*]}: torch is not importable, no headers to check the binding against"
  exit 0
fi
PY_INC="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
inc_flags=()
for d in $TORCH_INC "$CUDA_HOME/include" "$PY_INC"; do inc_flags+=(-isystem "$d"); done
# The binding twice: as built without and with the sm_90a kernels (both #ifdef branches).
for src in "${cpp_files[@]}"; do
  for variant in -DRESNET_FUSED_SM90_ABSENT=3 -DRESNET_FUSED_WITH_SM90; do
    start=$SECONDS
    if ! log="$(g++ -fsyntax-only -std=c++17 -Wall -Wextra -Werror -DRESNET_FUSED_WITH_CUDA "$variant" \
                  -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE "${inc_flags[@]}" "$src" 2>&1)"; then
      echo "FAIL  $src [g++ -fsyntax-only $variant]"
      echo "$log"
      exit 1
    fi
    echo "ok    $src [g++ -fsyntax-only $variant, torch headers] ($((SECONDS - start)) s)"
  done
done
