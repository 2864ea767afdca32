"""Right on the hardware it runs on: the machine profile, bf16 only where it is native, int8 settings per
instruction-set class, GPU ship decisions made on GPU timings (faked on CPU: CI has no GPU), and the GPU
check script failing loudly where there is no GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import write_pipeline

from compresstune import machine
from compresstune.cli import main

REPO = Path(__file__).resolve().parent.parent

AVX2 = {"avx", "avx2", "fma", "f16c", "sse4_2"}
AVX512_VNNI_BF16 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
AMX = AVX512_VNNI_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize(
    "flags, isa, vnni, bf16",
    [
        (AVX2, "x86-64 AVX2", False, False),
        (AVX2 | {"avx_vnni"}, "x86-64 AVX-VNNI", True, False),
        (AVX2 | {"avx512f"}, "x86-64 AVX-512", False, False),
        (AVX2 | {"avx512f", "avx512_vnni"}, "x86-64 AVX-512 VNNI", True, False),
        (AVX512_VNNI_BF16, "x86-64 AVX-512 VNNI+BF16", True, True),
        (AMX, "x86-64 AMX", True, True),
        ({"sse4_2"}, "x86-64 (no AVX2)", False, False),
    ],
)
def test_instruction_set_classes(flags, isa, vnni, bf16):
    p = machine.cpu_profile(flags, "x86_64")
    assert (p["isa"], p["vnni"], p["native_bf16"]) == (isa, vnni, bf16)
    assert machine.int8_reduce_range("auto", p) is (not vnni)
    assert machine.resolve_bf16("auto", "cpu", p) is bf16
    assert machine.resolve_bf16(True, "cpu", p) is True and machine.resolve_bf16(False, "cpu", p) is False


def test_arm_classes_and_env_caps():
    assert machine.isa_class("aarch64", {"asimd", "asimddp"}) == "arm64 NEON dot-product"
    assert machine.isa_class("aarch64", {"asimd", "sve", "bf16"}) == "arm64 SVE"
    assert machine.cpu_native_bf16("aarch64", {"asimd", "bf16"}) and not machine.has_vnni("aarch64", {"asimddp"})
    assert machine.int8_reduce_range("auto", machine.cpu_profile({"asimd"}, "aarch64")) is False
    # what PyTorch is told to use caps the profile (an AVX-512 machine run as an AVX2 one)
    capped = machine.effective_flags(AMX, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert machine.isa_class("x86_64", capped) == "x86-64 AVX2"
    assert machine.effective_flags(AMX, {"ONEDNN_MAX_CPU_ISA": "ALL"}) == AMX


@pytest.mark.parametrize(
    "env, isa, bf16",
    [
        ({"ONEDNN_MAX_CPU_ISA": "avx2"}, "x86-64 AVX2", False),  # any case, as oneDNN reads it
        ({"ONEDNN_MAX_CPU_ISA": "Avx2_Vnni"}, "x86-64 AVX-VNNI", False),
        ({"ONEDNN_MAX_CPU_ISA": " avx2 "}, "x86-64 AMX", True),  # oneDNN does not strip it: ignored (measured)
        ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, "x86-64 AVX-512 VNNI", False),  # the older name
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "x86-64 AVX-512 VNNI+BF16", True),
        # whole values only: these keep bf16 (oneDNN's fp16 and AVX10 levels include it) or are ignored by oneDNN
        ({"ONEDNN_MAX_CPU_ISA": "AVX10_1_512"}, "x86-64 AVX-512 VNNI+BF16", True),
        ({"ONEDNN_MAX_CPU_ISA": "avx512_core_fp16"}, "x86-64 AVX-512 VNNI+BF16", True),
        ({"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, "x86-64 AMX", True),
        ({"ONEDNN_MAX_CPU_ISA": "avx2_foo"}, "x86-64 AMX", True),
        ({"ONEDNN_MAX_CPU_ISA": "avxfoo"}, "x86-64 AMX", True),
        ({"ONEDNN_MAX_CPU_ISA": "DEFAULT"}, "x86-64 AMX", True),
        ({"ONEDNN_MAX_CPU_ISA": ""}, "x86-64 AMX", True),
        ({"ONEDNN_MAX_CPU_ISA": "garbage", "DNNL_MAX_CPU_ISA": "avx2"}, "x86-64 AMX", True),  # ONEDNN_ wins
        # ATen's capability caps only ATen's kernels: bf16 autocast stays native (measured), whatever its case
        ({"ATEN_CPU_CAPABILITY": "avx2"}, "x86-64 AMX", True),
        ({"ATEN_CPU_CAPABILITY": "default"}, "x86-64 AMX", True),
        ({"ATEN_CPU_CAPABILITY": "AVX2"}, "x86-64 AMX", True),
    ],
)
def test_onednn_isa_caps_are_read_as_onednn_reads_them(env, isa, bf16):
    sapphire_rapids = AMX | {"avx_vnni"}
    flags = machine.effective_flags(sapphire_rapids, env)
    assert (machine.isa_class("x86_64", flags), machine.cpu_native_bf16("x86_64", flags)) == (isa, bf16)
    assert (machine.onednn_cap(env) is None) == (flags == sapphire_rapids)


def test_the_process_cpuid_view_corrects_the_os_list():
    """Under QEMU user mode (or Rosetta) /proc/cpuinfo describes the host while the kernels dispatch on the
    emulated CPUID: NumPy's runtime view of the process decides what it names."""
    qemu_avx2 = {"AVX2": True, "FMA3": True, "AVX512F": False, "AVX512VNNI": False, "AVX512BF16": False}
    seen = machine.process_flags(AMX, qemu_avx2)
    assert machine.isa_class("x86_64", seen) == "x86-64 AVX2"
    assert not machine.has_vnni("x86_64", seen) and not machine.cpu_native_bf16("x86_64", seen)
    # nothing from the OS (Windows without py-cpuinfo): NumPy's view alone
    alone = machine.process_flags(set(), {"AVX2": True, "FMA3": True, "AVX512F": True, "AVX512VNNI": True})
    assert machine.isa_class("x86_64", alone) == "x86-64 AVX-512 VNNI"
    # features NumPy does not name keep the OS's word while their family stands
    assert machine.process_flags(AVX2 | {"avx_vnni"}, {"AVX2": True, "AVX512F": False}) >= {"avx_vnni", "avx2"}
    assert "avx_vnni" not in machine.process_flags(AVX2 | {"avx_vnni"}, {"AVX2": False})
    assert machine.process_flags(AMX, {}) == AMX  # NumPy says nothing: the OS's list stands
    # once the OS lists a feature the process cannot use, it describes another CPU: features NumPy does not name
    # (AVX-VNNI, AMX; Arm SVE2, BF16) go too (an AVX-VNNI host run as an AVX2 CPU is not a VNNI machine)
    seen = machine.process_flags(AMX | {"avx_vnni"}, qemu_avx2)
    assert not machine.has_vnni("x86_64", seen) and machine.isa_class("x86_64", seen) == "x86-64 AVX2"
    arm = machine.process_flags(
        {"asimd", "asimddp", "sve", "sve2", "bf16"}, {"ASIMD": True, "ASIMDDP": True, "SVE": False}
    )
    assert machine.isa_class("aarch64", arm) == "arm64 NEON dot-product" and not machine.cpu_native_bf16("aarch64", arm)
    # this machine's NumPy names the features the profile's classes are made of
    if machine.arch() == "x86_64":
        assert {"AVX2", "AVX512F", "AVX512VNNI", "AVX512BF16"} <= set(machine._runtime_features())


def test_profile_of_this_machine_describes_it():
    p = machine.profile()
    assert p["isa"] and p["logical_cores"] and p["onnxruntime"]["providers"]
    line = machine.describe(p)
    assert p["isa"] in line and "logical cores" in line


def _fake_cpu(monkeypatch, flags):
    real = machine.cpu_profile
    monkeypatch.setattr(machine, "cpu_profile", lambda f=None, a=None: real(flags if f is None else f, "x86_64"))


def test_bf16_true_refused_on_a_cpu_without_native_bf16(monkeypatch, tiny_bert, glue_dir, tmp_path):
    """`pipeline validate` and `pipeline run` exit 2 before any work, with the measured cost and the fix."""
    _fake_cpu(monkeypatch, AVX2)
    monkeypatch.chdir(tmp_path)
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    for cmd in (["pipeline", "validate"], ["pipeline", "run"]):
        r = CliRunner().invoke(main, [*cmd, str(p), "finetune.bf16=true"])
        assert r.exit_code == 2, r.output
        assert "finetune.bf16: true" in r.output and "x86-64 AVX2" in r.output and "bf16=auto" in r.output
        assert "35-36 s per training step" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "exported").exists() or not any((tmp_path / "exported").rglob("model"))
    r = CliRunner().invoke(main, ["pipeline", "validate", str(p), "finetune.bf16=auto"])
    assert r.exit_code == 0, r.output


def test_bf16_cost_is_the_one_measured_for_the_class():
    """AVX-512 without BF16 emulates bf16 through oneDNN (2.2x slower than fp32); AVX2 takes the scalar path
    (20-30x): the refusal quotes the figure of the class PyTorch runs on, the capped one where it is capped."""
    avx512 = machine.cpu_profile(AVX2 | {"avx512f", "avx512_vnni"}, "x86_64")
    assert "oneDNN's AVX-512 emulation" in machine.bf16_cost(avx512) and "2.1 s" in machine.bf16_cost(avx512)
    assert "scalar path" in machine.bf16_cost(machine.cpu_profile(AVX2, "x86_64"))
    capped = {**machine.cpu_profile(AMX, "x86_64"), "torch_isa": "x86-64 AVX2"}
    assert "scalar path" in machine.bf16_cost(capped)


def test_bf16_refusal_names_the_cap_and_only_real_caps_refuse(monkeypatch, tiny_bert, glue_dir, tmp_path):
    """On a bf16 CPU run with oneDNN capped to AVX2, `bf16: true` is refused naming the variable to unset (not
    "this AMX CPU has no bf16"); caps that keep bf16, ATen's capability and values oneDNN ignores refuse nothing.
    With device=cuda and no GPU, only the device is named, not a GPU's bf16."""
    monkeypatch.setattr(machine, "raw_cpu", lambda: ("GenuineIntel", "Intel Xeon", AMX | {"avx_vnni"}))
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(var, raising=False)
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)

    def validate(*args):
        return CliRunner().invoke(main, ["pipeline", "validate", str(p), *args])

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx2")  # the older name would cap it once ONEDNN_'s is unset
    r = validate("finetune.bf16=true", "device=cpu")
    assert r.exit_code == 2 and "ONEDNN_MAX_CPU_ISA=avx2" in r.output, r.output
    assert "unset ONEDNN_MAX_CPU_ISA and DNNL_MAX_CPU_ISA" in r.output, r.output
    monkeypatch.delenv("DNNL_MAX_CPU_ISA")
    assert "x86-64 AMX" in r.output and "capped to x86-64 AVX2" in r.output
    for var, value in (("ONEDNN_MAX_CPU_ISA", "AVX10_1_512"), ("ONEDNN_MAX_CPU_ISA", "avx2_foo")):
        monkeypatch.setenv(var, value)
        assert validate("finetune.bf16=true", "device=cpu").exit_code == 0
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert validate("finetune.bf16=true", "device=cpu").exit_code == 0
    if not __import__("torch").cuda.is_available():
        r = validate("finetune.bf16=true", "device=cuda")
        assert r.exit_code == 2 and "no CUDA GPU is visible" in r.output and "1 problem found" in r.output, r.output


def test_bf16_auto_resolves_into_the_fingerprint(monkeypatch, tiny_bert, glue_dir, tmp_path):
    """The resolved precision, not the word auto, enters the fingerprint: on a bf16 CPU auto == true (old
    fingerprints of `bf16: true` runs hold), on an AVX2 CPU auto == false."""
    from compresstune.config import load_config
    from compresstune.pipeline.fingerprint import stage_fingerprints
    from compresstune.stages.base import STAGES

    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)

    def fp(flags, *over):
        _fake_cpu(monkeypatch, flags)
        return stage_fingerprints(load_config(p, ["device=cpu", *over]), lambda t: STAGES[t])["finetune"]

    assert fp(AVX512_VNNI_BF16, "finetune.bf16=auto") == fp(AVX512_VNNI_BF16, "finetune.bf16=true")
    assert fp(AVX2, "finetune.bf16=auto") == fp(AVX2, "finetune.bf16=false")
    assert fp(AVX2, "finetune.bf16=auto") != fp(AVX512_VNNI_BF16, "finetune.bf16=auto")

    # int8 reduce_range: on by default on every CPU (the same file everywhere); auto resolves on this CPU, on only
    # where it lacks VNNI; off leaves the fingerprint of exports made before the setting existed
    # (both CPUs without bf16, so the finetune stage under the export is the same)
    def export_fp(flags, *over):
        _fake_cpu(monkeypatch, flags)
        return stage_fingerprints(load_config(p, ["device=cpu", *over]), lambda t: STAGES[t])["export"]

    vnni = AVX2 | {"avx_vnni"}
    assert export_fp(AVX2) == export_fp(vnni) == export_fp(vnni, "export.reduce_range=true")
    assert export_fp(AVX2, "export.reduce_range=auto") == export_fp(AVX2)
    assert (
        export_fp(vnni, "export.reduce_range=auto") == export_fp(vnni, "export.reduce_range=false") != export_fp(vnni)
    )


# --- GPU decisions on the GPU, with CUDA timings faked --------------------------------------------------------


def _stat(ms):
    return {"p50_ms": ms, "p90_ms": ms, "p99_ms": ms, "runs": 30, "rounds_p50_ms": [ms] * 4}


def _fake_gpu_run(tmp_path, fp16_passed=True, fp16_verified_on="cuda"):
    """A CUDA run's export and benchmark summaries made by the real benchmark code from faked timings."""
    from compresstune.config.results import Engine, result_of
    from compresstune.config.sections import BenchmarkConfig
    from compresstune.stages.benchmark import BenchmarkStage, ship_provider

    d = tmp_path / "02_export"
    d.mkdir()
    for name, mb in (("model.onnx", 4), ("model.optimized.onnx", 4), ("model.fp16.onnx", 2)):
        (d / name).write_bytes(b"\0" * (mb << 20))
    # at 1 x 128: on CUDA fp16 is fastest; on the CPU provider the fused fp32 graph is
    cuda = {"ort-cuda": 2.0, "ort-cuda:optimized": 1.5, "ort-cuda:fp16": 0.7, "torch-cuda": 5.0}
    cpu = {"ort-cpu": 20.0, "ort-cpu:optimized": 15.0, "torch-cpu": 40.0}
    stats = {(1, 128): {n: _stat(ms) for n, ms in {**cpu, **cuda}.items()}}
    cfg = BenchmarkConfig(shapes=[(1, 128)], footprint=False)
    ctx = SimpleNamespace(cfg=cfg, rel=lambda p: str(Path(p).relative_to(tmp_path)))
    stage = BenchmarkStage()
    stage._providers = lambda ctx: ["cpu", "cuda"]  # what `providers: auto` gives on a GPU machine
    engines = [SimpleNamespace(id=Engine.parse(n)) for n in stats[(1, 128)]]
    providers = ["cpu", "cuda"]
    prov = ship_provider(providers)
    refs = stage._references(None, prov, engines)
    variants = ["fp32", "optimized", "fp16"]
    bench = {
        "provider": prov,
        "references": refs,
        "variants": stage._variant_table(ctx, SimpleNamespace(dir=d), variants, stats, refs),
    }
    ver = {"passed": True, "dev": {"main": 90.0}, "gap_points": 0.0, "tolerance": 0.3, "size_mb": 4.0}
    export = {
        "variants": {
            "fp32": {**ver, "verified_on": "cuda"},
            "optimized": {**ver, "verified_on": "cuda"},
            "fp16": {**ver, "passed": fp16_passed, "verified_on": fp16_verified_on, "size_mb": 2.0},
        }
    }
    return result_of("export", export), result_of("benchmark", bench)


def test_gpu_run_ships_fp16_when_fastest_on_cuda_and_verified(tmp_path):
    from compresstune.stages.ship_rule import candidates, choose

    export, bench = _fake_gpu_run(tmp_path)
    assert bench.provider == "cuda" and bench.references.pytorch_eager.key == "torch-cuda"
    assert bench.variants["fp16"].engine.key == "ort-cuda:fp16"
    assert bench.variants["fp16"].at((1, 128)).speedup_vs_pytorch_eager == pytest.approx(5.0 / 0.7, 1e-3)
    d = choose(candidates(export, bench, (1, 128)), "fastest", (1, 128))
    assert d.chosen == "fp16" and d.provider == "cuda" and "cuda provider" in d.why


@pytest.mark.parametrize("passed, verified_on", [(False, "cuda"), (True, "cpu")])
def test_gpu_run_never_ships_fp16_unverified_on_cuda(tmp_path, passed, verified_on):
    from compresstune.stages.ship_rule import candidates, choose

    export, bench = _fake_gpu_run(tmp_path, fp16_passed=passed, fp16_verified_on=verified_on)
    d = choose(candidates(export, bench, (1, 128)), "fastest", (1, 128))
    assert d.chosen == "optimized" and d.provider == "cuda" and "fp16" in d.why


def test_cpu_run_still_decides_on_cpu_timings(tmp_path):
    from compresstune.stages.benchmark import ship_provider

    assert ship_provider(["cpu"]) == "cpu" and ship_provider(["cpu", "cuda"]) == "cuda"


# --- scripts/gpu-check.sh ------------------------------------------------------------------------------------


def _gpu_check(*args):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env['PATH']}"
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), *args],
        capture_output=True,
        text=True,
        env={**env, "COMPRESSTUNE_SKIP_SETUP": "1"},
        timeout=300,
        cwd=REPO,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_gpu_check_dry_run_validates_and_real_run_fails_loudly_without_a_gpu():
    import torch

    dry = _gpu_check("--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "gpu-check.yaml" in dry.stdout and "dry run" in dry.stdout
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real run is not a CPU test")
    real = _gpu_check()
    assert real.returncode != 0
    assert "no CUDA GPU" in real.stderr


def test_cuda_libraries_preloaded_quietly_for_the_torch_free_predictor(monkeypatch, capsys):
    """onnxruntime-gpu finds pip's CUDA/cuDNN only through preload_dlls when torch has not loaded them; that
    call prints, and `predict` writes results to stdout, so it must stay silent, and a failure must not raise."""
    import sys
    import types

    from compresstune.feeds import preload_cuda_libraries

    calls = []

    def preload():
        calls.append(1)
        print("Failed to load libcublasLt.so.13")
        raise RuntimeError("no such directory")

    fake = types.SimpleNamespace(preload_dlls=preload)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    preload_cuda_libraries(fake, "CUDAExecutionProvider")
    assert calls == [1] and capsys.readouterr().out == ""
    preload_cuda_libraries(
        types.SimpleNamespace(), "CUDAExecutionProvider"
    )  # onnxruntime older than 1.21: nothing to call
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    preload_cuda_libraries(fake, "CUDAExecutionProvider")  # torch imported: it loaded CUDA already
    assert calls == [1]


# --- scripts/gpu-kit.sh: the parts join into the packed kit, or it says which fix --------------------------


def _kit_checkout(tmp_path, python=None, contents=True, old_format=False):  # contents=False: CONTENTS dropped
    """A scratch checkout with scripts/gpu-kit.sh and a kit sealed by the script itself in parts of 1 KiB, packed
    for this Python unless ``python`` names another; ``old_format``: SHA256 holds only the whole kit's checksum,
    as kits sealed before the parts had their own."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu-kit.sh", root / "scripts")
    stage = root / ".gpukit" / "stage"
    (stage / "site" / "kitpkg").mkdir(parents=True)
    (stage / "site" / "kitpkg" / "__init__.py").write_text("X = 1\n")
    (stage / "site" / "kitpkg" / "blob").write_bytes(os.urandom(5000))  # incompressible: several parts
    (stage / "glue" / "SST-2").mkdir(parents=True)
    here = subprocess.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True)
    (stage / "CONTENTS").write_text(f"python {python or here.stdout.decode().strip()}\nkitpkg==1\n")
    r = _kit(root, "seal", ".gpukit/stage", "1K")
    assert r.returncode == 0 and not stage.exists(), r.stderr
    if not contents:  # a kit some other tool made: the same parts, a tarball without CONTENTS
        kit = root / ".gpukit"
        subprocess.run(
            "cat part-* | xz -d | tar --delete ./CONTENTS | xz > k && rm part-* SHA256", shell=True, cwd=kit, check=True
        )
        resealed = "split -b 1K -d -a 2 k part- && sha256sum part-* > SHA256 && mv k kit.tar.xz"
        subprocess.run(
            resealed + " && sha256sum kit.tar.xz >> SHA256 && rm kit.tar.xz", shell=True, cwd=kit, check=True
        )
    if old_format:
        sha = root / ".gpukit" / "SHA256"
        sha.write_text("".join(ln + "\n" for ln in sha.read_text().splitlines() if ln.endswith("kit.tar.xz")))
    return root


def _kit(root, *args):
    return subprocess.run(["bash", "scripts/gpu-kit.sh", *args], cwd=root, capture_output=True, text=True)


@pytest.mark.skipif(sys.platform != "linux" or not shutil.which("xz"), reason="bash, xz and coreutils")
def test_gpu_kit_installs_only_a_whole_kit(tmp_path):
    root = _kit_checkout(tmp_path)
    kit = root / ".gpukit"
    parts = sorted(kit.glob("part-*"))
    assert len(parts) >= 4 and [p.name for p in parts][:2] == ["part-00", "part-01"]
    ok = _kit(root, "install")
    assert ok.returncode == 0, ok.stderr
    assert (kit / "site" / "kitpkg" / "__init__.py").read_text() == "X = 1\n"
    assert "kitpkg==1" in ok.stdout and not (kit / "kit.tar.xz").exists() and not (kit / "new").exists()
    # leftovers of an older kit, or a browser's copy, are left out, not joined in
    (kit / "part-99").write_bytes(b"an older kit's part")
    (kit / "part-01 (1)").write_bytes(parts[1].read_bytes())
    extra = _kit(root, "install")
    assert extra.returncode == 0 and "left out: part-01 (1) part-99" in extra.stderr, extra.stderr
    # each bad part is named, whatever went wrong with it; the installed kit stays as it was
    parts[2].unlink()
    parts[3].write_bytes(parts[3].read_bytes()[:-10])
    bad = _kit(root, "install")
    assert bad.returncode == 2 and "part-02 is missing" in bad.stderr and "part-03 is not the part packed" in bad.stderr
    assert "send those parts again" in bad.stderr and (kit / "site" / "kitpkg").is_dir()
    parts[2].mkdir()
    assert "part-02 is missing or not a file" in _kit(root, "install").stderr
    assert not (kit / "kit.tar.xz").exists()  # nothing half-joined left behind
    (kit / "SHA256").unlink()
    assert "send the whole .gpukit" in _kit(root, "install").stderr


@pytest.mark.skipif(sys.platform != "linux" or not shutil.which("xz"), reason="bash, xz and coreutils")
def test_gpu_kit_of_the_older_format_and_kits_that_are_not_kits(tmp_path):
    root = _kit_checkout(tmp_path / "a", old_format=True)
    assert _kit(root, "install").returncode == 0
    (root / ".gpukit" / "part-01").unlink()
    lost = _kit(root, "install")
    assert lost.returncode == 2 and "do not join" in lost.stderr
    root = _kit_checkout(tmp_path / "b", contents=False)
    r = _kit(root, "install")
    assert r.returncode == 2 and "no kit that 'bash scripts/gpu-kit.sh pack' wrote" in r.stderr, r.stderr
    assert _kit(root, "install", "now").returncode == 2


@pytest.mark.skipif(sys.platform != "linux" or not shutil.which("xz"), reason="bash, xz and coreutils")
def test_gpu_kit_seal_checks_everything_before_the_stage_goes(tmp_path):
    """seal deletes its stage once sealed, so a wrong size, a folder that is no stage, a folder that already holds
    a kit, or a relative path (taken from where the user stands, not the checkout) must change nothing."""
    root = _kit_checkout(tmp_path / "a")
    for name in ("stage", "notes"):
        (tmp_path / "work" / name / "site").mkdir(parents=True)
    (tmp_path / "work" / "stage" / "CONTENTS").write_text("python 3.12\n")
    (tmp_path / "work" / "notes" / "site" / "mine.txt").write_text("keep me")
    (tmp_path / "work" / "notes" / "site").rename(tmp_path / "work" / "notes" / "keep")

    def seal(*args):
        cmd = ["bash", str(root / "scripts" / "gpu-kit.sh"), "seal", *args]
        return subprocess.run(cmd, cwd=tmp_path / "work", capture_output=True, text=True)

    for size in ("abc", "0", "-1", "1.5K", ""):
        r = seal("stage", size)
        assert r.returncode == 2 and "SIZE must be" in r.stderr, (size, r.stderr)
    r = seal("notes", "1K")
    assert r.returncode == 2 and "not a kit stage" in r.stderr and (tmp_path / "work" / "notes" / "keep").is_dir()
    r = seal(str(root / ".gpukit" / "again"), "1K")  # no such folder
    assert r.returncode == 2 and "is not a folder" in r.stderr
    shutil.copytree(tmp_path / "work" / "stage", root / ".gpukit" / "stage")
    r = subprocess.run(
        ["bash", "scripts/gpu-kit.sh", "seal", ".gpukit/stage", "1K"], cwd=root, capture_output=True, text=True
    )
    assert r.returncode == 2 and "already holds a kit's parts" in r.stderr and (root / ".gpukit" / "stage").is_dir()
    for leftover in ("part-07", "SHA256"):  # either alone is enough to refuse
        (tmp_path / "work" / leftover).write_text("from an older kit")
        r = seal("stage", "1K")
        assert r.returncode == 2 and "already holds" in r.stderr and (tmp_path / "work" / "stage").is_dir()
        (tmp_path / "work" / leftover).unlink()
    assert (tmp_path / "work" / "stage").is_dir() and not (tmp_path / "work" / "SHA256").exists()
    r = seal("stage", "1K")  # relative to where the user stands
    assert r.returncode == 0 and (tmp_path / "work" / "SHA256").is_file() and not (tmp_path / "work" / "stage").exists()


@pytest.mark.skipif(sys.platform != "linux" or not shutil.which("xz"), reason="bash, xz and coreutils")
def test_gpu_kit_refuses_a_kit_packed_for_another_python(tmp_path):
    root = _kit_checkout(tmp_path, python="2.7")
    r = _kit(root, "install")
    assert r.returncode == 2 and "packed for Python 2.7" in r.stderr and "KIT_PY=" in r.stderr
    assert not (root / ".gpukit" / "site").exists()
    # over a kit installed before, it leaves that one working
    (root / ".gpukit" / "site" / "kitpkg").mkdir(parents=True)
    r = _kit(root, "install")
    assert r.returncode == 2 and (root / ".gpukit" / "site" / "kitpkg").is_dir()


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_gpu_kit_and_gpu_check_refuse_bad_arguments(tmp_path):
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu-kit.sh", root / "scripts")
    for args, says in (
        (["pack", "0"], "whole number of MiB"),
        (["pack", "lots"], "whole number of MiB"),
        (["pack", "99999999999999999999"], "from 1 to 9999"),
        (["pack", "60", "more"], "usage"),
        (["seal", "nowhere", "1K"], "is not a folder"),
        (["run"], "install' first"),
        (["unpack"], "usage"),
    ):
        r = _kit(root, *args)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)
    # pack takes every version from the .venv: one that lacks a package is named before anything is fetched
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").write_text('#!/bin/sh\nexec python3 -S "$@"\n')  # no site-packages
    (root / ".venv" / "bin" / "python").chmod(0o755)
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text("sentence\tlabel\n")
    env = {**os.environ, "COMPRESSTUNE_GLUE_DIR": str(tmp_path / "glue")}
    r = subprocess.run(["bash", "scripts/gpu-kit.sh", "pack"], cwd=root, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "lacks transformers" in r.stderr and not (root / ".gpukit").exists(), r.stderr
    bad = _gpu_check("--dry-run", "not-an-override")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    override = _gpu_check("--dry-run", "task.max_length=64")
    assert override.returncode == 0, override.stdout + override.stderr
    for moves in ("name=other", "output_dir=/tmp", "--run-name=x", "--output-dir=/tmp"):  # the table reads its own
        r = _gpu_check("--dry-run", moves)
        assert r.returncode == 2 and "exported/gpu-check" in r.stderr, (moves, r.stderr)


def test_cuda_bf16_counts_only_hardware_bf16_and_versions_name_the_running_module(monkeypatch, tmp_path):
    """A T4 or V100 'supports' bf16 by emulation, slower than fp32 there: `bf16: auto` must not pick it. And
    with onnxruntime (CPU) and onnxruntime-gpu both installed, the version recorded is the module's that runs."""
    import importlib.metadata
    import types

    import torch_pruning

    def fake_torch(*capabilities):  # one GPU per capability; is_bf16_supported() says yes for all, as torch does
        cuda = types.SimpleNamespace(
            is_available=lambda: True,
            get_device_capability=lambda index=0: capabilities[index],
            is_bf16_supported=lambda including_emulation=True: True,
        )
        return types.SimpleNamespace(cuda=cuda, version=types.SimpleNamespace(hip=None))

    monkeypatch.setitem(sys.modules, "torch", fake_torch((7, 5), (8, 0)))  # a T4, then an A100
    assert not machine.native_bf16("cuda") and not machine.native_bf16("cuda:0") and machine.native_bf16("cuda:1")
    monkeypatch.setitem(sys.modules, "torch", fake_torch((9, 0)))
    assert machine.native_bf16("cuda")
    installed = machine.versions(("onnxruntime",))["onnxruntime"]
    # onnxruntime-gpu unpacked in a folder first on the path, the CPU onnxruntime still installed behind it
    site = tmp_path / "kit-site"
    (site / "onnxruntime").mkdir(parents=True)
    (site / "onnxruntime" / "__init__.py").write_text("__version__ = '9.9.9'\n")
    (site / "onnxruntime_gpu-9.9.9.dist-info").mkdir()
    (site / "onnxruntime_gpu-9.9.9.dist-info" / "METADATA").write_text("Name: onnxruntime-gpu\nVersion: 9.9.9\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(__file__=str(site / "onnxruntime" / "x.py")))
    assert installed != "9.9.9" and machine.versions(("onnxruntime",))["onnxruntime"] == "9.9.9"
    monkeypatch.setitem(sys.modules, "torch_pruning", torch_pruning)  # its __version__ lags: the metadata counts
    assert machine.versions(("torch_pruning",))["torch_pruning"] == importlib.metadata.version("torch-pruning")


def test_a_bundle_verified_on_cuda_names_the_gpu(monkeypatch):
    from compresstune.deploy import verify
    from compresstune.stages.ship import verified_on_line

    gpu = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_gb": 79.1, "bf16": True}
    prof = {"cpu": "AMD EPYC", "logical_cores": 16, "isa": "x86-64 AVX-512 VNNI+BF16", "features": [], "gpu": gpu}
    monkeypatch.setattr(verify, "profile", lambda: prof)
    cuda, cpu = verify.machine_record("cuda"), verify.machine_record("cpu")
    assert cuda["gpu"] == "NVIDIA H100 80GB HBM3 (cc 9.0, 79.1 GB)" and "gpu" not in cpu
    line = verified_on_line("fp16", {**cuda, "onnxruntime": "1.31.1"})
    assert line.startswith("fp16 verified on: NVIDIA H100 80GB HBM3 (cc 9.0, 79.1 GB), onnxruntime 1.31.1, CUDA")
    assert "AMD EPYC, 16 logical cores, x86-64 AVX-512 VNNI+BF16" in line
    assert verified_on_line("fp32", {**cpu, "onnxruntime": "1.32.0"}).startswith(
        "fp32 verified on: x86-64 AVX-512 VNNI+BF16, onnxruntime 1.32.0, CPU provider (AMD EPYC, 16 logical cores)."
    )


def test_every_onnx_timing_on_cuda_keeps_inputs_and_outputs_on_the_gpu(monkeypatch):
    """The benchmark stage, `bench onnx` and the search time ONNX Runtime through one runner: on CUDA with
    I/O binding (no host-device copies, like PyTorch's timing there), every output bound on the device."""
    import numpy as np
    import onnxruntime as ort

    from compresstune.measure.compare import ort_timed_runner

    calls = []

    class Binding:
        def bind_ortvalue_input(self, name, value):
            calls.append(("in", name, value[1]))

        def bind_output(self, name, device):
            calls.append(("out", name, device))

    class Session:
        def get_inputs(self):
            return [SimpleNamespace(name="input_ids"), SimpleNamespace(name="attention_mask")]

        def get_outputs(self):
            return [SimpleNamespace(name="logits"), SimpleNamespace(name="pooled")]

        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            calls.append(("bound run",))

        def run(self, names, feed):
            calls.append(("run", sorted(feed)))

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(lambda v, device, index: (v, device)))
    feed = {k: np.zeros((1, 4), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    fn = ort_timed_runner(Session(), feed, "cuda")
    fn()
    assert sorted(calls[:-1]) == [
        ("in", "attention_mask", "cuda"),
        ("in", "input_ids", "cuda"),
        ("out", "logits", "cuda"),
        ("out", "pooled", "cuda"),
    ]
    assert calls[-1] == ("bound run",) and len(fn.keep) == 2
    calls.clear()
    ort_timed_runner(Session(), feed, "cpu")()
    assert calls == [("run", ["attention_mask", "input_ids"])]  # only the inputs the model takes


def test_report_stage_table_shows_gpu_memory_only_on_a_gpu_run():
    from compresstune.stages.report_md import stage_table

    def rec(stage_type, resources):
        result = SimpleNamespace(resources=resources) if resources is not None else None
        return SimpleNamespace(
            type=stage_type, wall_time_s=1.0, reused_from=None, peak_rss_mb=900.0, fingerprint="f", result=result
        )

    gpu_run = "\n".join(
        stage_table({"train": rec("finetune", {"cuda_peak_allocated_mb": 512.4}), "ship": rec("ship", None)})
    )
    assert "| peak RSS, host (MB) | GPU peak allocated (MB) |" in gpu_run
    assert "| 900 | 512 |" in gpu_run and "| 900 | - |" in gpu_run
    cpu_run = "\n".join(stage_table({"train": rec("finetune", {"peak_rss_mb": 900.0})}))
    assert "GPU peak" not in cpu_run and "| 900 | `f` |" in cpu_run


class _FakeDriver:
    """Stands in for libcuda.so.1: 80 GiB device with ``used`` MiB taken; records the context push/pop."""

    def __init__(self, used_mib, fail=None):
        self.used, self.fail, self.calls = used_mib, fail, []

    def _rc(self, name):
        self.calls.append(name)
        return 100 if name == self.fail else 0

    def cuInit(self, flags):
        return self._rc("cuInit")

    def cuDeviceGet(self, dev, ordinal):
        dev._obj.value = ordinal
        return self._rc("cuDeviceGet")

    def cuDevicePrimaryCtxRetain(self, ctx, dev):
        ctx._obj.value = 1234
        return self._rc("cuDevicePrimaryCtxRetain")

    def cuCtxPushCurrent_v2(self, ctx):
        return self._rc("cuCtxPushCurrent_v2")

    def cuCtxPopCurrent_v2(self, ctx):
        return self._rc("cuCtxPopCurrent_v2")

    def cuMemGetInfo_v2(self, free, total):
        total._obj.value = 80 * 2**30
        free._obj.value = 80 * 2**30 - self.used * 2**20
        return self._rc("cuMemGetInfo_v2")


def test_gpu_memory_of_the_footprint_probe_from_the_driver():
    """The probe's GPU figure (torch-free: the driver library through ctypes) is total - free of device 0 in the
    primary context, popped again after; None, not a number, where the driver or a call fails, and None on this
    CPU machine. CI has no GPU: the real driver is exercised by scripts/gpu-check.sh's footprint on a GPU."""
    from compresstune.feeds import cuda_device_used_mb

    drv = _FakeDriver(used_mib=1536)
    assert cuda_device_used_mb(drv) == 1536.0
    assert drv.calls[-1] == "cuCtxPopCurrent_v2" and drv.calls.count("cuCtxPushCurrent_v2") == 1
    for step in ("cuInit", "cuDevicePrimaryCtxRetain", "cuMemGetInfo_v2"):
        drv = _FakeDriver(used_mib=10, fail=step)
        assert cuda_device_used_mb(drv) is None
        assert ("cuCtxPushCurrent_v2" in drv.calls) == ("cuCtxPopCurrent_v2" in drv.calls)  # never left pushed
    assert cuda_device_used_mb(SimpleNamespace()) is None  # a library without the symbols
    if not Path("/dev/nvidia0").exists():
        assert cuda_device_used_mb() is None


def test_footprint_tables_add_gpu_memory_only_for_cuda_footprints():
    from compresstune.measure.compare import footprint_table

    cpu = [{"load_s": 0.2, "peak_rss_mb": 150.0}, None]
    assert footprint_table(cpu) == (["cold load (s)", "peak RSS, host (MB)"], [[0.2, 150.0], ["-", "-"]])
    heads, cells = footprint_table([{"load_s": 0.5, "peak_rss_mb": 900.0, "gpu_mb": 96.0}, None])
    assert heads[-1] == "GPU memory (MB)" and cells == [[0.5, 900.0, 96.0], ["-", "-", "-"]]
