#!/usr/bin/env bash
# One call of a GPU session, on a fresh machine with no network (run from anywhere; it cds to the
# repo root). A session has 15 minutes of device time in all (the machine's start, idle time and
# every try counted) and at most 10 minutes a command: `first` is the call to make, ordered by
# value (tests, sweeps, sanitizer, then the ResNet-50 side by side) within ~8 minutes; the others
# take up, in later sessions, what it does not reach.
#
#   benchmarks/gpu_session.sh first           # the session's call: validation, then bench-model
#   benchmarks/gpu_session.sh validation      # tests (CUDA, Triton), sweeps, compute-sanitizer
#   benchmarks/gpu_session.sh performance     # benchmarks, per-layer roofline, torch.compile, report
#   benchmarks/gpu_session.sh pipeline        # the predict/extract job end to end vs model alone
#   benchmarks/gpu_session.sh first --cpu-dry-run        # the same plan on a CPU, tiny sizes
#
# The plan (each call's steps, their order and time limits, the sweep sizes) comes from
# benchmarks/gpu_plan.py, which sizes it from counted work (Triton compiles counted with Triton's
# own binder); `python3 benchmarks/gpu_plan.py show` prints it with the counts. Override with
# STEPS="..." or T_<STEP>=seconds, SWEEP_CUDA_CASES, SWEEP_TRITON_CASES.
#
# Never loses what finished: every step runs under `timeout -s INT` (SIGKILL 15 s later), cut to
# what is left of BUDGET_S; pytest, the sweeps and `bench` print and keep partial results on
# SIGINT (sweeps write JSON lines as cases finish; pytest-benchmark writes its JSON at session
# end, which SIGINT still reaches). Output: ${OUT:-benchmarks/results/gpu-<date>}, at most 8
# files (the device tool returns 8): session.log plus each call's results.
#
# The compiled extension: the device tool's `carry` ships build/prebuilt-cu130/_C.abi3.so, the
# abi3 module that CI's torch 2.11+cu130 job (.ci/cu130.sh) builds. It is used when it loads (the
# log says so, with its BUILD.json); otherwise the `build` step compiles on the GPU machine.
# Offline wheels (e.g. nvidia-cutlass, for that build) in .whl/ are installed first.
set -u
cd "$(dirname "$0")/.." || exit 1

CALL=${1:-}
DRY=0
[[ "${2:-}" == "--cpu-dry-run" || "${1:-}" == "--cpu-dry-run" ]] && DRY=1
[[ "$CALL" == "--cpu-dry-run" ]] && CALL=${2:-first}
case "$CALL" in
  first|validation|performance|pipeline) ;;
  *) echo "usage: benchmarks/gpu_session.sh first|validation|performance|pipeline [--cpu-dry-run]" >&2
     exit 2 ;;
esac
PY=${PYTHON:-python3}
# The GPU machine has no install of this package: its scripts import it from the checkout.
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ $DRY == 1 ]]; then
  OUT=${OUT:-$(mktemp -d -t gpu-session-dry-run.XXXXXX)}
else
  OUT=${OUT:-benchmarks/results/gpu-$(date +%F)}
fi
mkdir -p "$OUT"
LOG="$OUT/session.log"
PREBUILT=${PREBUILT:-build/prebuilt-cu130}
: > "$LOG"
log() { echo "$*" >> "$LOG"; }

# The plan: steps, limits and sizes (env overrides what the plan says).
# This run's own scratch files (plan, build flag, background log): concurrent runs never share.
WORK=$(mktemp -d -t gpu-session.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PLAN_FILE=$WORK/plan.txt
NEED_BUILD=$WORK/need_build
WARM_LOG=$WORK/warm.log
plan_args=(--call "$CALL" --plan-file "$PLAN_FILE")
[[ $DRY == 1 ]] && plan_args+=(--dry-run)
if ! plan=$("$PY" benchmarks/gpu_plan.py env "${plan_args[@]}" 2>>"$LOG"); then
  echo "gpu_session: benchmarks/gpu_plan.py failed; see $LOG" >&2
  exit 1
fi
eval "$plan"  # export STEPS, BUDGET_S, T_<STEP>, SWEEP_*_CASES (what the caller set wins)
START=$(date +%s)
SUMMARY=()

# step NAME CMD...: CMD's output appended to the log, under a timeout of min(T_<NAME>, what is
# left of the budget). SIGINT first, so pytest, the sweeps and bench report what finished.
step() {
  local name=$1
  shift
  if [[ " $STEPS " != *" $name "* ]]; then return 0; fi
  local var="T_${name^^}"
  var=${var//-/_}
  local limit=${!var:-60}
  local left=$((BUDGET_S - ($(date +%s) - START)))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then
    log "=== [$name] SKIPPED: out of time budget"
    SUMMARY+=("$name: skipped (budget)")
    return 0
  fi
  log ""
  log "=== [$name] $(date -u +%T) (limit ${limit}s): $*"
  local t0
  t0=$(date +%s)
  if [[ $(type -t "$1") == function ]]; then
    timeout -s INT -k 15 "$limit" bash -c "$*" >> "$LOG" 2>&1
  else
    timeout -s INT -k 15 "$limit" "$@" >> "$LOG" 2>&1
  fi
  local rc=$?
  local what="rc=$rc"
  ((rc == 124 || rc == 137)) && what="TIMEOUT after ${limit}s (partial results above)"
  log "=== [$name] $what, $(($(date +%s) - t0))s"
  SUMMARY+=("$name: $what ($(($(date +%s) - t0))s)")
}

info() {
  echo "date: $(date -u +%FT%TZ); host: $(hostname); git: $(git rev-parse --short HEAD 2>/dev/null)"
  echo "call: $CALL; dry run: $DRY; budget ${BUDGET_S}s; steps: $STEPS"
  nvidia-smi || echo "(nvidia-smi not available)"
  nvcc --version 2>/dev/null | tail -n 2 || echo "(nvcc not found)"
  "$PY" - <<'EOF'
import importlib, platform
import torch
print("python", platform.python_version())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
      torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
for name in ("triton", "torchvision", "timm", "pytest", "pytest_benchmark", "matplotlib", "tqdm",
             "ninja", "cutlass_library"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "(installed)"))
    except Exception as e:  # noqa: BLE001 - any import problem is just reported
        print(name, "missing:", type(e).__name__, str(e)[:80])
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
EOF
  prepare_extension
  "$PY" -m resnet_fused info 2>&1 || true
  cat "$PLAN_FILE"
}

# Uses the prebuilt abi3 _C when it loads here (the log says which); otherwise leaves the build
# step to compile it. Flags that in the file $NEED_BUILD, which the build step reads (steps run
# in subshells).
prepare_extension() {
  rm -f "$NEED_BUILD"
  if ls resnet_fused/_C*.so >/dev/null 2>&1 && [[ $DRY == 1 ]]; then
    echo "extension: dry run, using this checkout's own $(ls resnet_fused/_C*.so)"
    return 0
  fi
  if [[ -f $PREBUILT/_C.abi3.so ]]; then
    cp "$PREBUILT/_C.abi3.so" resnet_fused/_C.abi3.so
    if "$PY" -c "import resnet_fused, torch; s = resnet_fused.backend_status(); \
print('backends:', s); assert s['cuda'] == 'available' or not torch.cuda.is_available()"; then
      echo "extension: using the PREBUILT $PREBUILT/_C.abi3.so (what CI built):"
      cat "$PREBUILT/BUILD.json" 2>/dev/null
      return 0
    fi
    echo "extension: the prebuilt _C does not load here; the build step will compile it"
    rm -f resnet_fused/_C.abi3.so
  else
    echo "extension: no prebuilt _C at $PREBUILT; the build step will compile it"
  fi
  touch "$NEED_BUILD"
}

build() {
  if [[ ! -f $NEED_BUILD ]]; then
    echo "build: not needed (the prebuilt _C loads)"
    return 0
  fi
  if [[ -d .whl ]]; then
    echo "installing offline wheels from .whl/: $(ls .whl)"
    "$PY" -m pip install -q --no-index --no-deps .whl/*.whl || return 1
  fi
  local blog=$WORK/build.log
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-12} \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} \
    "$PY" -m pip install --no-build-isolation --no-deps -e . > "$blog" 2>&1
  local rc=$?
  if ((rc == 0)); then tail -n 20 "$blog"; else tail -n 300 "$blog"; fi
  echo "build: compiled on this machine (rc=$rc)"
  "$PY" -c "import resnet_fused; print('backends:', resnet_fused.backend_status())"
  return $rc
}

sanitizer() {
  if [[ $DRY == 1 ]]; then
    "$PY" benchmarks/cuda_paths.py --list
    return $?
  fi
  if ! command -v compute-sanitizer >/dev/null; then
    echo "compute-sanitizer is not on PATH: not run"
    return 1
  fi
  local rc=0
  for tool in memcheck racecheck; do
    echo "--- compute-sanitizer --tool $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" benchmarks/cuda_paths.py || rc=$?
  done
  return $rc
}

export -f info prepare_extension build sanitizer
export DRY PY STEPS BUDGET_S CALL PREBUILT PLAN_FILE WORK NEED_BUILD

if [[ $DRY == 1 ]]; then
  # CPU: the same steps and commands, tiny sizes, CPU stand-ins for the GPU backends.
  SWEEP_CUDA=(--backends cpu --device cpu --dtypes float32)
  SWEEP_TRITON=(--backends triton --device cpu --dtypes float32)
  export TRITON_INTERPRET_FOR_SWEEP=1
  WARM_ARGS=(--max 4 --jobs 2)
  MODEL_ARGS=(--bench-models resnet18 --bench-batches 1 --bench-rounds 2 --bench-warmup 0)
  LAYER_ARGS=(--bench-layers conv1,layer4.0.conv2 --bench-layer-batches 1 --bench-rounds 2
              --bench-warmup 0)
  COMPILE_ARGS=(--bench-models resnet18 --bench-batches 1 --bench-variants compile
                --bench-compile no)
  ROOFLINE_ARGS=(--model resnet18 --batch 1 --iters 2 --warmup 0 --roofline --device cpu)
  INFER_ARGS=(--device cpu --model resnet18 --images 8 --batch-size 4 --workers 1 --rounds 1)
else
  SWEEP_CUDA=(--backends cuda)
  SWEEP_TRITON=(--backends triton)
  export TRITON_INTERPRET_FOR_SWEEP=0
  WARM_ARGS=(--jobs "${WARM_JOBS:-14}")
  # Batch 256 first: the headline rows must not be the ones a cut step loses.
  MODEL_ARGS=(--bench-models resnet50 --bench-batches 256,1 --bench-dtypes bfloat16
              --bench-compile no)
  LAYER_ARGS=(--bench-layer-batches 256 --bench-layer-dtypes bfloat16)
  COMPILE_ARGS=(--bench-models resnet50 --bench-batches 256,1 --bench-dtypes bfloat16
                --bench-variants compile --bench-compile yes)
  # The roofline's table goes to the log (the performance call's 8 files are the JSON + report).
  ROOFLINE_ARGS=(--model resnet50 --batch 256 --dtype bfloat16 --roofline
                 --backends reference cudnn-fused cuda triton)
  INFER_ARGS=(--device cuda --dtype bfloat16 --batch-size 256 --images 8192 --workers 8
              --decode cpu gpu --rounds 3)
fi

log "# benchmarks/gpu_session.sh $* (OUT=$OUT)"
step info info
step build build
WARM_PID=""
if [[ " $STEPS " == *" warm-triton "* ]]; then
  warm_steps=(bench)
  [[ $CALL == validation || $CALL == first ]] && warm_steps=(tests-triton sweep-triton)
  if [[ $CALL == validation || $CALL == first ]]; then
    # In the background: it needs the CPUs, the CUDA steps need the GPU.
    (STEPS=warm-triton LOG=$WARM_LOG; : > "$LOG"
     limit=$T_WARM_TRITON
     echo "=== [warm-triton, background] $(date -u +%T) (limit ${limit}s)" >> "$LOG"
     timeout -s INT -k 15 "$limit" "$PY" benchmarks/gpu_plan.py warm "${warm_steps[@]}" \
       --sweep-cases "$SWEEP_TRITON_CASES" "${WARM_ARGS[@]}" >> "$LOG" 2>&1
     echo "=== [warm-triton] rc=$?" >> "$LOG") &
    WARM_PID=$!
  else
    step warm-triton "$PY" benchmarks/gpu_plan.py warm "${warm_steps[@]}" "${WARM_ARGS[@]}"
  fi
fi
# Not the slow tests (batch-256 models, compile modes, the int64 tensors): they take minutes of
# a 15-minute session; the `validation` call's SLOW=1 runs them.
MARK_SLOW="and not slow"
[[ ${SLOW:-0} == 1 ]] && MARK_SLOW=""
step tests-cuda "$PY" -m pytest -q -p no:cacheprovider -m "gpu and not triton $MARK_SLOW" tests
step sweep-cuda "$PY" -m resnet_fused sweep "${SWEEP_CUDA[@]}" --cases "$SWEEP_CUDA_CASES" \
  --json "$OUT/sweep-cuda.jsonl"
step sanitizer sanitizer
if [[ -n $WARM_PID ]]; then
  wait "$WARM_PID"
  cat "$WARM_LOG" >> "$LOG"
  SUMMARY+=("warm-triton: $(tail -n 1 "$WARM_LOG")")
fi
step tests-triton "$PY" -m pytest -q -p no:cacheprovider -m "gpu and triton $MARK_SLOW" tests
step sweep-triton env RESNET_FUSED_TRITON_AUTOTUNE=0 TRITON_INTERPRET=$TRITON_INTERPRET_FOR_SWEEP \
  "$PY" -m resnet_fused sweep "${SWEEP_TRITON[@]}" --cases "$SWEEP_TRITON_CASES" \
  --json "$OUT/sweep-triton.jsonl"
step bench-model "$PY" -m pytest benchmarks/test_model_throughput.py -q -p no:cacheprovider \
  "${MODEL_ARGS[@]}" --benchmark-json "$OUT/bench-model.json"
step bench-layers "$PY" -m pytest benchmarks/test_layer_throughput.py -q -p no:cacheprovider \
  "${LAYER_ARGS[@]}" --benchmark-json "$OUT/bench-layers.json"
step roofline "$PY" -m resnet_fused bench "${ROOFLINE_ARGS[@]}"
step bench-compile "$PY" -m pytest benchmarks/test_model_throughput.py -q -p no:cacheprovider \
  "${COMPILE_ARGS[@]}" --benchmark-json "$OUT/bench-compile.json"
step bench-infer "$PY" benchmarks/infer_pipeline.py "${INFER_ARGS[@]}" --json "$OUT/infer-pipeline.json"
if [[ " $STEPS " == *" report "* ]]; then
  shopt -s nullglob
  JSONS=()
  for f in "$OUT"/bench-*.json; do
    # pytest-benchmark leaves an empty file when nothing ran (or it was killed): not a result.
    if [[ -s $f ]]; then JSONS+=("$f"); else rm -f "$f"; fi
  done
  if ((${#JSONS[@]})); then
    step report "$PY" benchmarks/report.py "${JSONS[@]}" -o "$OUT" --stem report
  else
    log "=== [report] skipped: no benchmark JSON was written"
    SUMMARY+=("report: skipped (no JSON)")
  fi
fi

log ""
log "=== summary ($(($(date +%s) - START))s of ${BUDGET_S}s)"
for line in "${SUMMARY[@]}"; do log "  $line"; done
tail -n 25 "$LOG"
echo "outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
