"""End to end through the CLI on a tiny random BERT, the real tokenizer and slices of real SST-2."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import write_pipeline
from safetensors.torch import load_file

from compresstune.cli import main


def _run(args, cwd):
    runner = CliRunner()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(main, ["pipeline", "run", *args, "--no-progress"], catch_exceptions=False)
    finally:
        os.chdir(old)


def _ran(output):
    return [line.split("]")[0][1:] for line in output.splitlines() if line.startswith("[") and "] running" in line]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_bert, glue_dir):
    d = tmp_path_factory.mktemp("e2e")
    write_pipeline(d / "p.yaml", tiny_bert, glue_dir)
    r = _run(["p.yaml"], d)
    return d, r


def test_full_run_produces_artifacts(first_run):
    d, r = first_run
    assert r.exit_code == 0, r.output
    assert _ran(r.output) == ["finetune", "export", "benchmark", "ship", "report"]
    run = d / "exported" / "t"
    for f in (
        "model.onnx",
        "REPORT.md",
        "report.json",
        "manifest.json",
        "tokenizer/tokenizer.json",
        "labels.json",
        "config.resolved.json",
    ):
        assert (run / f).exists(), f
    man = json.loads((run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in man["stages"].values())
    exp = man["stages"]["export"]["summary"]
    assert max(exp["max_abs_diff"].values()) < 1e-4
    assert abs(exp["dev_onnx"]["accuracy"] - exp["dev_pytorch"]["accuracy"]) <= 0.1
    ft = man["stages"]["finetune"]["summary"]
    assert ft["steps"] == 12 and ft["train_examples"] == 96 and ft["resources"]["peak_rss_mb"] > 0
    assert not (run / "01_finetune" / "checkpoints").exists()  # scratch removed once done
    rep = json.loads((run / "report.json").read_text())
    variants = exp["variants"]
    assert list(variants) == ["fp32", "optimized", "int8_dynamic", "int8_static"]  # the cpu defaults
    timed = {"ort-cpu" + ("" if v == "fp32" else f":{v}") for v, r in variants.items() if r["passed"]}
    assert {r["engine"] for r in rep["stages"]["benchmark"]["summary"]["rows"]} == timed | {"torch-cpu"}
    assert "| ort-cpu | 1 | 16 |" in (run / "REPORT.md").read_text()


def test_second_run_skips_everything_and_override_reruns_downstream(first_run):
    d, _ = first_run
    r = _run(["p.yaml"], d)
    assert r.exit_code == 0 and _ran(r.output) == [] and r.output.count("skipped") == 5
    r = _run(["p.yaml", "export.opset=16"], d)
    assert _ran(r.output) == ["export", "benchmark", "ship", "report"]
    r = _run(["p.yaml", "export.opset=16", "finetune.lr=2e-3"], d)
    assert _ran(r.output) == ["finetune", "export", "benchmark", "ship", "report"]
    r = _run(["p.yaml", "export.opset=16", "finetune.lr=2e-3", "finetune.checkpoint_every_steps=5"], d)
    assert _ran(r.output) == []  # checkpoint cadence does not change results
    r = _run(["p.yaml", "export.opset=16", "finetune.lr=2e-3", "--from", "benchmark", "--until", "benchmark"], d)
    assert _ran(r.output) == ["benchmark"]
    st = CliRunner().invoke(main, ["pipeline", "status", str(d / "exported" / "t")])
    assert (
        st.exit_code == 0 and st.output.count(" done ") == 3 and st.output.count(" stale ") == 2
    )  # the ship stage and the report read the old timings
    r = _run(["p.yaml", "export.opset=16", "finetune.lr=2e-3"], d)
    assert _ran(r.output) == ["ship", "report"]


def test_reuse_from_copies_stages_with_the_same_fingerprint_under_other_names(tmp_path, tiny_bert, glue_dir):
    write_pipeline(tmp_path / "a.yaml", tiny_bert, glue_dir, stages="[finetune, export]")
    assert _run(["a.yaml"], tmp_path).exit_code == 0
    # the same training and export under other stage names, then a benchmark that needs the export's model
    extra = (
        "teacher: {type: finetune, epochs: 2, lr: 1.0e-3, batch_size: 16}\n"
        "teacher_export: {type: export, verify_shapes: [[1, 7], [3, 19]]}\n"
    )
    write_pipeline(tmp_path / "b.yaml", tiny_bert, glue_dir, extra=extra, stages="[teacher, teacher_export, benchmark]")
    r = _run(["b.yaml", "--run-name", "b", "--reuse-from", str(tmp_path / "exported" / "t")], tmp_path)
    assert r.exit_code == 0, r.output
    assert _ran(r.output) == ["benchmark"] and r.output.count("] reused ") == 2
    man = json.loads((tmp_path / "exported" / "b" / "manifest.json").read_text())
    assert (
        man["stages"]["teacher_export"]["summary"]["model_dir"] == "01_teacher/model"
    )  # rewritten to this run's folder
    assert man["stages"]["teacher"]["reused_from"].endswith("01_finetune")
    assert {"ort-cpu", "torch-cpu", "ort-cpu:int8_dynamic"} <= {
        row["engine"] for row in man["stages"]["benchmark"]["summary"]["rows"]
    }  # the variants of the reused export are timed from the copied folder
    assert man["stages"]["teacher_export"]["inputs"] == ["teacher"]
    a = load_file(tmp_path / "exported" / "t" / "01_finetune" / "model" / "model.safetensors")
    b = load_file(tmp_path / "exported" / "b" / "01_teacher" / "model" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    r = _run(["b.yaml", "--run-name", "c", "--reuse-from", str(tmp_path / "nowhere")], tmp_path)
    assert r.exit_code == 2 and "--reuse-from" in r.output


def test_sigkill_mid_training_resumes_to_same_result(tmp_path, tiny_bert, glue_dir):
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, stages="[finetune]")
    env = {**os.environ, "COMPRESSTUNE_FAULT_KILL_AFTER_STEP": "4"}
    cmd = [sys.executable, "-m", "compresstune.cli", "pipeline", "run", str(p), "--no-progress"]
    killed = subprocess.run(
        cmd + ["--output-dir", "a"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    man = json.loads((tmp_path / "a" / "t" / "manifest.json").read_text())
    assert man["stages"]["finetune"]["status"] == "running"
    assert (tmp_path / "a" / "t" / "01_finetune.tmp" / "checkpoints" / "last.pt").is_file()
    env.pop("COMPRESSTUNE_FAULT_KILL_AFTER_STEP")
    resumed = subprocess.run(
        cmd + ["--output-dir", "a"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from checkpoint at step 4/12" in resumed.stdout
    unbroken = subprocess.run(
        cmd + ["--output-dir", "b"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert unbroken.returncode == 0
    wa = load_file(tmp_path / "a" / "t" / "01_finetune" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "t" / "01_finetune" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    sa = json.loads((tmp_path / "a" / "t" / "01_finetune" / "summary.json").read_text())
    assert sa["resumed_from_step"] == 4


def test_config_and_data_errors_exit_2_without_traceback(tmp_path, tiny_bert, glue_dir):
    write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, extra="finetune_typo: {lr: 1}")
    r = CliRunner().invoke(main, ["pipeline", "run", str(tmp_path / "p.yaml"), "finetune.lr=-1"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "finetune_typo: unknown key" in r.output and "finetune.lr" in r.output
    # a corrupt data row: named by file and line, before any stage runs
    bad = tmp_path / "glue"
    shutil.copytree(glue_dir / "SST-2", bad / "SST-2")
    lines = (bad / "SST-2" / "train.tsv").read_text().splitlines()
    lines[10] = "a broken row without a label"
    (bad / "SST-2" / "train.tsv").write_text("\n".join(lines) + "\n")
    write_pipeline(tmp_path / "q.yaml", tiny_bert, bad)
    r = CliRunner().invoke(main, ["pipeline", "run", str(tmp_path / "q.yaml"), "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "train.tsv line 11" in r.output
    assert not (tmp_path / "out" / "t" / "01_finetune.tmp").exists()
    r = CliRunner().invoke(main, ["pipeline", "run", str(tmp_path / "p.yaml"), "--from", "nope"])
    assert r.exit_code == 2


def test_learner_pipeline_merges_to_plain_hf_and_exports(tmp_path, tiny_bert, glue_dir):
    from transformers import AutoModelForSequenceClassification

    extra = "merge: {}\n"
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, extra=extra, stages="[finetune, merge, export]")
    r = _run([str(p), "finetune.method=learner", "finetune.rank=4", "finetune.priming_epochs=1"], tmp_path)
    assert r.exit_code == 0, r.output
    run = tmp_path / "exported" / "t"
    man = json.loads((run / "manifest.json").read_text())
    ft, mg, ex = (man["stages"][k]["summary"] for k in ("finetune", "merge", "export"))
    assert ft["param_groups"]["learners"]["trainable"] > 0 and ft["param_groups"]["ffn"]["trainable"] == 0
    assert ft["optimizer_params"] > ft["trainable_params"]  # attention trained during priming only
    assert "priming" in r.output and "attention frozen" in r.output
    assert mg["max_abs_diff"] <= 1e-4 and mg["plain_hf"] and mg["params_after"] < mg["params_before"]
    # the merged artifact is a plain BERT: transformers loads it with no compresstune code
    plain = AutoModelForSequenceClassification.from_pretrained(run / "02_merge" / "model")
    assert type(plain).__name__ == "BertForSequenceClassification"
    assert abs(ex["dev_onnx"]["accuracy"] - ex["dev_pytorch"]["accuracy"]) <= 0.1


def test_attach_stage_then_learner_finetune_resumes_after_kill(tmp_path, tiny_bert, glue_dir):
    extra = "attach: {rank: 4}\n"
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, extra=extra, stages="[attach, finetune]")
    over = ["finetune.method=learner", "finetune.priming_epochs=1"]
    cmd = [sys.executable, "-m", "compresstune.cli", "pipeline", "run", str(p), *over, "--no-progress"]
    env = {**os.environ, "COMPRESSTUNE_FAULT_KILL_AFTER_STEP": "4"}  # inside the priming epoch (6 steps)
    killed = subprocess.run(
        cmd + ["--output-dir", "a"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    env.pop("COMPRESSTUNE_FAULT_KILL_AFTER_STEP")
    resumed = subprocess.run(
        cmd + ["--output-dir", "a"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[attach] up to date" in resumed.stdout and "resuming from checkpoint at step 4/12" in resumed.stdout
    unbroken = subprocess.run(
        cmd + ["--output-dir", "b"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert unbroken.returncode == 0
    wa = load_file(tmp_path / "a" / "t" / "02_finetune" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "t" / "02_finetune" / "model" / "model.safetensors")
    assert any(k.endswith("P1") for k in wa) and all((wa[k] == wb[k]).all() for k in wa)


def test_prune_then_learners_then_merge_export(tmp_path, tiny_bert, glue_dir):
    extra = (
        "teacher: {type: finetune, epochs: 1, lr: 1.0e-3, batch_size: 16}\n"
        "teacher_export: {type: export, input: teacher, verify_shapes: [[1, 7]]}\n"
        "compress: {input: teacher, method: prune, head_ratio: 0.5, ffn_ratio: 0.5, mode: global}\n"
        "bench2: {type: benchmark, input: export, baseline: teacher_export, rounds: 2, batch_sizes: [1], "
        "seq_lengths: [16], warmup: 1, iters: 3, min_time_s: 0, pytorch: false}\n"
    )
    p = write_pipeline(
        tmp_path / "p.yaml",
        tiny_bert,
        glue_dir,
        extra=extra,
        stages="[teacher, teacher_export, compress, finetune, merge, export, bench2, ship, report]",
    )
    r = _run([str(p), "finetune.method=learner", "finetune.rank=4", "finetune.priming_epochs=1"], tmp_path)
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "exported" / "t" / "manifest.json").read_text())
    c = man["stages"]["compress"]["summary"]
    assert c["after"]["params"]["encoder"] < c["before"]["params"]["encoder"]
    assert c["after"]["gflops_per_seq"]["128"] < c["before"]["gflops_per_seq"]["128"]
    assert set(c["after"]["gflops_per_seq"]) == {"16", "64", "128"}  # the benchmark's lengths too
    assert man["stages"]["merge"]["summary"]["max_abs_diff"] <= 1e-4
    ex = man["stages"]["export"]["summary"]
    assert max(ex["max_abs_diff"].values()) < 1e-4
    cmp = man["stages"]["bench2"]["summary"]["comparison"]  # timed back to back against the unpruned export
    assert cmp["baseline"] == "teacher_export" and len(cmp["rows"]) == 1
    row = cmp["rows"][0]
    assert len(row["rounds_p50_ms"]) == len(row["rounds_baseline_p50_ms"]) == 2 and row["speedup"] == pytest.approx(
        sum(b / m for b, m in zip(row["rounds_baseline_p50_ms"], row["rounds_p50_ms"])) / 2
    )
    assert cmp["onnx_mb"] < cmp["baseline_onnx_mb"]
    assert "Back to back against `teacher_export`" in (tmp_path / "exported" / "t" / "REPORT.md").read_text()
    # the bundle records the pruned widths its transformers config cannot express, and its card says "pruned"
    bundle = tmp_path / "exported" / "t" / "deploy"
    shapes = json.loads((bundle / "config.json").read_text())["compresstune"]["layer_shapes"]
    assert len(shapes) == 2 and sum(s["heads"] for s in shapes) < 2 * 4 and all(s["ffn"] < 64 for s in shapes)
    assert "- pruned" in (bundle / "README.md").read_text()
    # the accuracy-vs-speed summary across runs reads the same numbers
    t = CliRunner().invoke(
        main,
        ["bench", "tradeoff", str(tmp_path / "exported" / "t"), "--out", str(tmp_path / "trade"), "--points", "1x16"],
    )
    assert t.exit_code == 0, t.output
    rows = json.loads((tmp_path / "trade" / "tradeoff.json").read_text())
    assert rows[0]["dev"] == ex["dev_onnx"]["main"] and rows[0]["points"]["1x16"]["speedup"] == row["speedup"]
    assert rows[0]["finetune_method"] == "learner" and rows[0]["compression"].startswith(
        "prune heads 50%, FFN 50% (global"
    )
    assert (tmp_path / "trade" / "tradeoff.png").stat().st_size > 10_000
    # a baseline that is not an earlier export stage is a config error naming the key
    r = _run([str(p), "bench2.baseline=compress"], tmp_path)
    assert r.exit_code == 2 and "bench2.baseline" in r.output
    r = _run([str(p), "bench2.baseline=export"], tmp_path)  # its own input: it would time the model against itself
    assert r.exit_code == 2 and "is also the model this stage times" in r.output


def test_task_agnostic_distill_then_finetune(tmp_path, tiny_bert, glue_dir):
    extra = "compress: {method: distill, student_layers: 1, epochs: 1, lr: 1.0e-3, hidden_weight: 1.0}\n"
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, extra=extra, stages="[compress, finetune]")
    r = _run([str(p)], tmp_path)
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "exported" / "t" / "manifest.json").read_text())
    c = man["stages"]["compress"]["summary"]
    assert c["keep_layers"] == [1] and c["after"]["layers"] == 1 and c["distill"]["mode"] == "task_agnostic"
    assert c["distill"]["steps"] == 3  # 96 examples, batch 32, 1 epoch
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported" / "t" / "02_finetune" / "model")
    assert m.config.num_hidden_layers == 1  # a 1-layer student is still a plain BERT


def test_distilbert_learner_pipeline(tmp_path, tiny_distilbert, glue_dir):
    p = write_pipeline(
        tmp_path / "p.yaml", tiny_distilbert, glue_dir, extra="merge: {}\n", stages="[finetune, merge, export]"
    )
    r = _run(
        [str(p), "finetune.method=learner", "finetune.rank=4", "finetune.priming_epochs=1", "task.name=mrpc"], tmp_path
    )
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "exported" / "t" / "manifest.json").read_text())
    ft = man["stages"]["finetune"]["summary"]
    assert ft["param_groups"]["head"]["trainable"] == 32 * 32 + 32 + 32 * 2 + 2  # pre_classifier + classifier
    assert man["stages"]["merge"]["summary"]["plain_hf"]
    assert max(man["stages"]["export"]["summary"]["max_abs_diff"].values()) < 1e-4


def test_hidden_pruning_heal_on_logits_then_learners_merge_export(tmp_path, tiny_bert, glue_dir):
    extra = (
        "teacher: {type: finetune, epochs: 1, lr: 1.0e-3, batch_size: 16}\n"
        "compress: {input: teacher, method: prune, head_ratio: 0.5, ffn_ratio: 0.5, hidden_ratio: 0.25, "
        "heal_epochs: 0.5, hidden_weight: 0, lr: 1.0e-3}\n"
    )
    p = write_pipeline(
        tmp_path / "p.yaml", tiny_bert, glue_dir, extra=extra, stages="[teacher, compress, finetune, merge, export]"
    )
    r = _run([str(p), "finetune.method=learner", "finetune.rank=4", "finetune.priming_epochs=1"], tmp_path)
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "exported" / "t" / "manifest.json").read_text())
    c = man["stages"]["compress"]["summary"]
    assert c["after"]["params"]["embeddings"] < c["before"]["params"]["embeddings"]  # the residual stream shrank
    assert c["distill"]["steps"] == 2 and man["stages"]["merge"]["summary"]["max_abs_diff"] <= 1e-4
    assert max(man["stages"]["export"]["summary"]["max_abs_diff"].values()) < 1e-4
