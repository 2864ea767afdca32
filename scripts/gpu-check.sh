#!/usr/bin/env bash
# The CUDA check, one script: on a machine with one GPU it sets up with the CUDA builds (COMPRESSTUNE_GPU=1),
# runs pipelines/gpu-check.yaml end to end on CUDA (training, fp16 export verified on the CUDA provider,
# benchmark with I/O binding, ship) and prints a short table. Under 8 minutes on one H100 is the aim.
#
#   bash scripts/gpu-check.sh             the real run; exits 3, loudly, where no CUDA GPU is visible
#   bash scripts/gpu-check.sh --dry-run   anywhere (CI): checks the pipeline, the data and the model on the
#                                         CPU and prints what the real run would do; runs no stage
#   bash scripts/gpu-check.sh [--dry-run] KEY=VALUE ...   overrides for the pipeline (e.g. task.glue_dir=PATH)
# COMPRESSTUNE_SKIP_SETUP=1 uses the environment as it is (torch with CUDA and onnxruntime-gpu already there):
# ./.venv if there is one, else $PYTHON (default python3) with compresstune importable (PYTHONPATH). A GPU
# machine with no package index: scripts/gpu-kit.sh carries what it lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
for a in "$@"; do
  case "$a" in
    name=*|output_dir=*|--run-name*|--output-dir*)  # the table reads this run's report at exported/gpu-check: the run folder is fixed
      echo "gpu-check: $a would move the run folder away from exported/gpu-check, where the table is read; leave it out" >&2
      exit 2 ;;
    *=*) ;;
    *) echo "usage: bash scripts/gpu-check.sh [--dry-run] [KEY=VALUE ...] (not: $a)" >&2; exit 2 ;;
  esac
done
PIPE=pipelines/gpu-check.yaml
fail() { echo "gpu-check: FAILED: $*" >&2; exit 3; }

if [ "$DRY" = 0 ] && ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  fail "no CUDA GPU on this machine (nvidia-smi finds none). This script checks the CUDA path and needs one GPU; use --dry-run to check the pipeline without one."
fi
if [ "${COMPRESSTUNE_SKIP_SETUP:-0}" != 1 ]; then
  if [ "$DRY" = 1 ]; then bash scripts/setup.sh; else COMPRESSTUNE_GPU=1 COMPRESSTUNE_WEB=0 bash scripts/setup.sh; fi
fi
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; CT=(.venv/bin/compresstune)
else PY=${PYTHON:-python3}; CT=("$PY" -m compresstune.cli); fi

if [ "$DRY" = 1 ]; then
  echo "gpu-check: dry run: checking $PIPE on the CPU (device=cpu); no stage runs"
  "${CT[@]}" pipeline validate "$PIPE" device=cpu "$@" --run-name gpu-check-dry
  echo "gpu-check: dry run ok. On a GPU the real run trains on cuda, builds fp32/optimized/fp16, verifies each on"
  echo "  the CUDA provider, times them on CUDA (I/O binding) and on the CPU, and ships by the CUDA timings."
  exit 0
fi

# a smoke test of the whole CUDA path in seconds, before any training: a bf16 matmul in torch, a one-node ONNX model
# through the package's own session builder on the CUDA provider with I/O binding, and the imports of every stage
"$PY" - <<'PYCHECK' || fail "the CUDA path does not work here (above: what failed); set up with COMPRESSTUNE_GPU=1 (or scripts/gpu-kit.sh)"
import sys, tempfile
from pathlib import Path
import numpy as np, onnx, torch, onnxruntime as ort
from onnx import TensorProto, helper
print("gpu-check:", torch.__version__, "cuda", torch.version.cuda, "|", ort.__version__, ort.get_available_providers())
if not torch.cuda.is_available():
    sys.exit("gpu-check: torch sees no CUDA GPU")
x = torch.randn(256, 256, device="cuda")
with torch.autocast("cuda", dtype=torch.bfloat16):
    y = (x @ x).float()
torch.cuda.synchronize()
print("gpu-check: torch", torch.cuda.get_device_name(0), "bf16 matmul ok:", bool(torch.isfinite(y).all()))
from compresstune.deploy.predictor import make_session  # raises when ONNX Runtime falls back to the CPU
t = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in "abc"]
g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "smoke", t[:2], t[2:])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
with tempfile.TemporaryDirectory() as d:
    onnx.save(m, str(Path(d) / "smoke.onnx"))
    sess = make_session(Path(d) / "smoke.onnx", "cuda")
    a = ort.OrtValue.ortvalue_from_numpy(np.array([[1, 2], [3, 4]], np.float32), "cuda", 0)
    io = sess.io_binding()
    io.bind_ortvalue_input("a", a)
    io.bind_ortvalue_input("b", a)
    io.bind_output("c", "cuda")
    sess.run_with_iobinding(io)
    c = io.copy_outputs_to_cpu()[0]
assert np.allclose(c, [[7, 10], [15, 22]]), c
print("gpu-check: onnxruntime", sess.get_providers()[0], "with I/O binding ok")
import datasets, pydantic, torch_pruning  # noqa: F401 - every stage's imports, before the run needs them
from transformers import AutoModelForSequenceClassification  # noqa: F401 - pulls in huggingface_hub
print("gpu-check: imports ok")
PYCHECK
start=$(date +%s)
stamp=$(mktemp); trap 'rm -f "$stamp"' EXIT
"${CT[@]}" pipeline run "$PIPE" device=cuda "$@" --no-progress
echo "gpu-check: pipeline finished in $(( $(date +%s) - start )) s"
# the table is this run's or none: an override that skips the report (--until, stages=) leaves an older one there
[ exported/gpu-check/report.json -nt "$stamp" ] ||
  fail "this run wrote no new exported/gpu-check/report.json (an override skipped the report stage?); the table would be an older run's"
"$PY" - <<'PYTABLE'
import json
r = json.load(open("exported/gpu-check/report.json"))
g = r["machine"].get("gpu") or {}
gpu = f"{g.get('name')} (cc {g.get('compute_capability')}, {g.get('memory_gb')} GB)" if isinstance(g, dict) and g else g
print("machine:", r["machine"].get("cpu"), "|", r["machine"].get("isa"), "| GPU:", gpu or None)
print("versions:", ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items()))
st = r["stages"]
ft = next(s["summary"] for s in st.values() if s["type"] == "finetune")
gpu_peak = (ft.get("resources") or {}).get("cuda_peak_allocated_mb")
print(f"training: {ft['steps']} steps in {ft['train_time_s']} s, precision {ft.get('precision')}, "
      f"dev {ft['dev_metric']:.2f}, GPU peak allocated {gpu_peak} MB")
ex = next(s["summary"] for s in st.values() if s["type"] == "export")
bench = next(s["summary"] for s in st.values() if s["type"] == "benchmark")
print(f"{'variant':14s} {'verified on':11s} {'dev':>6s} {'passed':>6s} {'p50 1x128 (ms)':>15s} {'x eager':>8s} "
      f"{'GPU MB':>7s}")
for v, res in ex["variants"].items():
    timing = bench["variants"].get(v) or {}
    t = timing.get("points", {}).get("1x128") or {}
    dev = (res.get("dev") or {}).get("main", float("nan"))
    mem = (timing.get("footprint") or {}).get("gpu_mb", "-")  # the fresh-process probe's, over its CUDA context
    print(f"{v:14s} {res.get('verified_on', '?'):11s} {dev:6.2f} {str(res.get('passed')):>6s} "
          f"{t.get('p50_ms', float('nan')):15.3f} {t.get('speedup_vs_pytorch_eager', float('nan')):8.2f} {mem!s:>7s}")
ship = r.get("ship") or {}
print(f"shipped: {ship.get('chosen')} on the {ship.get('provider')} provider ({ship.get('why')})")
if ship.get("provider") != "cuda":
    raise SystemExit("gpu-check: FAILED: the ship decision was not made on CUDA timings")
PYTABLE
