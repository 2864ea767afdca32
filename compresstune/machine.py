"""The machine a result is made, timed or checked on: one profile used wherever a machine is described.

What decides results and speed on a CPU is its instruction-set class, not its model name ("AMD EPYC"
is printed by machines with AVX2 only and by machines with AVX-512 VNNI and BF16):

* bf16 autocast is fast only where the CPU has native bf16 dot products (AVX-512 BF16, AMX); elsewhere
  it is slower than fp32: 2.2x through oneDNN's emulation on AVX-512, 20-30x on PyTorch's scalar path on
  AVX2 (measured: issue 17);
* ONNX Runtime's u8s8 int8 kernels are exact with VNNI (AVX-512 VNNI, AVX-VNNI); without it they use
  ``vpmaddubsw``, whose int16 sums can saturate, so int8 weights are quantised to 7 bits by default
  (``reduce_range``), which makes one file exact on both.

The flags come from the kernel (``/proc/cpuinfo``) or, elsewhere, from ``py-cpuinfo`` when it is
installed, corrected by what this process's CPUID says (NumPy's runtime dispatch: under QEMU or
Rosetta the OS describes the host, not the CPU the kernels run on). ``ONEDNN_MAX_CPU_ISA``, which caps
what PyTorch's oneDNN kernels use, caps what the profile says of PyTorch (``native_bf16``, ``torch_isa``),
not of ONNX Runtime (``isa``, ``vnni``).
Nothing here imports torch: GPU facts are read only when torch is already imported (the torch-free
``compresstune verify`` runs on machines without it)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# x86 flags (Linux names) that change results or speed, highest first within each family
X86_FEATURES = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2", "fma")
ARM_FEATURES = ("sve2", "sve", "bf16", "i8mm", "asimddp", "asimd")
# oneDNN's ISA caps (``ONEDNN_MAX_CPU_ISA``, or the older ``DNNL_MAX_CPU_ISA``; whole values, any case, as
# oneDNN reads them) -> the x86 flags they leave PyTorch's oneDNN kernels (its bf16 and fp32 matmuls); None: no
# cap. A value oneDNN does not know caps nothing: oneDNN ignores it.
_AVX2 = {"avx2", "fma"}
_AVX512 = _AVX2 | {"avx512f"}
_VNNI = _AVX512 | {"avx512_vnni", "avx_vnni"}
_ONEDNN_CAPS: dict[str, set[str] | None] = {
    "sse41": set(),
    "avx": set(),
    "avx2": _AVX2,
    "avx2_vnni": _AVX2 | {"avx_vnni"},
    "avx2_vnni_2": _AVX2 | {"avx_vnni"},
    "avx512_core": _AVX512,
    "avx512_core_vnni": _VNNI,
    "avx512_core_bf16": _VNNI | {"avx512_bf16"},
    "avx512_core_fp16": _VNNI | {"avx512_bf16"},
    "avx10_1_512": _VNNI | {"avx512_bf16"},
    "avx10_2_512": _VNNI | {"avx512_bf16"},
    **dict.fromkeys(
        ("avx512_core_amx", "avx512_core_amx_fp16", "avx10_1_512_amx", "avx10_1_512_amx_fp16", "avx10_2_512_amx_2"),
        None,
    ),
    "all": None,
    "default": None,
}
ONEDNN_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def _read_cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if out:
                        break
                    continue
                key, _, value = line.partition(":")
                out.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return out


def _cpuinfo_library() -> dict[str, str]:
    """py-cpuinfo's view (macOS, Windows), when that package is installed."""
    try:
        import cpuinfo  # py-cpuinfo: optional

        info = cpuinfo.get_cpu_info()
    except Exception:  # noqa: BLE001 - optional, and it probes the machine in ways that can fail
        return {}
    return {"model name": info.get("brand_raw", ""), "flags": " ".join(info.get("flags", []))}


def raw_cpu() -> tuple[str, str, set[str]]:
    """(vendor, model name, flags): the flags this process can execute (:func:`process_flags` of what the
    operating system reports)."""
    info = _read_cpuinfo() or _cpuinfo_library()
    model = info.get("model name") or info.get("hardware") or info.get("cpu model") or platform.processor() or ""
    vendor = info.get("vendor_id") or info.get("cpu implementer") or ""
    flags = set((info.get("flags") or info.get("features") or "").lower().split())
    return vendor, model, process_flags(flags, _runtime_features())


# NumPy's runtime-dispatch feature names -> the kernel's flag names
_NUMPY_FLAGS = {
    "AVX2": "avx2",
    "FMA3": "fma",
    "AVX512F": "avx512f",
    "AVX512VNNI": "avx512_vnni",
    "AVX512BF16": "avx512_bf16",
    "ASIMD": "asimd",
    "ASIMDDP": "asimddp",
    "SVE": "sve",
}


def _runtime_features() -> dict[str, bool]:
    """The CPU features this process can execute, as NumPy's runtime dispatch reads them (CPUID and the
    OS-enabled register state on x86): what ONNX Runtime's and PyTorch's kernel dispatch see too. {} where
    NumPy does not say."""
    try:
        import numpy

        core = getattr(numpy, "_core", None) or numpy.core
        feats = core._multiarray_umath.__cpu_features__
    except Exception:  # noqa: BLE001 - a NumPy without it: the operating system's list stands
        return {}
    return {k: bool(v) for k, v in feats.items() if isinstance(k, str)}


def process_flags(os_flags: set[str], runtime: dict[str, bool]) -> set[str]:
    """The OS's flag list, corrected by what the process sees. They differ under emulation and translation
    (QEMU user mode, Rosetta 2: /proc/cpuinfo or sysctl describe the host, CPUID the emulated CPU) and
    where the OS leaves AVX-512 state off: kernels dispatch on CPUID, so that view decides. Features NumPy
    does not name (AMX, AVX-VNNI, Arm BF16/I8MM/SVE2) keep the OS's word only while the OS is right about
    every feature NumPy does name: once it lists one the process cannot use, it describes another CPU, and
    only what the process sees stands."""
    seen = {flag for np_name, flag in _NUMPY_FLAGS.items() if runtime.get(np_name)}
    named = {flag for np_name, flag in _NUMPY_FLAGS.items() if np_name in runtime}
    if not named:
        return set(os_flags)
    if (set(os_flags) & named) - seen:  # the OS claims what this process cannot execute: not this CPU's list
        return seen
    return (set(os_flags) - named) | seen


def arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


def onednn_cap(env=None) -> tuple[str, str] | None:
    """(variable, value) of the oneDNN ISA cap this process runs under, None where there is none that oneDNN
    would apply (unset, ``ALL``/``DEFAULT``, an AMX level, or a value oneDNN does not know and ignores)."""
    env = os.environ if env is None else env
    for var in ONEDNN_CAP_VARIABLES:  # ONEDNN_ wins over the older DNNL_ name, as in oneDNN
        value = env.get(var) or ""  # not stripped: oneDNN ignores " avx2 " (measured with ONEDNN_VERBOSE)
        if value:
            return (var, value) if _ONEDNN_CAPS.get(value.lower()) is not None else None
    return None


def effective_flags(flags: set[str], env=None) -> set[str]:
    """``flags`` less what a oneDNN ISA cap keeps PyTorch's oneDNN kernels from using. ``ATEN_CPU_CAPABILITY``
    caps only ATen's own vectorised kernels (recorded as ``torch_cpu_capability``): measured, bf16 autocast
    stayed native under ``ATEN_CPU_CAPABILITY=avx2`` (0.63 s per step against 0.90 s in fp32), so it is not a
    cap on bf16."""
    cap = onednn_cap(env)
    if cap is None:
        return set(flags)
    allowed = _ONEDNN_CAPS[cap[1].lower()]
    return {f for f in flags if f not in X86_FEATURES or f in allowed}


def isa_class(arch_name: str, flags: set[str]) -> str:
    """The instruction-set class that matters for bf16 training and int8 inference, in words."""
    if arch_name == "x86_64":
        if "amx_tile" in flags or "amx_bf16" in flags:
            return "x86-64 AMX"
        if "avx512f" in flags:
            extra = "+".join(x for x, f in (("VNNI", "avx512_vnni"), ("BF16", "avx512_bf16")) if f in flags)
            return "x86-64 AVX-512" + (f" {extra}" if extra else "")
        if "avx2" in flags:
            return "x86-64 AVX-VNNI" if "avx_vnni" in flags else "x86-64 AVX2"
        return "x86-64 (no AVX2)"
    if arch_name == "aarch64":
        if "sve" in flags or "sve2" in flags:
            return "arm64 SVE"
        if "asimddp" in flags:
            return "arm64 NEON dot-product"
        return "arm64 NEON"
    return arch_name or "unknown"


def has_vnni(arch_name: str, flags: set[str]) -> bool:
    """int8 dot products without 16-bit saturation (x86: AVX-512 VNNI, AVX-VNNI or AMX)."""
    return arch_name == "x86_64" and bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_native_bf16(arch_name: str, flags: set[str]) -> bool:
    """bf16 matrix products in hardware (x86: AVX-512 BF16 or AMX; arm64: the BF16 extension)."""
    if arch_name == "x86_64":
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    if arch_name == "aarch64":
        return "bf16" in flags
    return False


def cpu_profile(flags: set[str] | None = None, arch_name: str | None = None) -> dict:
    """The CPU part of the profile; ``flags``/``arch_name`` replace what this machine reports (tests; such flags
    are taken as they are, without the environment's caps)."""
    vendor, model, hw = raw_cpu()
    a = arch_name or arch()
    f = hw if flags is None else set(flags)
    torch_f = effective_flags(hw) if flags is None else f  # what PyTorch may use (under a oneDNN ISA cap)
    known = X86_FEATURES if a == "x86_64" else ARM_FEATURES
    out = {
        "cpu": model,
        "vendor": vendor,
        "arch": a,
        "isa": isa_class(a, f),
        "features": [x for x in known if x in f],
        "vnni": has_vnni(a, f),  # ONNX Runtime's int8 kernels see the hardware
        "native_bf16": cpu_native_bf16(a, torch_f),  # PyTorch's bf16 autocast sees its caps
        "logical_cores": os.cpu_count(),
    }
    if torch_f != f:
        out["torch_isa"] = isa_class(a, torch_f)
        var, value = onednn_cap() or ("", "")
        out["torch_isa_capped_by"] = {var: value}
    return out


def gpu_profile() -> dict | None:
    """The first CUDA GPU (name, compute capability, memory, bf16/fp16), only when torch is already imported."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {
        "name": p.name,
        "compute_capability": f"{p.major}.{p.minor}",
        "memory_gb": round(p.total_memory / 2**30, 1),
        "bf16": _cuda_native_bf16(torch, 0),
        "fp16": (p.major, p.minor) >= (5, 3),
        "count": torch.cuda.device_count(),
    }


def ort_profile() -> dict | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return {"version": ort.__version__, "providers": list(ort.get_available_providers())}


def profile(cpu: dict | None = None) -> dict:
    """The whole profile: CPU (instruction-set class, features, cores), GPU, ONNX Runtime, platform."""
    out = dict(cpu or cpu_profile())
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    gpu = gpu_profile()
    if gpu:
        out["gpu"] = gpu
    ort = ort_profile()
    if ort:
        out["onnxruntime"] = ort
    out["platform"] = platform.platform()
    return out


def describe(p: dict | None = None) -> str:
    """One line: 'AMD EPYC, x86-64 AVX-512 VNNI+BF16, 2 logical cores[, GPU NVIDIA H100 (cc 9.0, 79.1 GB)]'."""
    p = p or profile()
    s = f"{p.get('cpu') or 'unknown CPU'}, {p.get('isa')}, {p.get('logical_cores')} logical cores"
    if p.get("gpu"):
        s += f", GPU {gpu_words(p['gpu'])}"
    return s


def gpu_words(g) -> str:
    """'NVIDIA H100 80GB HBM3 (cc 9.0, 79.1 GB)' from a profile's GPU record."""
    return f"{g['name']} (cc {g['compute_capability']}, {g['memory_gb']} GB)" if isinstance(g, dict) else str(g)


def native_bf16(device: str, cpu: dict | None = None) -> bool:
    """Whether ``device`` ('cpu', 'cuda', 'cuda:1') runs bf16 autocast natively."""
    if device.startswith("cuda"):
        torch = sys.modules.get("torch")
        _, _, idx = device.partition(":")
        index = int(idx) if idx.isdigit() else 0
        return bool(torch is not None and torch.cuda.is_available() and _cuda_native_bf16(torch, index))
    return bool((cpu or cpu_profile())["native_bf16"])


def _cuda_native_bf16(torch, index: int) -> bool:
    """bf16 in hardware: NVIDIA compute capability 8.0 (Ampere) and newer, or ROCm. ``is_bf16_supported()``
    also counts the emulated bf16 of a T4 or V100, which runs slower than fp32 there."""
    if getattr(torch.version, "hip", None):
        return True
    return tuple(torch.cuda.get_device_capability(index)) >= (8, 0)


def resolve_bf16(setting, device: str, cpu: dict | None = None) -> bool:
    """``bf16: auto`` -> native support of the device; ``true``/``false`` as given."""
    if setting == "auto":
        return native_bf16(device, cpu)
    return bool(setting)


def int8_reduce_range(setting, cpu: dict | None = None) -> bool:
    """``reduce_range``: 7-bit int8 weights or not. ``true`` (the default: a bundle may run on any CPU) and
    ``false`` as given; ``auto`` -> this CPU decides: 7 bits on x86 without VNNI, where u8s8 sums can saturate."""
    if setting == "auto":
        c = cpu or cpu_profile()
        return c["arch"] == "x86_64" and not c["vnni"]
    return bool(setting)


def bf16_cost(p: dict) -> str:
    """What bf16 autocast costs on a CPU without native bf16, measured for its class (the class PyTorch is
    capped to, where it is)."""
    isa = p.get("torch_isa") or p.get("isa") or ""
    if "AVX-512" in isa:
        return (
            "PyTorch's bf16 autocast there runs through oneDNN's AVX-512 emulation: measured 2.1 s per training "
            "step against 0.94 s in fp32 (MiniLM-L6, batch 32 x 64, 2 cores of a CPU masked to AVX-512 by "
            "scripts/as-cpu.sh)"
        )
    return (
        "PyTorch's bf16 autocast there falls back to a scalar path: measured 35-36 s per training step against "
        "1.1-1.5 s in fp32 (MiniLM-L6, batch 32 x 64, 2 cores of an AVX2 CPU)"
    )


# distribution names per library (the GPU build of ONNX Runtime is another distribution)
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnx": ("onnx",),
    "torch_pruning": ("torch-pruning",),
    "tokenizers": ("tokenizers",),
    "numpy": ("numpy",),
}
RUNTIME_LIBRARIES = ("onnxruntime", "onnx", "tokenizers", "numpy")  # what a deploy bundle is written and run with
RESULT_LIBRARIES = ("torch", "transformers", "onnxruntime", "onnx", "torch_pruning")  # what can change a run's numbers


def versions(libraries=RESULT_LIBRARIES) -> dict[str, str | None]:
    """compresstune's, each library's (None where it is not installed) and Python's version, read from the
    installed distributions' metadata (nothing is imported). The one record of versions that manifest.json,
    report.json, model artifacts and deploy bundles keep."""
    import compresstune

    out: dict[str, str | None] = {"compresstune": compresstune.__version__}
    for key in libraries:
        out[key] = _installed_version(key)
    out["python"] = platform.python_version()
    return out


def _installed_version(key: str) -> str | None:
    """The version of the distribution that holds the module ``key`` as imported, where it is imported: two
    distributions can hold one module (onnxruntime and onnxruntime-gpu, in two folders on the path), and a
    module's own ``__version__`` can lag its release (torch_pruning 1.6.1 says 1.6.0)."""
    import importlib.metadata

    module_file = getattr(sys.modules.get(key), "__file__", None)
    where = Path(module_file).resolve().parent.parent if module_file else None
    first = None
    for dist in _DISTRIBUTIONS[key]:
        try:
            d = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        if where is None or Path(str(d.locate_file(""))).resolve() == where:
            return d.version
        first = first or d.version
    return first
