#!/usr/bin/env bash
# The CPU C++ ops under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# Builds resnet_fused._C (CPU sources only) with -fsanitize=address,undefined in a scratch copy of
# the tree, so the repo's own _C is not touched, then runs the op tests and the CPU fast-path
# tests there with the ASan runtime preloaded into Python (torch and Python themselves are not
# instrumented; only our code is checked). Fails on any sanitizer report, whether or not the
# test that triggered it passed.
#
#   .ci/sanitize_cpu.sh                 # from the repo root; prints its wall time
#   KEEP=1 .ci/sanitize_cpu.sh          # keep the scratch tree (path printed) for debugging
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

CXX=${CXX:-g++}
LIBASAN=$("$CXX" -print-file-name=libasan.so)
# Python itself does not link libstdc++: preloaded after the ASan runtime, it lets ASan's
# __cxa_throw interceptor find the real one (else the first C++ exception, e.g. a TORCH_CHECK
# on bad input, aborts with "CHECK failed: real___cxa_throw").
LIBSTDCXX=$("$CXX" -print-file-name=libstdc++.so)
for lib in "$LIBASAN" "$LIBSTDCXX"; do
  if [ ! -e "$lib" ]; then
    echo "sanitize_cpu: $CXX has no $(basename "$lib") ($lib); install its ASan runtime" >&2
    exit 2
  fi
done

SCRATCH=$(mktemp -d -t resnet_fused_sanitize.XXXXXX)
cleanup() { if [ -z "${KEEP:-}" ]; then rm -rf "$SCRATCH"; else echo "kept $SCRATCH"; fi; }
trap cleanup EXIT

# The working tree as it is (tracked and untracked-but-not-ignored files), without build outputs.
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$SCRATCH"
cd "$SCRATCH"

echo "== build _C with ASan + UBSan (CPU sources only) in $SCRATCH"
# -fno-sanitize-recover: a UB report aborts like an ASan one instead of printing and moving on.
# -O1 -fno-omit-frame-pointer: readable stacks; setup.py's -O3 comes later on the command line
# and wins, which keeps the optimizer's view of UB the same as in the release build.
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
RESNET_FUSED_NO_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} CFLAGS="$SAN" LDFLAGS="-fsanitize=address,undefined" \
  python setup.py -q build_ext --inplace > build.log 2>&1 || { tail -40 build.log; exit 1; }
if ! ldd resnet_fused/_C*.so | grep libasan > /dev/null; then  # not -q: with pipefail, an early exit would SIGPIPE ldd
  echo "sanitize_cpu: the built _C is not linked against libasan: the flags did not apply" >&2
  exit 1
fi

echo "== op tests + CPU fast-path tests under the sanitizers"
# detect_leaks=0: CPython and torch keep allocations alive until exit on purpose.
# alloc_dealloc_mismatch=0: torch frees some C++ objects from uninstrumented code.
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
export PYTHONUNBUFFERED=1  # keep the progress output if a sanitizer ends the process
# --capture=sys: pytest captures Python's sys.stderr only, so a report the runtime writes to fd 2
# reaches the log even when it ends the process (fd capture would swallow it).
LD_PRELOAD="$LIBASAN:$LIBSTDCXX" python -m pytest -q -p no:cacheprovider --capture=sys \
  tests/test_ops.py tests/test_bad_inputs.py tests/test_opcheck.py tests/test_cpu_onednn.py \
  tests/test_cpu_pooling.py tests/test_cpu_winograd.py tests/test_cpu_conv1x1.py \
  tests/test_cpu_conv1x1_amx.py tests/test_cpu_winograd_amx.py tests/test_cpu_forward_plan.py \
  tests/test_autograd.py tests/test_nonfinite.py \
  2>&1 | tee pytest.log || status=$?

reports=$(grep -cE "ERROR: AddressSanitizer|runtime error:|CHECK failed" pytest.log || true)
echo "sanitize_cpu: pytest exit status $status, sanitizer reports: $reports, $(($(date +%s) - start)) s"
if [ "$status" -ne 0 ] || [ "$reports" -ne 0 ]; then
  exit 1
fi
