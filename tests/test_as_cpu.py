"""scripts/as-cpu.sh: a process made to see a smaller x86 CPU class through CPUID faulting.

These run only where the kernel offers CPUID faulting (``cpuid_fault``) and a C compiler is there; elsewhere
the script must refuse, saying why (tested wherever it cannot run)."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_pipeline

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "as-cpu.sh"


def _host_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


FLAGS = _host_flags()
CAN = (
    sys.platform == "linux"
    and platform.machine() == "x86_64"
    and "cpuid_fault" in FLAGS
    and shutil.which(os.environ.get("CC", "cc")) is not None
)
needs_masking = pytest.mark.skipif(not CAN, reason="no CPUID faulting (cpuid_fault) or no C compiler here")


def _env(tmp_path, **more):
    """This process's environment with the shim built into ``tmp_path`` (and ``more`` set)."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **more}


def _run(args, tmp_path, code=None, timeout=300):
    env = _env(tmp_path)
    cmd = ["bash", str(SCRIPT), *args]
    if code is not None:
        cmd += ["--", sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


PROBE = """
import json, numpy, torch
from compresstune import machine
f = numpy._core._multiarray_umath.__cpu_features__
p = machine.profile()
print(json.dumps({"numpy": {k: bool(f.get(k)) for k in ("AVX2", "AVX512F", "AVX512VNNI", "AVX512BF16")},
                  "torch": torch.backends.cpu.get_cpu_capability(), "isa": p["isa"], "vnni": p["vnni"],
                  "bf16": p["native_bf16"], "mkldnn_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported()}))
"""


# class, the host flag it needs, what NumPy / torch / the profile must then say. torch counts oneDNN's AVX-512
# emulation of bf16 as support (mkldnn_bf16); the profile does not (2.2x slower than fp32, docs/RESULTS.md).
CLASSES = [
    (
        "avx2",
        "avx2",
        {"AVX2": True, "AVX512F": False, "AVX512VNNI": False, "AVX512BF16": False},
        {"torch": "AVX2", "isa": "x86-64 AVX2", "vnni": False, "bf16": False, "mkldnn_bf16": False},
    ),
    (
        "avx512-vnni",
        "avx512_vnni",
        {"AVX2": True, "AVX512F": True, "AVX512VNNI": True, "AVX512BF16": False},
        {"torch": "AVX512", "isa": "x86-64 AVX-512 VNNI", "vnni": True, "bf16": False, "mkldnn_bf16": True},
    ),
]


@needs_masking
@pytest.mark.parametrize("cls, needs, numpy_sees, rest", CLASSES, ids=[c[0] for c in CLASSES])
def test_the_class_is_what_numpy_torch_and_the_profile_see(tmp_path, cls, needs, numpy_sees, rest):
    import json

    if needs not in FLAGS:
        pytest.skip(f"the host has no {needs} to keep")
    r = _run([cls], tmp_path, PROBE)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got.pop("numpy") == numpy_sees
    assert got == rest


@needs_masking
def test_a_real_crash_still_crashes_and_faulthandler_still_speaks(tmp_path):
    code = "import faulthandler, ctypes; faulthandler.enable(); ctypes.string_at(0)"
    r = _run(["avx2"], tmp_path, code, timeout=60)
    assert r.returncode in (-signal.SIGSEGV, 128 + signal.SIGSEGV), (r.returncode, r.stderr)
    assert "Fatal Python error: Segmentation fault" in r.stderr


@needs_masking
def test_children_see_the_class_too(tmp_path):
    # execve resets CPUID faulting; the child loads the shim again through LD_PRELOAD
    code = (
        "import subprocess, sys; print(subprocess.run([sys.executable, '-c', "
        "'import numpy; print(numpy._core._multiarray_umath.__cpu_features__[\"AVX512F\"])'],"
        " capture_output=True, text=True).stdout.strip())"
    )
    r = _run(["avx2"], tmp_path, code, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@needs_masking
def test_check_says_it_works(tmp_path):
    r = _run(["check"], tmp_path)
    assert r.returncode == 0 and "works here" in r.stdout


@pytest.mark.parametrize("args", [[], ["avx9"], ["avx2"], ["avx2", "--"]])
def test_bad_use_exits_2_with_the_usage(tmp_path, args):
    r = _run(args, tmp_path)
    assert r.returncode == 2
    assert "usage: bash scripts/as-cpu.sh" in r.stderr or "cpuid_fault" in r.stderr or "x86-64" in r.stderr


@pytest.mark.skipif(CAN, reason="this machine can mask CPUID; the refusal is for one that cannot")
def test_refuses_where_cpuid_cannot_be_masked(tmp_path):
    r = _run(["avx2"], tmp_path, "print('ran')")
    assert r.returncode == 2 and "ran" not in r.stdout
    assert "cpuid_fault" in r.stderr or "x86-64" in r.stderr or "compiler" in r.stderr


@needs_masking
@pytest.mark.skipif("avx2" not in FLAGS, reason="the host has no AVX2 to keep")
def test_bf16_true_is_refused_on_a_masked_avx2_cpu_without_faking_anything(tmp_path):
    # the real detection path (CPUID -> NumPy -> machine profile -> bf16 decision), nothing patched
    quickstart = str(ROOT / "pipelines" / "quickstart.yaml")
    cli = [sys.executable, "-m", "compresstune.cli", "pipeline", "validate", quickstart]
    env = _env(tmp_path)
    refused = subprocess.run(
        ["bash", str(SCRIPT), "avx2", "--", *cli, "finetune.bf16=true"], capture_output=True, text=True, env=env
    )
    assert refused.returncode == 2, refused.stderr
    assert "bf16" in refused.stderr and "x86-64 AVX2" in refused.stderr
    fine = subprocess.run(["bash", str(SCRIPT), "avx2", "--", *cli], capture_output=True, text=True, env=env)
    assert fine.returncode == 0, fine.stderr


@needs_masking
@pytest.mark.skipif("avx2" not in FLAGS, reason="the host has no AVX2 to keep")
def test_a_whole_pipeline_as_an_avx2_cpu_and_its_bundle_back_on_this_one(tiny_bert, glue_dir, tmp_path):
    """End to end with nothing faked: `bf16: auto` trains in fp32, int8 is verified on ONNX Runtime's AVX2
    kernels, report and bundle name the class, and the bundle passes `verify` on this (unmasked) machine."""
    import json

    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)  # finetune.bf16 left at its default, auto
    env = _env(tmp_path)
    cli = [sys.executable, "-m", "compresstune.cli"]
    out = tmp_path / "runs"
    r = subprocess.run(
        ["bash", str(SCRIPT), "avx2", "--", *cli, "pipeline", "run", str(p), "--output-dir", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "precision: fp32 (this device has no native bf16)" in log and "x86-64 AVX2" in log
    run = out / "t"
    report = json.loads((run / "report.json").read_text())
    assert "x86-64 AVX2" in json.dumps(report)
    assert json.loads((run / "deploy" / "verify.json").read_text())["made_on"]["isa"] == "x86-64 AVX2"
    back = subprocess.run([*cli, "verify", str(run / "deploy")], capture_output=True, text=True, env=env)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "built on:" in back.stdout and "x86-64 AVX2" in back.stdout


@needs_masking
@pytest.mark.parametrize(
    "code, rc, out",
    [
        # a SIGSEGV sent by kill() ends the process as it would unmasked (it is not a CPUID to answer)
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV); print('survived')", -signal.SIGSEGV, ""),
        # the program's own handler gets a sent SIGSEGV, and CPUID is still answered afterwards
        (
            "import os, signal; signal.signal(signal.SIGSEGV, lambda *a: print('handled'));"
            " os.kill(os.getpid(), signal.SIGSEGV); import numpy;"
            " print(numpy._core._multiarray_umath.__cpu_features__['AVX512F'])",
            0,
            "handled\nFalse",
        ),
        # a thread that blocks SIGSEGV (thread pools block everything) still gets its CPUID answered
        (
            "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGSEGV]); import numpy;"
            " print(numpy._core._multiarray_umath.__cpu_features__['AVX512F'])",
            0,
            "False",
        ),
    ],
)
def test_the_programs_own_sigsegv_handling_is_kept(tmp_path, code, rc, out):
    r = _run(["avx2"], tmp_path, code, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (rc, out), r.stderr


@needs_masking
def test_a_cache_path_that_ld_so_would_split_is_not_used(tmp_path):
    # LD_PRELOAD splits at spaces and colons: such a path would load nothing and run unmasked, silently
    env = _env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "my cache:x"), TMPDIR=str(tmp_path))
    code = "import numpy; print(numpy._core._multiarray_umath.__cpu_features__['AVX512F'])"
    r = subprocess.run(
        ["bash", str(SCRIPT), "avx2", "--", sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


@needs_masking
def test_nested_classes_leave_one_glibc_setting_the_inner_ones(tmp_path):
    env = _env(tmp_path, GLIBC_TUNABLES="glibc.malloc.check=0")
    code = "import os; print(os.environ['GLIBC_TUNABLES'])"
    cmd = ["bash", str(SCRIPT), "avx512-vnni", "--", "bash", str(SCRIPT), "avx2", "--", sys.executable, "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    tunables = r.stdout.strip().split(":")
    assert tunables[0] == "glibc.malloc.check=0"
    assert [t for t in tunables if t.startswith("glibc.cpu.hwcaps=")] == [tunables[-1]] and "-AVX512F" in tunables[-1]
