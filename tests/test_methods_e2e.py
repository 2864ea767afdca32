"""Every fine-tuning method end to end on a tiny BERT and real SST-2 rows: train, reload the artifact (its
logits are the in-run model's), resume after an injected kill to the same weights, merge where the method
merges, export (the ONNX dev metric is PyTorch's). Then a regression and a 3-class task from custom files
through to the deploy bundle, and ``--force``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from compresstune.cli import main
from compresstune.config import load_config
from compresstune.data.batching import encode
from compresstune.data.metrics import compute_metrics
from compresstune.methods import load_artifact
from compresstune.pipeline import run_pipeline
from compresstune.stages.base import load_task_data
from compresstune.stages.finetune import FinetuneStage
from compresstune.train import faults
from compresstune.train.evaluate import logits_to_preds, predict

FINETUNE = {"epochs": 2, "lr": 1.0e-3, "batch_size": 16, "checkpoint_every_steps": 2}
EXPORT = {"verify_shapes": [[1, 7], [3, 19]], "variants": ["fp32"]}
KILL_AT = 5  # the first checkpoint at step >= 5 (step 6 of 8: after the Learners' priming epoch)

# method -> (its settings, stages before finetune)
CASES = {
    "full": ({}, []),
    "learner": ({"rank": 4, "priming_epochs": 1, "scale": 0.5}, []),  # merged with its scale
    "learner_attached": ({"method": "learner", "priming_epochs": 1}, ["attach"]),
    "bitfit": ({}, []),
    "freeze_ffn": ({}, []),
    "adapters_seq": ({"adapter_size": 8}, []),
    "adapters_par": ({"adapter_size": 8}, []),
    "far": ({"far_retention": 0.25, "far_priming_fraction": 0.1}, []),
    "lora": ({"rank": 4, "lora_alpha": 8.0}, []),
}
MERGES = {"learner": True, "learner_attached": True, "lora": True, "adapters_seq": False, "adapters_par": False}


class SimulatedKill(BaseException):
    """Raised where the fault injection would SIGKILL the process (a fresh process per kill costs seconds)."""


@pytest.fixture(autouse=True)
def _kills_raise(monkeypatch):
    def kill():
        raise SimulatedKill()

    monkeypatch.setattr(faults, "kill", kill)
    monkeypatch.delenv(faults.KILL_AFTER_STEP_ENV, raising=False)
    monkeypatch.delenv(faults.KILL_AT_ENV, raising=False)


def _yaml(path: Path, model: Path, task: dict, stages: list[str], sections: dict) -> Path:
    """A pipeline file; ``sections`` in YAML's JSON flow style."""
    body = "".join(f"{k}: {json.dumps(v)}\n" for k, v in sections.items())
    head = f"name: t\nmodel: {model}\nseed: 7\ndevice: cpu\ntask: {json.dumps(task)}\n"
    path.write_text(f"{head}stages: [{', '.join(stages)}]\n{body}")
    return path


def _run(path: Path, out: Path, **kw) -> tuple[dict, list[str]]:
    log: list[str] = []
    run_pipeline(load_config(path), output_dir=str(out), log=log.append, progress=False, **kw)
    return json.loads((out / "t" / "manifest.json").read_text()), log


def _sst2(glue_dir: Path) -> dict:
    return {"name": "sst2", "glue_dir": str(glue_dir), "train_subset": 64, "dev_subset": 48, "max_length": 32}


@pytest.fixture
def in_run_logits(monkeypatch):
    """The dev logits of the model the finetune stage trained, computed in the run, before it is saved."""
    seen: dict = {}
    orig = FinetuneStage._train

    def spy(ctx, model, tok, opts, setup):
        res = orig(ctx, model, tok, opts, setup)
        enc = encode(tok, ctx.task.dev, ctx.pipeline.task.max_length)
        seen[ctx.name] = predict(model, enc, tok.pad_token_id or 0)
        return res

    monkeypatch.setattr(FinetuneStage, "_train", staticmethod(spy))
    return seen


def _dev(cfg_path: Path):
    cfg = load_config(cfg_path)
    return load_task_data(cfg), cfg.task.max_length


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_reloads_resumes_merges_and_exports(
    case, tmp_path, tiny_bert, glue_dir, in_run_logits, monkeypatch
):
    settings, before = CASES[case]
    method = settings.get("method", case)
    ft = {**FINETUNE, "method": method, **{k: v for k, v in settings.items() if k != "method"}}
    stages = [*before, "finetune", "merge", "export"]
    sections = {"attach": {"rank": 4}, "finetune": ft, "merge": {}, "export": EXPORT}
    p = _yaml(
        tmp_path / "p.yaml", tiny_bert, _sst2(glue_dir), stages, {k: v for k, v in sections.items() if k in stages}
    )
    man, log = _run(p, tmp_path / "a")
    run = tmp_path / "a" / "t"
    out = {n: run / man["stages"][n]["output"] for n in stages}
    fs = man["stages"]["finetune"]["summary"]
    assert fs["method"] == method and fs["steps"] == 8 and fs["resumed_from_step"] is None

    # the artifact reloads to the in-run model: same dev logits, same dev metric as recorded (select: best)
    task, max_length = _dev(p)
    model, tok, meta = load_artifact(out["finetune"] / "model")
    assert meta["method"] == method
    enc = encode(tok, task.dev, max_length)
    logits = predict(model, enc, tok.pad_token_id or 0)
    # bit for bit, but for FAR, whose training-time FFN is split in two sums (the saved one is merged back)
    np.testing.assert_allclose(logits, in_run_logits["finetune"], rtol=0, atol=1e-5 if method == "far" else 0)
    metric = compute_metrics(task, logits_to_preds(task, logits), task.dev.labels)["main"]
    assert metric == fs["dev_metric"] == fs["best_dev_metric"]
    assert fs["dev_metric"] == next(h["dev_main"] for h in fs["history"] if h["step"] == fs["best_step"])

    # merge: folded where the method merges, the same function either way
    ms = man["stages"]["merge"]["summary"]
    assert ms["max_abs_diff"] <= ms["atol"]
    assert ms["plain_hf"] == (case not in ("adapters_seq", "adapters_par"))
    merged, _, mmeta = load_artifact(out["merge"] / "model")
    if MERGES.get(case):
        assert ms["params_after"] < ms["params_before"] and mmeta["plain_hf"]
    m_logits = predict(merged, enc, tok.pad_token_id or 0)
    assert np.abs(m_logits - logits).max() <= 1e-4

    # export: ONNX computes the PyTorch logits and the same dev metric
    es = man["stages"]["export"]["summary"]
    assert max(es["max_abs_diff"].values()) < 1e-4
    assert es["dev_onnx"]["main"] == es["dev_pytorch"]["main"] == metric
    from compresstune.export.onnx import make_session, ort_predict

    onnx_logits = ort_predict(make_session(out["export"] / "model.onnx", "cpu"), enc, tok.pad_token_id or 0)
    assert np.abs(onnx_logits - logits).max() < 1e-4

    # killed after the step-6 checkpoint, then the same command: resumes and reaches the same weights
    monkeypatch.setenv(faults.KILL_AFTER_STEP_ENV, str(KILL_AT))
    with pytest.raises(SimulatedKill):
        _run(p, tmp_path / "b", until_stage="finetune")
    monkeypatch.delenv(faults.KILL_AFTER_STEP_ENV)
    tmp = tmp_path / "b" / "t" / f"{len(before) + 1:02d}_finetune.tmp"
    assert (tmp / "checkpoints" / "last.pt").is_file()
    man_b, log_b = _run(p, tmp_path / "b", until_stage="finetune")
    assert "resuming from checkpoint at step 6/8" in log_b
    assert man_b["stages"]["finetune"]["summary"]["resumed_from_step"] == 6
    wa = load_file(out["finetune"] / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "t" / man_b["stages"]["finetune"]["output"] / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert not [k for k in wa if not torch.equal(wa[k], wb[k])]


def _custom_files(d: Path, glue_dir: Path, kind: str) -> dict:
    """train/dev TSV files of real SST-2 sentences with synthetic labels: ``regression`` (label + noise) or
    ``length3`` (short/medium/long by word-count tertiles of the training sentences)."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, src, n in (("train", "train.tsv", 160), ("dev", "dev.tsv", 64)):
        with open(glue_dir / "SST-2" / src, encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : n + 1]
        splits[split] = [(r[0].strip(), int(r[1])) for r in rows]
    lengths = np.array([len(s.split()) for s, _ in splits["train"]])
    cuts = np.quantile(lengths, [1 / 3, 2 / 3])
    for split, rows in splits.items():
        with open(d / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("sentence\ttarget\n")
            for s, y in rows:
                if kind == "regression":
                    label = f"{y + rng.normal(0, 0.1):.4f}"
                else:
                    n = len(s.split())
                    label = "short" if n <= cuts[0] else ("medium" if n <= cuts[1] else "long")
                f.write(f"{s}\t{label}\n")
    task = {"name": "custom", "train_file": "train.tsv", "dev_file": "dev.tsv", "text_columns": ["sentence"]}
    task.update({"label_column": "target", "max_length": 32})
    return {**task, "problem": "regression"} if kind == "regression" else task


@pytest.mark.parametrize("kind", ["regression", "length3"])
def test_custom_regression_and_three_class_tasks_end_to_end(kind, tmp_path, tiny_bert, glue_dir, in_run_logits):
    from compresstune.deploy import Predictor

    task_cfg = _custom_files(tmp_path, glue_dir, kind)
    bench = {"batch_sizes": [1], "seq_lengths": [16], "warmup": 1, "iters": 3, "rounds": 1, "min_time_s": 0}
    bench.update({"pytorch": False, "footprint": False, "threads": torch.get_num_threads()})
    stages = ["finetune", "export", "benchmark", "ship", "report"]
    sections = {
        "finetune": {**FINETUNE, "epochs": 3, "lr": 2.0e-3},
        "export": EXPORT,
        "benchmark": bench,
        "ship": {"shape": [1, 16], "edge": False},
    }
    p = _yaml(tmp_path / "p.yaml", tiny_bert, task_cfg, stages, sections)
    man, _ = _run(p, tmp_path / "out")
    run = tmp_path / "out" / "t"
    task, max_length = _dev(p)
    fs = man["stages"]["finetune"]["summary"]
    model, tok, meta = load_artifact(run / "01_finetune" / "model")
    enc = encode(tok, task.dev, max_length)
    logits = predict(model, enc, tok.pad_token_id or 0)
    np.testing.assert_array_equal(logits, in_run_logits["finetune"])
    metric = compute_metrics(task, logits_to_preds(task, logits), task.dev.labels)
    es = man["stages"]["export"]["summary"]
    if kind == "regression":
        assert meta["task"]["is_regression"] and logits.shape[1] == 1 and fs["metric"] == "pearson"
        assert metric["main"] == pytest.approx(fs["dev_metric"], abs=1e-9)
        # a near-constant prediction makes Pearson sensitive to float noise: the export's own tolerance
        assert abs(es["dev_onnx"]["main"] - es["dev_pytorch"]["main"]) <= 0.1
    else:
        assert meta["task"]["label_names"] == ["long", "medium", "short"] and logits.shape[1] == 3
        assert fs["metric"] == "accuracy" and metric["main"] == fs["dev_metric"]
        assert es["dev_onnx"]["main"] == es["dev_pytorch"]["main"]
    losses = [h["train_loss"] for h in fs["history"]]
    assert losses[-1] < losses[0], f"the training loss did not go down: {losses}"

    # the shipped bundle predicts what the trained model computes
    assert man["stages"]["ship"]["summary"]["decision"]["chosen"] == "fp32"
    from compresstune.export.onnx import make_session, ort_predict

    onnx_logits = ort_predict(make_session(run / "02_export" / "model.onnx", "cpu"), enc, tok.pad_token_id or 0)
    assert np.abs(onnx_logits - logits).max() < 1e-4
    pred = Predictor(run / "deploy").predict([t[0] for t in task.dev.texts], warn=False)
    if kind == "regression":
        assert np.abs(np.array([r["value"] for r in pred]) - logits[:, 0]).max() < 1e-4
    else:
        assert [r["label_id"] for r in pred] == logits.argmax(1).tolist()
        assert [r["label"] for r in pred] == [["long", "medium", "short"][i] for i in logits.argmax(1)]


def test_force_reruns_every_stage_and_discards_partial_checkpoints(tmp_path, tiny_bert, glue_dir, monkeypatch):
    stages = ["finetune", "merge", "export"]
    sections = {"finetune": FINETUNE, "merge": {}, "export": EXPORT}
    p = _yaml(tmp_path / "p.yaml", tiny_bert, _sst2(glue_dir), stages, sections)

    def cli(*args):
        return CliRunner().invoke(
            main,
            ["pipeline", "run", str(p), "--no-progress", "--output-dir", str(tmp_path / "out"), *args],
            catch_exceptions=False,
        )

    def ran(output):
        return [ln.split("]")[0][1:] for ln in output.splitlines() if ln.startswith("[") and "] running" in ln]

    monkeypatch.setenv(faults.KILL_AFTER_STEP_ENV, str(KILL_AT))
    with pytest.raises(SimulatedKill):
        cli()
    monkeypatch.delenv(faults.KILL_AFTER_STEP_ENV)
    run = tmp_path / "out" / "t"
    assert torch.load(run / "01_finetune.tmp" / "checkpoints" / "last.pt", weights_only=False)["step"] == 6
    r = cli("--force")
    assert r.exit_code == 0, r.output
    assert ran(r.output) == stages and "resuming from checkpoint" not in r.output
    man = json.loads((run / "manifest.json").read_text())
    assert man["stages"]["finetune"]["summary"]["resumed_from_step"] is None
    assert man["stages"]["finetune"]["summary"]["steps"] == 8
    w1 = load_file(run / "01_finetune" / "model" / "model.safetensors")
    r = cli()
    assert r.exit_code == 0 and ran(r.output) == [] and r.output.count("skipped") == 3
    r = cli("--force")  # everything up to date: still every stage runs again
    assert r.exit_code == 0 and ran(r.output) == stages
    w2 = load_file(run / "01_finetune" / "model" / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
