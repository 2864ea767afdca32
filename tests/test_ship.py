"""Deployment-grade output through the pipeline: every variant verified and timed, a stated rule picks
the one to ship, a failed variant is reported and never shipped, the deploy bundle runs through
`compresstune predict` without torch, and `bench onnx` times files back to back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_pipeline_in, write_pipeline

from compresstune.cli import main
from compresstune.config import load_config
from compresstune.config.results import Candidate
from compresstune.deploy.layout import load_config as bundle_config
from compresstune.deploy.layout import model_path
from compresstune.errors import ConfigError
from compresstune.stages.ship_rule import choose

REPO = Path(__file__).resolve().parent.parent


def _cand(v, passed=True, dev=90.0, p50=10.0, size=10.0):
    return Candidate(variant=v, passed=passed, dev=dev, p50_ms=p50, size_mb=size, gap_points=0.0, tolerance=1.0)


def test_rules_choose_among_verified_variants_only():
    cands = [
        _cand("fp32", p50=20, size=80, dev=90.0),
        _cand("optimized", p50=15, size=80, dev=90.0),
        _cand("int8_dynamic", p50=8, size=22, dev=89.4),
        _cand("int8_static", passed=False, p50=5, size=21, dev=80),
    ]
    # int8_static is faster but failed its verification
    assert choose(cands, "fastest", (1, 128)).chosen == "int8_dynamic"
    assert choose(cands, "smallest", (1, 128)).chosen == "int8_dynamic"
    assert choose(cands, "most_accurate", (1, 128)).chosen == "optimized"  # same metric as fp32, faster
    d = choose(cands, "fastest", (1, 128))
    assert "int8_static" in d.why and "lowest p50" in d.why
    none = choose([_cand("fp32", passed=False)], "fastest", (1, 128))
    assert none.chosen is None and "no variant" in none.why
    # a variant with no measured metric (an export recorded before variants were) is never shipped, by any rule
    unmeasured = _cand("fp32", dev=None)
    for rule in ("fastest", "smallest", "most_accurate"):
        assert choose([unmeasured], rule, (1, 128)).chosen is None


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, tiny_bert, glue_dir):
    """A tiny run whose int8_dynamic variant cannot be built: it is reported failed, the rest go on."""
    from dataclasses import replace

    from compresstune.export.variants import get_variant, register_variant

    d = tmp_path_factory.mktemp("ship")
    write_pipeline(d / "p.yaml", tiny_bert, glue_dir, extra="")
    real = get_variant("int8_dynamic")

    def broken(builder, dst):
        raise RuntimeError("simulated quantizer crash")

    register_variant(replace(real, build=broken))
    try:
        r = run_pipeline_in(d)
    finally:
        register_variant(real)
    assert r.exit_code == 0, r.output
    return d / "exported" / "t", r.output


def test_a_failed_variant_is_reported_and_never_shipped(shipped):
    run, out = shipped
    man = json.loads((run / "manifest.json").read_text())
    variants = man["stages"]["export"]["summary"]["variants"]
    assert (
        variants["int8_dynamic"]["passed"] is False and "simulated quantizer crash" in variants["int8_dynamic"]["error"]
    )
    assert variants["fp32"]["passed"] and variants["optimized"]["passed"]
    rep = json.loads((run / "report.json").read_text())
    assert rep["ship"]["chosen"] != "int8_dynamic" and rep["ship"]["chosen"] in variants
    assert "int8_dynamic" in rep["ship"]["why"]  # named as not eligible
    md = (run / "REPORT.md").read_text()
    assert "## Variants and the shipped model" in md and "simulated quantizer crash" in md
    timed = man["stages"]["benchmark"]["summary"]["variants"]
    assert "int8_dynamic" not in timed and set(timed) == {v for v, r in variants.items() if r["passed"]}
    for v in timed.values():
        assert v["footprint"]["peak_rss_mb"] > 0 and v["footprint"]["load_s"] > 0
        p = v["points"]["1x16"]
        assert p["runs"] >= 3 and p["speedup_vs_pytorch_eager"] > 0 and p["speedup_vs_onnx_fp32"] > 0


def test_the_bundle_runs_through_predict_without_torch(shipped):
    run, _ = shipped
    bundle = run / "deploy"
    cfg = bundle_config(bundle)
    rep = json.loads((run / "report.json").read_text())
    assert cfg["variant"] == rep["ship"]["chosen"] and cfg["text_fields"] == ["sentence"]
    assert (bundle / "edge" / (model_path(bundle).stem + ".ort")).is_file()
    assert (bundle / "README.md").read_text().startswith("---\n")  # the card's YAML header, then the card
    script = (
        "import sys\n"
        "from compresstune.cli import main\n"
        "try:\n"
        f"    main(['predict', {str(bundle)!r}, 'a gripping film', 'dull'], standalone_mode=False)\n"
        "finally:\n"
        "    print('IMPORTED', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "IMPORTED False False", r.stdout + r.stderr
    preds = [json.loads(x) for x in lines[:-1]]
    assert [p["index"] for p in preds] == [0, 1]
    assert all(p["label"] in ("negative", "positive") for p in preds)  # GLUE label names


def test_the_bundle_verifies_itself_without_torch(shipped, tmp_path):
    """`compresstune verify`: 100% on the machine that built the bundle, torch-free, the machine named in the bundle
    config, report.json and the card; a verification set that no longer matches exits 3; none at all exits 2."""
    import shutil

    from compresstune.machine import profile

    run, _ = shipped
    bundle = run / "deploy"
    cfg = bundle_config(bundle)
    isa = profile()["isa"]
    assert cfg["built_on"]["isa"] == isa and cfg["built_on"]["provider"] == "cpu"
    assert json.loads((run / "report.json").read_text())["machine"]["isa"] == isa
    card = (bundle / "README.md").read_text()
    assert f"verified on: {isa}" in card and "compresstune verify deploy" in card
    assert isa in (run / "REPORT.md").read_text()
    script = (
        "import sys\n"
        "from compresstune.cli import main\n"
        "try:\n"
        f"    main(['verify', {str(bundle)!r}, '--json'], standalone_mode=False)\n"
        "finally:\n"
        "    print('IMPORTED', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "IMPORTED False False", r.stdout + r.stderr
    res = json.loads(r.stdout[: r.stdout.rindex("IMPORTED")])
    assert res["passed"] and res["agreement"] == 1.0 and res["max_abs_logit_diff"] < 1e-5 and res["examples"] > 0
    assert res["here"]["isa"] == res["made_on"]["isa"] == isa
    # a verification set whose labels no longer match (as on a device whose int8 kernels saturate): exit 3
    other = tmp_path / "deploy"
    shutil.copytree(bundle, other)
    rec = json.loads((other / "verify.json").read_text())
    rec["labels"] = [1 - x for x in rec["labels"]]
    rec["logits"] = [row[::-1] for row in rec["logits"]]  # stored labels stay the stored logits' argmax
    (other / "verify.json").write_text(json.dumps(rec))
    r = CliRunner().invoke(main, ["verify", str(other)])
    assert r.exit_code == 3 and "FAILED" in r.output and "label agreement 0.00%" in r.output, r.output
    # the same labels with every input's logits moved (8-bit int8 weights on an x86 CPU without VNNI move them all,
    # median 0.06 on SST-2): exit 3 unless the user widens --max-median-diff
    rec["labels"] = [1 - x for x in rec["labels"]]
    rec["logits"] = [
        [v + (0.05 if i == k else 0.0) for i, v in enumerate(row[::-1])] for row, k in zip(rec["logits"], rec["labels"])
    ]
    (other / "verify.json").write_text(json.dumps(rec))
    r = CliRunner().invoke(main, ["verify", str(other)])
    assert r.exit_code == 3 and "label agreement 100.00%" in r.output and "computes the model differently" in r.output
    # the build machine's class, onnxruntime and provider: not a VNNI problem, but a changed model or set
    assert "reduce_range" not in r.output and "likely changed after the bundle was written" in r.output, r.output
    r = CliRunner().invoke(main, ["verify", str(other), "--max-median-diff", "0.1", "--json"])
    res = json.loads(r.output)
    assert r.exit_code == 0 and res["passed"] and abs(res["median_abs_logit_diff"] - 0.05) < 1e-3
    (other / "verify.json").unlink()
    r = CliRunner().invoke(main, ["verify", str(other)])
    assert r.exit_code == 2 and "no verify.json" in r.output and "Traceback" not in r.output


def test_verify_advice_follows_what_differs(shipped, tmp_path, monkeypatch):
    """A failed check says what to do from what differs: the provider the set was made on (a CUDA bundle checked
    on a CPU), 8-bit int8 weights on an x86 CPU without VNNI, or else the two machines; a set with no record of
    its build machine is refused."""
    import shutil

    from compresstune.deploy import verify as verify_mod

    run, _ = shipped
    other = tmp_path / "deploy"
    shutil.copytree(run / "deploy", other)
    good = json.loads((other / "verify.json").read_text())
    moved = [
        [v + (0.05 if i == k else 0.0) for i, v in enumerate(row)] for row, k in zip(good["logits"], good["labels"])
    ]

    def verify_with(rec, *args):
        (other / "verify.json").write_text(json.dumps(rec))
        return CliRunner().invoke(main, ["verify", str(other), *args])

    cuda = {**good["made_on"], "provider": "cuda", "gpu": "NVIDIA H100 80GB HBM3 (cc 9.0, 79.1 GB)"}
    r = verify_with({**good, "made_on": cuda})
    assert r.exit_code == 0 and "cuda provider (NVIDIA H100" in r.output and "use --provider cuda" in r.output
    r = verify_with({**good, "made_on": cuda, "logits": moved})
    assert r.exit_code == 3 and "verified on the cuda provider and runs here on cpu" in r.output, r.output
    cfg = json.loads((other / "config.json").read_text())
    cfg["compresstune"]["variant"] = "int8_dynamic"
    cfg["compresstune"]["built_on"]["int8_reduce_range"] = False
    (other / "config.json").write_text(json.dumps(cfg))
    avx2 = {**verify_mod.machine_record("cpu"), "isa": "x86-64 AVX2", "features": ["avx2", "fma"]}
    monkeypatch.setattr(verify_mod, "machine_record", lambda provider="cpu": {**avx2, "provider": provider})
    r = verify_with({**good, "logits": moved})
    assert r.exit_code == 3 and "8 bits" in r.output and "reduce_range=true" in r.output, r.output
    made = {k: v for k, v in good.items() if k != "made_on"}
    r = verify_with(made)
    assert r.exit_code == 2 and "made_on (the build machine's record) is missing" in r.output, r.output
    for odd in ({}, {**good["made_on"], "provider": "tpu"}, {**good["made_on"], "provider": ["cpu"]}):
        r = verify_with({**good, "made_on": odd})
        assert r.exit_code == 2 and "made_on does not say the build machine" in r.output, (odd, r.output)


def test_verify_refuses_hostile_verification_sets_whole(shipped, tmp_path, monkeypatch):
    """Edited verification sets and unreadable files: exit 2 with one message (never a traceback, never a pass);
    text from the file is printed without control characters; thresholds are printed as given."""
    import shutil

    from compresstune.deploy import cli as deploy_cli

    run, _ = shipped
    other = tmp_path / "deploy"
    shutil.copytree(run / "deploy", other)
    good = json.loads((other / "verify.json").read_text())

    def verify_with(rec, *args):
        (other / "verify.json").write_text(json.dumps(rec))
        return CliRunner().invoke(main, ["verify", str(other), *args])

    huge = {**good, "logits": [[1e308, -1e308] if k == 0 else [-1e308, 1e308] for k in good["labels"]]}
    for rec, words in (
        (huge, "beyond float32's range"),
        ({**good, "logits": good["logits"][:-1]}, "rows of logits"),
        ({**good, "format_version": True}, "format_version"),
    ):
        r = verify_with(rec)
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
    forged = {**good, "made_on": {**good["made_on"], "machine": "X\n  PASSED: fake\x1b[8m"}}
    r = verify_with(forged, "--max-median-diff", "0.014", "--min-agreement", "0.995")
    assert r.exit_code == 0 and "X\\n  PASSED: fake\\x1b[8m" in r.output and "\x1b" not in r.output, r.output
    assert "threshold 99.5%)" in r.output and "(threshold 0.014)" in r.output
    (other / "verify.json").unlink()
    (other / "verify.json").mkdir()
    r = CliRunner().invoke(main, ["verify", str(other)])
    assert r.exit_code == 2 and "is not a file" in r.output, r.output

    # a file this user may not read (root reads everything, so the refusal is raised where the file is read)
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(other / "verify.json"))

    monkeypatch.setattr("compresstune.deploy.verify.verify_bundle", denied)
    r = CliRunner().invoke(main, ["verify", str(other)])
    assert r.exit_code == 2 and "Permission denied" in r.output and "verify.json" in r.output, r.output
    assert deploy_cli.verify([str(other)]) == 2


def test_bench_onnx_times_files_back_to_back(shipped, tmp_path):
    run, _ = shipped
    files = [str(run / "02_export" / "model.onnx"), str(run / "02_export" / "model.optimized.onnx")]
    out = tmp_path / "b.json"
    r = CliRunner().invoke(
        main, ["bench", "onnx", *files, "--shapes", "1x8,2x16", "--iters", "6", "--rounds", "2", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert {(x["file"], x["batch"], x["seq"]) for x in res["rows"]} == {
        (f, b, s) for f in ("model.onnx", "model.optimized.onnx") for b, s in ((1, 8), (2, 16))
    }
    assert all(x["speedup_vs_first"] == 1.0 for x in res["rows"] if x["file"] == "model.onnx")
    assert all(x["runs"] >= 6 for x in res["rows"]) and res["machine"]["cpu"] is not None
    assert res["files"]["model.optimized.onnx"]["footprint"]["peak_rss_mb"] > 0


def test_ship_shape_must_be_timed(tiny_bert, glue_dir, tmp_path):
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    with pytest.raises(ConfigError, match=r"ship.shape: \[1, 128\] is not timed by the benchmark"):
        load_config(p, ["ship.shape=[1,128]"])
    with pytest.raises(ConfigError, match=r"report: the ship rule and the deploy bundle moved to their own stage"):
        load_config(p, ["report.ship_shape=[1,16]"])  # a file of the time the report shipped: told where it went
    with pytest.raises(ConfigError, match=r"put a `ship` stage before it"):
        load_config(p, ["stages=[finetune, export, benchmark, report]"])  # would silently lose its bundle


def test_gpu_selection_rules_on_cpu():
    """What a CUDA machine would build and time, checked where CI runs (no GPU)."""
    from compresstune.export.variants import resolve_variants, runs_on, target_provider

    assert resolve_variants("auto", "cuda") == ["fp32", "optimized", "fp16"]
    assert resolve_variants("auto", "cpu") == ["fp32", "optimized", "int8_dynamic", "int8_static"]
    assert resolve_variants(["int8_dynamic"], "cpu") == ["fp32", "int8_dynamic"]  # fp32 is always built first
    assert "fp16" not in runs_on("cpu") and not any(v.startswith("int8") for v in runs_on("cuda"))
    assert target_provider("fp16", cuda=True) == "cuda" and target_provider("int8_dynamic", cuda=True) == "cpu"
    assert target_provider("optimized", cuda=False) == "cpu"


def test_cuda_asked_without_a_gpu_is_a_clear_error(shipped, tiny_bert, glue_dir, tmp_path):
    write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    r = run_pipeline_in(tmp_path, "benchmark.providers=[cuda]")
    assert r.exit_code == 2
    assert "no CUDA GPU is visible" in r.output and "Traceback" not in r.output


def test_int8_dynamic_keeps_the_most_sensitive_layers_float_until_labels_agree(tiny_bert, tmp_path):
    """The accuracy fallback of int8_dynamic, with an agreement that only passes once one layer stays float."""
    import onnx
    from transformers import AutoModelForSequenceClassification

    from compresstune.config.sections import ExportConfig
    from compresstune.export.onnx import export_onnx
    from compresstune.export.variants import VariantBuilder

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    fp32 = export_onnx(model, tmp_path / "model.onnx")

    def agreement(path):  # stands in for "share of dev labels equal to PyTorch's": needs 2 float MatMuls of layer.1
        g = onnx.load(str(path)).graph
        inits = {i.name for i in g.initializer}
        float_w = [n.name for n in g.node if n.op_type == "MatMul" and any(x in inits for x in n.input)]
        return 1.0 if sum("layer.1/" in n for n in float_w) >= 2 else (0.95 if float_w else 0.9)

    cfg = ExportConfig(variants=["int8_dynamic"], min_agreement=0.99)
    b = VariantBuilder(
        fp32, tmp_path, 4, 32, "bert", cfg, lambda: [], lambda p: 0.0, 0.0, log=lambda s: None, agreement=agreement
    )
    fb = b.build("int8_dynamic")["fallback"]
    assert fb["passed"] and len(fb["float_nodes"]) == 2 and all("layer.1/" in n for n in fb["float_nodes"])
    assert [t["agreement"] for t in fb["tries"]] == [0.9, 0.95, 1.0] and fb["layer_rank"][0] == "layer.1"
    assert agreement(tmp_path / "model.int8_dynamic.onnx") == 1.0  # the file left is the passing one


def test_a_rerun_that_publishes_less_sets_the_earlier_results_aside(tmp_path):
    """A rerun that ships nothing (or no longer exports, or has no curve) must not leave the earlier run's deploy/
    and model.onnx at the top of the run folder as if they were its own; they move to superseded/, not lost."""
    from types import SimpleNamespace

    from compresstune.stages.report import _set_aside_superseded

    run = tmp_path / "run"
    (run / "deploy" / "onnx").mkdir(parents=True)
    (run / "deploy" / "onnx" / "model.onnx").write_text("old bundle")
    (run / "model.onnx").write_text("old model")
    (run / "REPORT.md").write_text("this run's")
    (run / "superseded" / "deploy").mkdir(parents=True)  # an older superseded one is replaced
    (run / "superseded" / "deploy" / "older").write_text("x")
    logs = []
    ctx = SimpleNamespace(run_dir=run, name="report", log=logs.append)
    _set_aside_superseded(ctx, ["REPORT.md", "report.json", "model.onnx"])
    assert not (run / "deploy").exists() and (run / "model.onnx").read_text() == "old model"
    assert (run / "superseded" / "deploy" / "onnx" / "model.onnx").read_text() == "old bundle"
    assert not (run / "superseded" / "deploy" / "older").exists() and (run / "REPORT.md").exists()
    assert len(logs) == 1 and "deploy" in logs[0] and "earlier run's" in logs[0]


def test_published_names_that_are_links_or_files_are_replaced_never_followed(tmp_path):
    """What stands at a published name (a link, a file where a folder goes) is replaced, never what a link points
    at; a `superseded` that is a link or a file is refused before anything moves (it would carry the earlier
    results out of the run folder and replace what is at its other end)."""
    from types import SimpleNamespace

    from compresstune.errors import UserError
    from compresstune.stages.report import _publish, _set_aside_superseded

    run, outside = tmp_path / "run", tmp_path / "outside"
    (outside / "deploy").mkdir(parents=True)
    (outside / "deploy" / "precious.txt").write_text("keep")
    (run / "src" / "deploy").mkdir(parents=True)
    (run / "src" / "deploy" / "model.onnx").write_text("new")
    (run / "deploy").symlink_to(outside / "deploy")
    _publish(run / "src" / "deploy", run / "deploy")
    assert not (run / "deploy").is_symlink() and (run / "deploy" / "model.onnx").read_text() == "new"
    assert (outside / "deploy" / "precious.txt").read_text() == "keep"
    (run / "model.onnx").mkdir()  # a folder where a file is published, and a file where a folder is
    (run / "src" / "model.onnx").write_text("m")
    _publish(run / "src" / "model.onnx", run / "model.onnx")
    assert (run / "model.onnx").read_text() == "m"
    shutil.rmtree(run / "deploy")
    (run / "deploy").write_text("a file")
    _publish(run / "src" / "deploy", run / "deploy")
    assert (run / "deploy" / "model.onnx").read_text() == "new"
    ctx = SimpleNamespace(run_dir=run, name="report", log=lambda s: None)
    for aside in ("link", "file"):
        (run / "superseded").symlink_to(outside) if aside == "link" else (run / "superseded").write_text("x")
        with pytest.raises(UserError, match="superseded is (a symbolic link|not a folder)"):
            _set_aside_superseded(ctx, ["REPORT.md"])
        assert (run / "deploy" / "model.onnx").exists() and (outside / "deploy" / "precious.txt").exists()
        (run / "superseded").unlink()
