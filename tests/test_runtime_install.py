"""The small runtime install, for real: a fresh venv (no system site packages) with compresstune and tokenizers
installed ``--no-deps`` plus onnxruntime and numpy (with their own few dependencies), in which torch,
transformers, click and onnx cannot be imported, runs ``compresstune-predict`` and ``compresstune-verify`` on a
bundle built here and prints exactly what the full install's ``compresstune predict`` / ``compresstune verify``
print.

The runtime packages are pinned to the versions of this environment (and their own dependencies
constrained to the versions here), so the install is reproducible and mostly served from pip's cache. A
failed install fails the test with pip's output. Needs the package index, as the rest of the install does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "click", "onnx")
SENTS = [
    "a gripping , funny film .",
    "dull and far too long",
    "the cast is great but the plot is thin",
    "it works .",
    "an utterly forgettable sequel that nobody asked for",
]
LONG = " ".join(["remarkably"] * 60)  # over the bundle's max_length: truncated, and counted on stderr


def _pin(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:  # the gpu extra: onnxruntime-gpu provides the onnxruntime module
        return f"{name}=={metadata.version(name + '-gpu')}"


def _constraints(path: Path) -> Path:
    """This environment's versions of everything (but compresstune), for the runtime packages' dependencies."""
    pins = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name and name.lower() != "compresstune" and "+" not in d.version:
            pins[name.lower()] = f"{name}=={d.version}"
    path.write_text("\n".join(sorted(pins.values())) + "\n")
    return path


def _clean_env() -> dict:
    """No PYTHONPATH, PYTHONHOME or VIRTUAL_ENV of this environment leaking into the fresh one."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _pip(py: Path, args: list[str], cwd: Path) -> str:
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_clean_env(),
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip install {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _du(folder: Path) -> tuple[int, dict[str, int]]:
    """Bytes on disk (as du) of ``folder`` and of each of its top-level entries."""
    per: dict[str, int] = {}
    for top in folder.iterdir():
        files = [top] if not top.is_dir() else [p for p in top.rglob("*") if not p.is_symlink()]
        per[top.name] = sum(p.lstat().st_blocks * 512 for p in files if p.is_file() or p.is_dir())
    return sum(per.values()), per


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> dict:
    """The fresh venv: its python and bin folder, the install time and its site-packages size."""
    tmp = tmp_path_factory.mktemp("runtime")
    t0 = time.perf_counter()
    src = tmp / "src"  # pip builds in the source folder (build/ there, whose stale files reach later wheels): a copy
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "compresstune", src / "compresstune", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=_clean_env())
    py = venv / "bin" / "python"
    # tokenizers --no-deps: its one dependency, huggingface_hub (with click, httpx, hf_xet, fsspec, ...), serves
    # Tokenizer.from_pretrained only; the Predictor reads the bundle's tokenizer.json with Tokenizer.from_file
    # in this order: pip checks the installed packages' dependencies after an install with them, so the other order
    # ends in an alarming (harmless) "ERROR: ... compresstune requires torch ..., which is not installed"
    log = _pip(py, [_pin("onnxruntime"), _pin("numpy"), "-c", str(_constraints(tmp / "constraints.txt"))], tmp)
    log += _pip(py, ["--no-deps", str(src), _pin("tokenizers")], tmp)
    assert "ERROR" not in log, log
    installed = time.perf_counter() - t0
    (site,) = (venv / "lib").glob("python3*/site-packages")
    total, per = _du(site)
    base = sum(
        v
        for k, v in per.items()
        if k.split("-")[0] in ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils")
    )
    downloads = re.findall(r"Downloading (\S+) \(([\d.]+ [kM]B)\)", log)
    print(
        f"\nruntime install: {installed:.1f} s; site-packages {total / 2**20:.1f} MiB on disk, "
        f"{(total - base) / 2**20:.1f} MiB without the venv's own pip/setuptools"
        + (f"; downloaded {', '.join(f'{f} ({s})' for f, s in downloads)}" if downloads else "; all from pip's cache")
    )
    for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {v / 2**20:7.1f} MiB  {k}")
    return {"py": py, "bin": venv / "bin", "cwd": tmp, "site": site}


def _run(cmd: list, cwd: Path, fresh: bool, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = _clean_env() if fresh else {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, input=stdin, timeout=120, check=False
    )


def _main_cli(*args) -> list:
    return [sys.executable, "-m", "compresstune.cli", *args]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bert) -> Path:
    """A tiny single-sentence bundle with a verification set, built with this (full) environment."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from compresstune.deploy.bundle import write_bundle
    from compresstune.deploy.verify import write_verification_set
    from compresstune.export.onnx import export_onnx

    tmp = tmp_path_factory.mktemp("runtime_bundle")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    with torch.no_grad():  # a random tiny model gives nearly the same logits for every input: spread them
        model.classifier.weight.mul_(300.0)
    onnx_path = export_onnx(model, tmp / "model.onnx", opset=17)
    cfg = {"name": "sst2", "label_names": ["negative", "positive"], "text_fields": ["sentence"], "max_length": 32}
    write_bundle(tmp / "bundle", onnx_path, tiny_bert, cfg, None, source_dir=tiny_bert)
    write_verification_set(tmp / "bundle", SENTS, n=len(SENTS), batch_size=2)
    return tmp / "bundle"


def test_the_runtime_install_has_no_torch_transformers_or_click(runtime):
    code = (
        "import importlib, json, sys\n"
        "out = {}\n"
        f"for m in {HEAVY!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "        out[m] = 'imported'\n"
        "    except ImportError:\n"
        "        out[m] = 'missing'\n"
        "import compresstune, compresstune.deploy.cli, compresstune.deploy.verify\n"
        "print(json.dumps({'heavy': out, 'file': compresstune.__file__, 'prefix': sys.prefix}))\n"
    )
    proc = _run([runtime["py"], "-c", code], runtime["cwd"], fresh=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["heavy"] == dict.fromkeys(HEAVY, "missing")
    assert Path(got["file"]).is_relative_to(runtime["site"])  # the installed copy, not the source tree
    assert Path(got["prefix"]) == runtime["py"].parent.parent


def test_deploy_cli_imports_nothing_heavy_beside_a_full_install():
    """Here every heavy package is installed: importing the runtime commands must still load none of them."""
    code = f"import sys, compresstune.deploy.cli\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    proc = _run([sys.executable, "-c", code], REPO, fresh=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_predict_in_the_runtime_install_equals_compresstune_predict(runtime, bundle, tmp_path):
    texts = [*SENTS, LONG]
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join([SENTS[0], "", *SENTS[1:]]) + "\n")
    cases = [
        (["predict", bundle, *texts], None),
        (["predict", bundle, SENTS[0], "--batch-size", "2", SENTS[1], "--threads", "1"], None),
        (["predict", bundle, "--file", inputs, "--batch-size", "3"], None),
        (["predict", bundle, "--file", "-"], "\n".join(SENTS)),
        (["predict", bundle], None),  # nothing to predict: error: ..., exit 2
        (["predict", tmp_path / "no-such-bundle", "x"], None),
    ]
    for args, stdin in cases:
        want = _run(_main_cli(*args), tmp_path, fresh=False, stdin=stdin)
        got = _run([runtime["bin"] / "compresstune-predict", *args[1:]], runtime["cwd"], fresh=True, stdin=stdin)
        assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr), args
    assert want.returncode == 2 and want.stderr.startswith("error: bundle ")
    first = _run(_main_cli(*cases[0][0]), tmp_path, fresh=False)
    assert first.returncode == 0 and len(first.stdout.splitlines()) == len(texts)
    assert "1 of 6 inputs were longer than max_length=32" in first.stderr
    for args in (["--threads", "0"], ["--provider", "tpu"], ["--batch-size", "x"]):  # usage: argparse's words, exit 2
        want = _run(_main_cli("predict", bundle, "x", *args), tmp_path, fresh=False)
        got = _run([runtime["bin"] / "compresstune-predict", bundle, "x", *args], runtime["cwd"], fresh=True)
        assert got.returncode == want.returncode == 2 and got.stdout == want.stdout == "", args
    got = _run([runtime["bin"] / "compresstune-predict", REPO / "README.md", "x"], runtime["cwd"], fresh=True)
    assert got.returncode == 2 and "is a file, not a bundle folder" in got.stderr


def test_verify_in_the_runtime_install_equals_compresstune_verify(runtime, bundle, tmp_path):
    for args in (["--json"], [], ["--max-median-diff", "nan"], ["--min-agreement", "1.5"]):
        want = _run(_main_cli("verify", bundle, *args), tmp_path, fresh=False)
        got = _run([runtime["bin"] / "compresstune-verify", bundle, *args], runtime["cwd"], fresh=True)
        assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr), args
        if args == ["--json"]:
            res = json.loads(got.stdout)
            assert got.returncode == 0 and res["passed"] and res["agreement"] == 1.0
            assert res["max_abs_logit_diff"] == 0.0 and res["examples"] == len(SENTS)
    assert want.returncode == 2 and want.stderr.startswith("error: --min-agreement")
