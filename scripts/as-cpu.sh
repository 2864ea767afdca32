#!/usr/bin/env bash
# Run a command as if this x86 machine's CPU were an older instruction-set class, at native speed.
#
#   bash scripts/as-cpu.sh avx2 -- .venv/bin/compresstune pipeline run pipelines/quickstart.yaml
#   bash scripts/as-cpu.sh avx512-vnni -- .venv/bin/compresstune verify exported/quickstart/deploy
#   bash scripts/as-cpu.sh check          # can this machine do it? (exit 0 yes, 2 no, saying why)
#
# CLASS: avx2 (Haswell, Zen 2: AVX2/FMA, no AVX-512, VNNI, BF16 or AMX), avx512 (Skylake-SP: AVX-512
# F/CD/BW/DQ/VL), avx512-vnni (Cascade Lake: that and AVX-512 VNNI). Features the class lacks are hidden;
# none is added, so a class is only as wide as this CPU. Each CPUID the command executes, and its children
# and threads, reports the class, so NumPy, PyTorch (ATen, oneDNN) and ONNX Runtime dispatch the kernels
# they would run on such a CPU; glibc's own string functions are told the same (GLIBC_TUNABLES).
#
# Needs Linux's CPUID faulting (flag cpuid_fault: Intel since Ivy Bridge, AMD since Zen 4, and KVM guests
# of those) and a C compiler; the shim (scripts/cpuid-mask.c) is compiled once into
# ~/.cache/compresstune and checked before every run. The cores are still this machine's: a real CPU of the
# class is usually older and slower per core, so timings made this way are a lower bound.
# Not masked: /proc/cpuinfo (compresstune's machine profile follows CPUID, as kernels do), XGETBV,
# statically linked programs, children started with a cleaned environment (no LD_PRELOAD), and the
# constructors of C libraries a program links at startup (they run before the shim; Python's extension
# modules load later and are masked).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/cpuid-mask.c"

die() { echo "as-cpu.sh: $*" >&2; exit 2; }
usage() { die "usage: bash scripts/as-cpu.sh {avx2|avx512|avx512-vnni} -- COMMAND [ARGS...]   or   bash scripts/as-cpu.sh check"; }

[ $# -ge 1 ] || usage
cls="$1"; shift
case "$cls" in
    check) [ $# -eq 0 ] || usage ;;
    avx2|avx512|avx512-vnni)
        [ "${1:-}" = "--" ] && shift
        [ $# -ge 1 ] || usage ;;
    *) usage ;;
esac

[ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] || die "needs Linux on x86-64 (this is $(uname -s) $(uname -m))."
grep -qw cpuid_fault /proc/cpuinfo ||
    die "this CPU or hypervisor offers no CPUID faulting (no cpuid_fault flag in /proc/cpuinfo), so CPUID cannot be masked here; run on a real machine of the class instead."
read -r -a cc <<< "${CC:-cc}"
[ ${#cc[@]} -ge 1 ] && command -v "${cc[0]}" >/dev/null ||
    die "needs a C compiler to build the shim (${CC:-cc} not found; apt-get install gcc, or set CC)."

# The shim's path goes into LD_PRELOAD, which ld.so splits at spaces and colons: a path with either would
# silently load nothing, so such a cache folder is not used.
base="${XDG_CACHE_HOME:-${HOME:+$HOME/.cache}}"
case "$base" in
    /*) ;;
    *) base="${TMPDIR:-/tmp}" ;;  # no HOME, or a relative XDG_CACHE_HOME (the spec says to ignore it)
esac
cache="$base/compresstune"
if [[ "$cache" =~ [[:space:]:] ]]; then
    cache="${TMPDIR:-/tmp}/compresstune-cache-$(id -u)"
    [[ "$cache" =~ [[:space:]:] ]] && die "no cache folder without a space or colon in its path (LD_PRELOAD splits there); set XDG_CACHE_HOME to one."
fi
digest="$(sha256sum "$src" | cut -c1-16)"
lib="$cache/cpuid-mask-$digest.so"
if [ ! -f "$lib" ]; then
    mkdir -p "$cache" 2>/dev/null && [ -d "$cache" ] && [ -w "$cache" ] ||
        die "cannot write the shim into $cache (not a writable folder); set XDG_CACHE_HOME to a writable folder."
    tmp="$(mktemp "$cache/.cpuid-mask.XXXXXX")"
    "${cc[@]}" -x c -O2 -shared -fPIC -Wall -Werror -o "$tmp" "$src" -ldl ||
        { rm -f "$tmp"; die "could not compile $src with ${CC:-cc} (a C compiler for x86-64 is needed)."; }
    mv -f "$tmp" "$lib"
fi

# The class's glibc setting replaces any earlier one (glibc keeps the last), other tunables are kept.
case "$cls" in
    avx2) hwcaps="glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX_VNNI" ;;
    *) hwcaps="glibc.cpu.hwcaps=-AVX_VNNI" ;;
esac
kept=""
IFS=: read -r -a tunables <<< "${GLIBC_TUNABLES:-}"
for t in "${tunables[@]}"; do
    [ -n "$t" ] && [[ "$t" != glibc.cpu.hwcaps=* ]] && kept="$kept$t:"
done

# Check that the shim loads and masks in this environment before anything runs under it.
probe_cls="$cls"; [ "$cls" = check ] && probe_cls=avx2
said="$(CPUID_MASK_CLASS="$probe_cls" CPUID_MASK_SELFTEST=1 LD_PRELOAD="$lib" /bin/true 2>&1 || true)"
case "$said" in
    *"cpuid-mask: $probe_cls: leaf 7"*) ;;
    *) die "the CPUID shim did not load or mask here ($lib): ${said:-ld.so said nothing}" ;;
esac
if [ "$cls" = check ]; then
    echo "as-cpu.sh: CPUID masking works here (${said#cpuid-mask: }; shim $lib)."
    exit 0
fi

export CPUID_MASK_CLASS="$cls"
export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
export GLIBC_TUNABLES="$kept$hwcaps"
exec "$@"
