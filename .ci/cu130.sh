#!/usr/bin/env bash
# CI job 2: the GPU machine's exact stack, built and tested on a CPU machine.
#
# The GPU machine runs torch 2.11.0+cu130 with triton 3.6.0 and nvcc 13.0. This job
#   1. makes a venv with that torch (pip resolves triton 3.6.0 with it; ~4.7 GB, cached in the
#      venv between local runs),
#   2. copies the working tree (tracked + untracked-but-not-ignored files, exactly what the device
#      tool ships) to a scratch folder, so the CPU job's `_C` in the repository is never touched,
#   3. builds the FULL extension there (C++ CPU ops + CUDA kernels, sm_80 and sm_90a, and the
#      sm_90a CUTLASS kernels from the pinned nvidia-cutlass headers, with warnings and register
#      spills as errors) with nvcc,
#   4. checks the build: `_C` is an abi3 module, imports, and says "built, but no CUDA device";
#      the SASS has tensor-core MMAs (HMMA), warpgroup MMAs (HGMMA) for sm_90a, no local memory,
#   5. runs the whole test suite (CPU and Triton-interpreter tiers) against it,
#   6. keeps the built `_C.abi3.so` in $PREBUILT_DIR: benchmarks/gpu_session.sh ships exactly
#      this file to the GPU machine (the device tool's `carry`), so the GPU runs what CI built.
#
# Usage: .ci/cu130.sh            (env: CU130_VENV, PREBUILT_DIR, MAX_JOBS, KEEP_SCRATCH=1)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV=${CU130_VENV:-$ROOT/build/venv-cu130}
PREBUILT_DIR=${PREBUILT_DIR:-$ROOT/build/prebuilt-cu130}
ARCHS="8.0;9.0a"
# torch derives CUDA_HOME from the nvcc on PATH; here that is a wrapper in /usr/local/bin.
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
T0=$SECONDS
phase() { echo "-- [cu130 $((SECONDS - T0))s] $*"; }

phase "venv $VENV (torch==2.11.0, its triton)"
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
PY=$VENV/bin/python
# numpy < 2.4: triton 3.6's interpreter (the CPU test tier) converts 1-element arrays to ints,
# which numpy 2.4 refuses (tests/conftest.py skips that tier, saying so, if it is newer).
# The project's own dependencies and test extra, from pyproject.toml (torch is pinned above).
DEPS=$(python3 -c '
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + project["optional-dependencies"]["test"]
print(" ".join(d for d in deps if re.split(r"[<>=!~ ]", d)[0] not in ("torch", "numpy")))')
# torchvision 0.26.0: the GPU machine's, so the tests of the torchvision integrations (its weights
# registry, FrozenBatchNorm2d, decode/resize) run here rather than skip.
"$PY" -m pip install -q --disable-pip-version-check torch==2.11.0 torchvision==0.26.0 \
  'setuptools>=77' wheel ninja "numpy<2.4" $DEPS
# CUTLASS's headers for the sm_90a kernels (pyproject's `cuda` extra); --no-deps: only the headers
# are used, not the package's Python tooling (cuda-python, scipy, ...).
"$PY" -m pip install -q --disable-pip-version-check --no-deps nvidia-cutlass==4.2.0.0
"$PY" - <<'EOF'
import torch, triton
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")
assert torch.__version__.startswith("2.11.0") and torch.version.cuda, "not the GPU machine's torch"
EOF

GIT_SHA=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
SCRATCH=$(mktemp -d -t resnet_fused-cu130.XXXXXX)
if [[ ${KEEP_SCRATCH:-0} == 0 ]]; then trap 'rm -rf "$SCRATCH"' EXIT; fi
phase "copy of the working tree -> $SCRATCH"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$SCRATCH"
cd "$SCRATCH"

phase "build: TORCH_CUDA_ARCH_LIST=$ARCHS, nvcc $(nvcc --version | tail -n 1)"
build_log=$SCRATCH/build.log
# RESNET_FUSED_WERROR=1: the CUTLASS kernels compile with warnings and register spills as errors.
if ! /usr/bin/time -v env MAX_JOBS=${MAX_JOBS:-2} TORCH_CUDA_ARCH_LIST="$ARCHS" RESNET_FUSED_WERROR=1 \
    "$PY" -m pip install -v --no-build-isolation --no-deps -e . > "$build_log" 2>&1; then
  tail -n 200 "$build_log"
  exit 1
fi
grep -E "Maximum resident set size|Elapsed \(wall" "$build_log" | sed 's/^\s*/   build: /'
# setup.py's own lines: what was built and why, and each sm_90a CUTLASS unit's time and memory.
grep -E "^\s*resnet_fused: " "$build_log" | sed 's/^\s*/   /' || true
SO=$(ls resnet_fused/_C*.so)
echo "   built $SO ($(du -h "$SO" | cut -f1))"
[[ $SO == resnet_fused/_C.abi3.so ]] || { echo "FAIL: $SO is not an abi3 module"; exit 1; }

phase "import and backend status"
"$PY" - <<'EOF'
import resnet_fused
status = resnet_fused.backend_status()
print("   backend_status:", status)
assert status["cuda"] == "built, but no CUDA device is visible", status["cuda"]
EOF

phase "SASS check (tensor-core MMAs, no local memory)"
"$PY" "$ROOT/.ci/check_sass.py" "$SO" --require-hgmma sm_90a

phase "whole test suite (CPU + Triton interpreter tiers) on torch 2.11 / triton 3.6"
"$PY" -m pytest -q -p no:cacheprovider

phase "Triton AOT compile check with the GPU machine's Triton (sm_90: every config)"
"$PY" .ci/compile_triton.py --arch 90 --jobs "${MAX_JOBS:-2}" | grep -E "^(sm_|FAILED|[0-9]+/[0-9]+ kernels)"

mkdir -p "$PREBUILT_DIR"
cp "$SO" "$PREBUILT_DIR/_C.abi3.so"
"$PY" - "$PREBUILT_DIR" "$ARCHS" "$GIT_SHA" <<'EOF'
import datetime, json, sys, torch, triton
meta = {"built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "archs": sys.argv[2], "python": sys.version.split()[0], "git": sys.argv[3]}
json.dump(meta, open(f"{sys.argv[1]}/BUILD.json", "w"), indent=1)
print("   prebuilt:", meta)
EOF
phase "done: $PREBUILT_DIR/_C.abi3.so"
