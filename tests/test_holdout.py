"""`task.holdout` / `search.holdout`: evaluate and select on training examples held out of training, so the
dev set stays untouched until the search's winner is scored on it once."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import write_pipeline
from test_search import _search_in, _write

from compresstune.cli import main
from compresstune.config import load_config
from compresstune.data.load import load_task
from compresstune.deploy.layout import load_config as bundle_config
from compresstune.pipeline import fingerprints
from compresstune.pipeline.fingerprint import _task_settings


def test_holdout_is_a_fixed_disjoint_slice_of_the_training_set(tmp_path, tiny_bert, glue_dir):
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    plain = load_config(p)
    full = load_task(plain.task.model_copy(update={"train_subset": None, "dev_subset": None}), 7)
    t = plain.task.model_copy(update={"train_subset": None, "dev_subset": None, "holdout": 500})
    a, b = load_task(t, 7), load_task(t, 7)
    assert len(a.dev) == 500 and len(a.train) == len(full.train) - 500 and a.holdout == 500
    assert a.dev.texts == b.dev.texts and a.dev.texts != full.dev.texts[:500]

    def pairs(split):
        return sorted(zip(split.texts, map(str, split.labels)))

    assert sorted(pairs(a.train) + pairs(a.dev)) == pairs(full.train)  # disjoint, together the training set
    assert load_task(t, 8).dev.texts != a.dev.texts  # the pipeline seed picks the slice


def test_holdout_enters_fingerprints_only_when_set(tmp_path, tiny_bert, glue_dir):
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    cfg = load_config(p)
    assert "holdout" not in _task_settings(cfg)  # runs made before the setting existed keep their fingerprints
    held = load_config(p, ["task.holdout=24"])
    a, b = fingerprints(cfg), fingerprints(held)
    assert all(a[n] != b[n] for n in a)


def test_a_run_with_holdout_never_evaluates_on_dev(tmp_path, tiny_bert, glue_dir, monkeypatch):
    write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["pipeline", "run", "p.yaml", "task.holdout=24", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "96 train / 24 held-out (task.holdout) examples" in r.output
    run = tmp_path / "exported" / "t"
    man = json.loads((run / "manifest.json").read_text())["stages"]
    assert man["finetune"]["summary"]["dev_examples"] == 24 and man["finetune"]["summary"]["train_examples"] == 96
    rep = json.loads((run / "report.json").read_text())
    assert rep["evaluated_on"].startswith("24 training examples held out") and rep["split"] == "held-out"
    md = (run / "REPORT.md").read_text()
    assert "held out" in md and "held out" in (run / "deploy" / "README.md").read_text()
    # the split is called what it is in REPORT.md's tables and lines, never "dev"
    assert "Held-out accuracy: best of" in md and "| held-out accuracy |" in md and "dev accuracy" not in md
    card, cfg = (run / "deploy" / "README.md").read_text(), bundle_config(run / "deploy")
    assert "Held-out set, 24 training examples, task.holdout: accuracy" in card and "Dev set:" not in card
    assert cfg["metric"]["split"] == "held-out (24 training examples, task.holdout)"


def test_holdout_larger_than_the_training_set_is_caught_before_work(tmp_path, tiny_bert, glue_dir):
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    r = CliRunner().invoke(main, ["pipeline", "validate", str(p), "task.holdout=100000"])
    assert r.exit_code == 2 and "task.holdout" in r.output and "smaller number" in r.output, r.output


def test_search_selects_on_held_out_examples_and_scores_the_winner_on_dev_once(tmp_path, tiny_bert, glue_dir):
    _write(tmp_path, tiny_bert, glue_dir)
    r = _search_in(
        tmp_path,
        "search.holdout=24",
        "search.ladder.rungs=[]",
        "search.ladder.max_candidates=1",
        "search.ladder.finalists=1",
    )
    assert r.exit_code == 0, r.output
    sdir = tmp_path / "out" / "tsearch"
    res = json.loads((sdir / "search.json").read_text())
    assert res["holdout"] == 24 and res["winner"]
    scored = [ln for ln in r.output.splitlines() if ln.startswith(f"[search] {res['winner']['id']}: ")]
    assert any(": held-out " in ln for ln in scored) and not any(": dev " in ln for ln in scored), scored
    run = tmp_path / "out" / "tsearch" / "runs" / res["winner"]["id"]
    assert json.loads((run / "manifest.json").read_text())["stages"]["finetune"]["summary"]["dev_examples"] == 24
    dev = res["winner_dev"]
    assert dev["examples"] == 48 and dev["metric"] == "accuracy" and 0 <= dev["value"] <= 100
    md = (sdir / "SEARCH.md").read_text()
    assert "24 training examples held out" in md and "read once after the choice" in md and "held-out per rung" in md
    assert "holdout: 24" in (sdir / "winner.yaml").read_text()  # the winner's recipe as it was trained


def test_report_says_what_its_p50s_are():
    from compresstune.config.results import Comparison
    from compresstune.stages.report_md import comparison

    cmp = {"baseline": "teacher_export", "baseline_onnx": "01/model.onnx", "baseline_onnx_mb": 86.8, "onnx_mb": 20.0}
    row = {"engine": "ort-cpu", "batch": 1, "seq": 128, "p50_ms": 2.0, "baseline_p50_ms": 10.0, "speedup": 5.1}
    text = "\n".join(comparison(Comparison.model_validate({**cmp, "rounds": 4, "rows": [row]})))
    assert "each p50 is over all calls of all rounds" in text and "medians over rounds" not in text
