#!/usr/bin/env bash
# Run a command as if this x86 machine's CPU were a smaller instruction-set class, at native speed.
#
#   bash scripts/as-cpu.sh avx2 -- .venv/bin/compresstune pipeline run pipelines/quickstart.yaml
#   bash scripts/as-cpu.sh avx512-vnni -- .venv/bin/compresstune verify exported/quickstart/deploy
#   bash scripts/as-cpu.sh check          # can this machine do it? (exit 0 yes, 2 no, saying why)
#
# CLASS: avx2 (AVX2/FMA only: no AVX-512, VNNI, BF16 or AMX), avx512 (AVX-512 F/CD/BW/DQ/VL without VNNI),
# avx512-vnni (no BF16, FP16 or AMX). Every CPUID the command (and what it starts) executes reports the
# class, so NumPy, PyTorch (ATen, oneDNN) and ONNX Runtime dispatch the kernels they would run on such a CPU;
# glibc's own string functions are told the same (GLIBC_TUNABLES). Needs Linux's CPUID faulting (flag
# cpuid_fault: Intel since Ivy Bridge, AMD since Zen 4, and KVM guests of those) and a C compiler; the shim
# (scripts/cpuid-mask.c) is compiled once into ~/.cache/compresstune. The cores are still this machine's:
# a real CPU of the class is usually older and slower per core, so timings made this way are a lower bound.
# /proc/cpuinfo still lists the host's flags; compresstune's machine profile follows CPUID, as kernels do.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/cpuid-mask.c"

die() { echo "as-cpu.sh: $*" >&2; exit 2; }
usage() { die "usage: bash scripts/as-cpu.sh {avx2|avx512|avx512-vnni} -- COMMAND [ARGS...]   or   bash scripts/as-cpu.sh check"; }

[ $# -ge 1 ] || usage
cls="$1"; shift

[ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] || die "needs Linux on x86-64 (this is $(uname -s) $(uname -m))."
grep -qw cpuid_fault /proc/cpuinfo ||
    die "this CPU or hypervisor offers no CPUID faulting (no cpuid_fault flag in /proc/cpuinfo), so CPUID cannot be masked here; run on a real machine of the class instead."
cc="${CC:-cc}"
command -v "$cc" >/dev/null || die "needs a C compiler to build the shim ($cc not found; apt-get install gcc, or set CC)."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/compresstune"
digest="$(sha256sum "$src" | cut -c1-16)"
lib="$cache/cpuid-mask-$digest.so"
if [ ! -f "$lib" ]; then
    mkdir -p "$cache"
    tmp="$(mktemp "$cache/.cpuid-mask.XXXXXX")"
    "$cc" -O2 -shared -fPIC -Wall -Werror -o "$tmp" "$src" -ldl || { rm -f "$tmp"; die "could not compile $src with $cc."; }
    mv -f "$tmp" "$lib"
fi

case "$cls" in
    check) CPUID_MASK_CLASS=avx2 LD_PRELOAD="$lib" /bin/true && { echo "as-cpu.sh: CPUID masking works here ($lib)."; exit 0; }
           die "the shim loaded but could not mask CPUID here." ;;
    avx2) tun="glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX_VNNI" ;;
    avx512|avx512-vnni) tun="glibc.cpu.hwcaps=-AVX_VNNI" ;;
    *) usage ;;
esac
[ "${1:-}" = "--" ] && shift
[ $# -ge 1 ] || usage

export CPUID_MASK_CLASS="$cls"
export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
export GLIBC_TUNABLES="$tun${GLIBC_TUNABLES:+:$GLIBC_TUNABLES}"
exec "$@"
