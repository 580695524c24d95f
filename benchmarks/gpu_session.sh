#!/usr/bin/env bash
# One GPU session, end to end, on a fresh machine with no network (run from anywhere; it cds to
# the repo root):
#
#   benchmarks/gpu_session.sh                 # build, test, benchmark, report -> $OUT
#   benchmarks/gpu_session.sh --cpu-dry-run   # the same plumbing on a CPU, tiny sizes, no build
#
# Output folder: ${OUT:-benchmarks/results/gpu-<date>}. At most 7 files are written there (the
# device tool returns 8): session.log (nvidia-smi, versions, build tail, test log, CLI roofline,
# per-step status), bench-model.json, bench-layers.json, bench-compile.json (pytest-benchmark raw),
# report.md, report-throughput.png, report-layers.png.
#
# Time: the whole script stays within BUDGET_S seconds (default 480 = 8 min; one device call may
# run 10). Each step has its own limit (T_<STEP> below) and is cut to what is left of the budget,
# so a hang costs one step, not the session; 30 s are kept back for the report. Steps run in
# priority order; torch.compile(max-autotune) is last because it is the slowest to build. To split
# a session over several calls, pick steps: STEPS="bench-compile report" benchmarks/gpu_session.sh
# (a later call on the same warm machine reuses the build).
#
# A device call may run 10 minutes and a machine is given back 30 s after a call, so plan one call
# per purpose, each starting with the (cached when warm) build:
#   validation:  STEPS="info build tests sweep" BUDGET_S=570 benchmarks/gpu_session.sh
#   performance: STEPS="info build bench-model bench-layers roofline report" benchmarks/gpu_session.sh
#   baseline:    STEPS="build bench-compile report" benchmarks/gpu_session.sh
#
# Validation (not a default step, it needs its own call): STEPS="build sweep" runs the seeded
# randomized conv_bn_act sweep, SWEEP_CASES (default 500) cases per backend (cuda, triton), with
# poisoned outputs; its table and any failed cases go to session.log.
#
# Wheels: if a .whl/ folder exists (offline wheels, e.g. nvidia-cutlass), they are installed
# first with `pip install --no-index --no-deps .whl/*.whl`.
set -u
cd "$(dirname "$0")/.." || exit 1

DRY=0
if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  DRY=1
fi
if [[ $DRY == 1 ]]; then
  OUT=${OUT:-$(mktemp -d /tmp/gpu-session-dry-run.XXXXXX)}
else
  OUT=${OUT:-benchmarks/results/gpu-$(date +%F)}
fi
mkdir -p "$OUT"
LOG="$OUT/session.log"
BUDGET_S=${BUDGET_S:-480}
STEPS=${STEPS:-"info build tests bench-model bench-layers roofline bench-compile report"}
T_INFO=${T_INFO:-30}
T_BUILD=${T_BUILD:-240}
T_TESTS=${T_TESTS:-240}
T_BENCH_MODEL=${T_BENCH_MODEL:-90}
T_BENCH_LAYERS=${T_BENCH_LAYERS:-90}
T_ROOFLINE=${T_ROOFLINE:-60}
T_BENCH_COMPILE=${T_BENCH_COMPILE:-180}
T_REPORT=${T_REPORT:-30}
T_SWEEP=${T_SWEEP:-300}
START=$(date +%s)
SUMMARY=()
PY=${PYTHON:-python}

log() { echo "$*" >> "$LOG"; }

# step NAME LIMIT CMD...: runs CMD with its output appended to the log, under a timeout of
# min(LIMIT, what is left of the budget minus the report's reserve). SIGINT first, so pytest still
# writes its --benchmark-json for the cases that finished; SIGKILL 15 s later.
step() {
  local name=$1 limit=$2
  shift 2
  if [[ " $STEPS " != *" $name "* ]]; then
    return 0
  fi
  local reserve=$T_REPORT
  [[ $name == report ]] && reserve=0
  local left=$((BUDGET_S - ($(date +%s) - START) - reserve))
  if ((left < limit)); then limit=$left; fi
  if ((limit < 10)); then
    log "=== [$name] SKIPPED: out of time budget"
    SUMMARY+=("$name: skipped (budget)")
    return 0
  fi
  log ""
  log "=== [$name] $(date -u +%T) (limit ${limit}s): $*"
  local t0=$(date +%s)
  if [[ $(type -t "$1") == function ]]; then
    # timeout runs programs, not shell functions: run the (exported) function in a child bash.
    timeout -s INT -k 15 "$limit" bash -c "$1" >> "$LOG" 2>&1
  else
    timeout -s INT -k 15 "$limit" "$@" >> "$LOG" 2>&1
  fi
  local rc=$?
  local dt=$(($(date +%s) - t0))
  local what="rc=$rc"
  ((rc == 124 || rc == 137)) && what="TIMEOUT after ${limit}s"
  log "=== [$name] $what, ${dt}s"
  SUMMARY+=("$name: $what (${dt}s)")
}

info() {
  echo "date: $(date -u +%FT%TZ); host: $(hostname); git: $(git rev-parse --short HEAD 2>/dev/null)"
  echo "dry run: $DRY; budget ${BUDGET_S}s; steps: $STEPS"
  nvidia-smi || echo "(nvidia-smi not available)"
  nvcc --version 2>/dev/null | tail -n 2 || echo "(nvcc not found)"
  "$PY" - <<'EOF'
import importlib, platform
import torch
print("python", platform.python_version())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
      torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
for name in ("triton", "torchvision", "timm", "pytest", "pytest_benchmark", "matplotlib", "tqdm",
             "ninja", "cutlass", "cutlass_library"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "(installed)"))
    except Exception as e:  # noqa: BLE001 - any import problem is just reported
        print(name, "missing:", type(e).__name__)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
EOF
  "$PY" -m resnet_fused info 2>&1 || true
}

build() {
  if [[ -d .whl ]]; then
    echo "installing offline wheels from .whl/: $(ls .whl)"
    "$PY" -m pip install --no-index --no-deps .whl/*.whl || return 1
  fi
  local blog
  blog=$(mktemp /tmp/build.XXXXXX.log)
  MAX_JOBS=${MAX_JOBS:-8} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
    "$PY" -m pip install --no-build-isolation --no-deps -e . > "$blog" 2>&1
  local rc=$?
  # The full build log is long: keep its tail (more of it when the build failed).
  if ((rc == 0)); then tail -n 40 "$blog"; else tail -n 300 "$blog"; fi
  "$PY" -c "import resnet_fused; print('backends:', resnet_fused.backend_status())"
  return $rc
}

export -f info build
export DRY PY STEPS BUDGET_S

if [[ $DRY == 1 ]]; then
  # CPU plumbing check: tiny sizes, the suite's CPU paths, no build.
  MODEL_ARGS=(--bench-models resnet18 --bench-batches 1 --bench-rounds 2 --bench-warmup 0)
  LAYER_ARGS=(--bench-layers conv1,layer4.0.conv2 --bench-layer-batches 1 --bench-rounds 2
              --bench-warmup 0)
  COMPILE_ARGS=(--bench-models resnet18 --bench-batches 1 --bench-variants compile
                --bench-compile no)
  ROOFLINE_ARGS=(--model resnet18 --batch 1 --iters 2 --warmup 0 --roofline)
  TEST_ARGS=(tests/test_bench.py -q)
else
  MODEL_ARGS=(--bench-models resnet50 --bench-batches 1,256 --bench-dtypes bfloat16
              --bench-compile no)
  LAYER_ARGS=(--bench-layer-batches 256 --bench-layer-dtypes bfloat16)
  COMPILE_ARGS=(--bench-models resnet50 --bench-batches 256 --bench-dtypes bfloat16
                --bench-variants reference,compile,fused-auto --bench-compile yes)
  ROOFLINE_ARGS=(--model resnet50 --batch 256 --dtype bfloat16 --roofline
                 --backends reference cudnn-fused cuda triton)
  TEST_ARGS=(tests -m "gpu or not gpu" -q)
fi

: > "$LOG"
log "# benchmarks/gpu_session.sh $* (OUT=$OUT)"
step info "$T_INFO" info
if [[ $DRY == 1 ]]; then
  log "=== [build] skipped: --cpu-dry-run"
else
  step build "$T_BUILD" build
fi
step tests "$T_TESTS" "$PY" -m pytest "${TEST_ARGS[@]}"
step sweep "$T_SWEEP" "$PY" -m resnet_fused sweep --backends cuda triton \
  --cases "${SWEEP_CASES:-500}" --seed "${SWEEP_SEED:-0}"
step bench-model "$T_BENCH_MODEL" "$PY" -m pytest benchmarks/test_model_throughput.py -q \
  "${MODEL_ARGS[@]}" --benchmark-json "$OUT/bench-model.json"
step bench-layers "$T_BENCH_LAYERS" "$PY" -m pytest benchmarks/test_layer_throughput.py -q \
  "${LAYER_ARGS[@]}" --benchmark-json "$OUT/bench-layers.json"
step roofline "$T_ROOFLINE" "$PY" -m resnet_fused bench "${ROOFLINE_ARGS[@]}"
step bench-compile "$T_BENCH_COMPILE" "$PY" -m pytest benchmarks/test_model_throughput.py -q \
  "${COMPILE_ARGS[@]}" --benchmark-json "$OUT/bench-compile.json"
shopt -s nullglob
JSONS=()
for f in "$OUT"/bench-*.json; do
  # pytest-benchmark leaves an empty file when nothing ran (or it was killed): not a result.
  if [[ -s $f ]]; then JSONS+=("$f"); else rm -f "$f"; fi
done
if ((${#JSONS[@]})); then
  step report "$T_REPORT" "$PY" benchmarks/report.py "${JSONS[@]}" -o "$OUT" --stem report
else
  log "=== [report] skipped: no benchmark JSON was written"
  SUMMARY+=("report: skipped (no JSON)")
fi

log ""
log "=== summary ($(($(date +%s) - START))s of ${BUDGET_S}s)"
for line in "${SUMMARY[@]}"; do log "  $line"; done
cat "$LOG" | tail -n 15
echo "outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
