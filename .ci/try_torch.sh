#!/usr/bin/env bash
# Tries the package against another torch release: a venv with torch==$1 (and the triton pip
# resolves with it), a scratch copy of the tree, the C++ CPU ops built there, the whole suite run.
# Not part of CI (each torch is a multi-GB download); the README lists what was tried and when.
#
# Usage: .ci/try_torch.sh 2.15.0            (env: VENV_ROOT, default build/venvs)
set -euo pipefail
VERSION=${1:?usage: .ci/try_torch.sh TORCH_VERSION}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=${VENV_ROOT:-$ROOT/build/venvs}/torch-$VERSION
T0=$SECONDS
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$VERSION" 'setuptools>=77' \
  wheel ninja numpy tqdm pytest pytest-benchmark safetensors
"$VENV/bin/python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
SCRATCH=$(mktemp -d -t resnet_fused-torch-$VERSION.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
(cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$SCRATCH"
cd "$SCRATCH"
RESNET_FUSED_NO_CUDA=1 MAX_JOBS=2 "$VENV/bin/python" -m pip install -q --no-build-isolation \
  --no-deps -e . > build.log 2>&1 || { grep -E "error|Error" build.log | head -n 40; exit 1; }
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -rfE | grep -E "^(FAILED|ERROR)|passed|failed" | cut -c1-240
echo "torch $VERSION: done in $((SECONDS - T0)) s"
