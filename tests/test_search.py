"""`compresstune search`: candidate pipelines, budget checks, the ladder, resume after SIGKILL, a target
device's latency table."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from compresstune.cli import main
from compresstune.config import load_config
from compresstune.config.checks import portable_dict
from compresstune.deploy.layout import model_path
from compresstune.search.candidates import Candidate, candidate_config
from compresstune.search.report import pareto
from compresstune.search.spec import load_search

REPO = Path(__file__).resolve().parent.parent

SEARCH_YAML = """
name: tsearch
model: {model}
seed: 7
task:
  name: sst2
  glue_dir: {glue}
  train_subset: 96
  dev_subset: 48
  max_length: 32
stages: [teacher, distill, prune, finetune, export, benchmark, ship, report]
teacher: {{type: finetune, method: full, epochs: 1, lr: 1.0e-3, batch_size: 16}}
distill: {{type: compress, input: teacher, method: distill, distill_mode: task_specific, epochs: 1, lr: 1.0e-3,
  batch_size: 16}}
prune: {{type: compress, method: prune, ffn_ratio: 0.5, head_ratio: 0.0, heal_epochs: 0.5, lr: 1.0e-3,
  batch_size: 16}}
finetune: {{method: learner, rank: 4, priming_epochs: 1, epochs: 1, lr: 1.0e-3, batch_size: 16}}
export: {{verify_shapes: [[1, 7], [3, 19]], variants: [fp32, int8_dynamic], quantize_embeddings: true}}
benchmark: {{shapes: [[8, 16]], warmup: 1, iters: 3, rounds: 1, min_time_s: 0, pytorch: false, footprint: false}}
ship: {{shape: [8, 16], edge: false}}
search:
  budget: {{size_mb: 1.2, shape: [1, 16]}}
  space: {{layers: [1, 2], head_ratio: [0.0, 0.5], ffn_ratio: [0.0, 0.5]}}
  ladder:
    rungs: [{{distill.max_steps: 2, prune.heal_epochs: 0.1, finetune.max_steps: 2, finetune.priming_epochs: 0}}]
    keep: 0.5
    max_candidates: 3
    finalists: 1
  timing_iters: 10
"""


def _write(d: Path, tiny_bert: Path, glue_dir: Path, text: str = SEARCH_YAML) -> Path:
    p = d / "s.yaml"
    p.write_text(text.format(model=tiny_bert, glue=glue_dir))
    return p


def _search_in(d: Path, *args: str):
    """`compresstune search d/s.yaml --output-dir d/out ARGS...` in this process."""
    return CliRunner().invoke(main, ["search", str(d / "s.yaml"), "--output-dir", str(d / "out"), *args])


def test_candidate_pipelines_drop_and_rewire_stages(tmp_path, tiny_bert, glue_dir):
    s, pcfg = load_search(_write(tmp_path, tiny_bert, glue_dir))
    assert (s.depth_stage, s.prune_stage) == ("distill", "prune")
    rung = s.ladder.rungs[0]

    def build(c, r=None):
        out = candidate_config(pcfg, s, c, 2, r)  # typed, from the typed searched config
        (tmp_path / "sub").mkdir(exist_ok=True)  # written for another folder, loaded back as any pipeline file
        (tmp_path / "sub" / "c.yaml").write_text(json.dumps(portable_dict(out, tmp_path / "sub")))
        return out, load_config(tmp_path / "sub" / "c.yaml")

    out, cfg = build(Candidate(1, 0.5, 0.0, 0.0, "int8_dynamic"), rung)
    assert list(cfg.stages) == ["teacher", "distill", "prune", "finetune", "export", "benchmark", "ship", "report"]
    assert cfg.stages["distill"].student_layers == 1 and cfg.stages["distill"].max_steps == 2
    assert (cfg.stages["prune"].head_ratio, cfg.stages["prune"].ffn_ratio) == (0.5, 0.0)
    assert cfg.stages["prune"].heal_epochs == 0.1 and cfg.stages["finetune"].max_steps == 2
    assert cfg.stages["ship"].rule == "smallest" and list(cfg.stages["ship"].shape) == [1, 16]
    assert [1, 16] in [list(p) for p in cfg.stages["benchmark"].points()]  # the budget's shape is timed
    # the teacher's depth: no distill stage, the prune stage reads the teacher
    _, cfg = build(Candidate(2, 0.0, 0.5, 0.0, "int8_dynamic"))
    assert "distill" not in cfg.stages and cfg.stage_inputs("prune") == ["teacher"]
    # nothing to prune: the fine-tuning reads the student
    _, cfg = build(Candidate(1, 0.0, 0.0, 0.0, "int8_dynamic"))
    assert "prune" not in cfg.stages and cfg.stage_inputs("finetune") == ["distill"]
    _, cfg = build(Candidate(2, 0.0, 0.0, 0.25, "fp32"))
    assert cfg.stages["prune"].hidden_weight == 0.0  # the hidden size changes: heal on logits
    # a size budget: the int8 file stays all int8 (the agreement fallback's float MatMuls add size)
    assert cfg.stages["export"].min_agreement == 0.0
    lat = s.model_copy(update={"budget": s.budget.model_copy(update={"size_mb": None, "latency_ms": 5.0})})
    default = type(pcfg.stages["export"])().min_agreement
    latency_bound = candidate_config(pcfg, lat, Candidate(2, 0.0, 0.5, 0.0, "int8_dynamic"), 2)
    assert latency_bound.stages["export"].min_agreement == default
    # paths written for another folder still point at the same files; a hub id stays as it is
    (tmp_path / "g").mkdir()
    moved = portable_dict(dataclasses.replace(pcfg, base_dir=tmp_path, model="org/model"), tmp_path / "a" / "b")
    assert moved["model"] == "org/model"
    (tmp_path / "m").mkdir()
    moved = portable_dict(dataclasses.replace(pcfg, base_dir=tmp_path, model="m"), tmp_path / "a" / "b")
    assert moved["model"] == os.path.join("..", "..", "m")
    nested = candidate_config(pcfg, s, Candidate(1, 0.5, 0.0, 0.0, "int8_dynamic"), 2, {"export.tolerances.int8": 2.0})
    assert nested.stages["export"].tolerances.int8 == 2.0 and nested.stages["export"].tolerances.fp16 == 0.3
    absolute = portable_dict(pcfg, tmp_path / "a" / "b")["task"]["glue_dir"]
    assert absolute == str(Path(glue_dir).resolve())  # an absolute path stays absolute: it holds from anywhere
    with pytest.raises(ValidationError):  # a rung setting its stage refuses: refused as the loader refuses it
        candidate_config(pcfg, s, Candidate(1, 0.5, 0.0, 0.0, "int8_dynamic"), 2, {"finetune.max_steps": -3})


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda t: t.replace("search:\n", "serch:\n"), "serch: unknown key"),
        (lambda t: t[: t.index("search:")], "search: missing"),
        (lambda t: t[: t.index("search:")] + "search: 5\n", "search: not a mapping of settings (got 5)"),
        (lambda t: t.replace("budget: {size_mb: 1.2,", "budget: {"), "give latency_ms, latency_fraction or size_mb"),
        (lambda t: t.replace("keep: 0.5", "kep: 0.5"), "search.ladder.kep: unknown key. Did you mean 'keep'?"),
        (lambda t: t.replace("ffn_ratio: [0.0, 0.5]", "ffn_ratio: [0.0, 1.5]"), "ratios lie in [0, 1)"),
        (lambda t: t.replace("ffn_ratio: 0.5, head_ratio: 0.0,", "mode: global, ffn_ratio: 0.5,"), "mode: uniform"),
        (lambda t: t.replace("distill, prune, finetune", "prune, finetune"), "no distill stage"),
        (
            lambda t: t.replace("budget: {", "budget: {latency_fraction: 0.5, latency_table: t.json, "),
            "set search.budget.latency_fraction=null",
        ),
        (lambda t: t.replace("finetune.max_steps: 2,", "finetune.max_step: 2,"), "search.ladder.rungs[0]: "),
        (lambda t: t.replace("finetune.max_steps: 2,", "finetun.max_steps: 2,"), "do not name a stage's setting"),
    ],
)
def test_bad_search_sections_are_one_clear_error(tmp_path, tiny_bert, glue_dir, edit, expect, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a search would write (exported/)
    p = tmp_path / "s.yaml"
    p.write_text(edit(SEARCH_YAML.format(model=tiny_bert, glue=glue_dir)))
    r = CliRunner().invoke(main, ["search", str(p)])
    assert r.exit_code == 2, r.output
    assert expect in r.output and "Traceback" not in r.output and not (tmp_path / "exported").exists()
    if expect != "search: missing":  # `pipeline validate` of a file with a search section checks it the same way
        r = CliRunner().invoke(main, ["pipeline", "validate", str(p), "distill.student_layers=1"])
        assert r.exit_code == 2 and expect in r.output and "Traceback" not in r.output, r.output


def test_pareto_front():
    cands = [
        {"id": "a", "p50_ms": 1.0, "rungs": {"0": 80.0}},
        {"id": "b", "p50_ms": 2.0, "rungs": {"0": 85.0, "1": 86.0}},
        {"id": "c", "p50_ms": 3.0, "rungs": {"0": 84.0}},  # slower and worse than b
        {"id": "d", "p50_ms": 0.5, "rungs": {"0": None}},  # no metric: not on the front
    ]
    assert pareto(cands) == ["a", "b"]


def _search(cwd: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "compresstune.cli", "search", "s.yaml", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kw,
    )


def _kill_when(proc: subprocess.Popen, needle: str, timeout: float = 300) -> str:
    out, t0 = [], time.time()
    for line in proc.stdout:
        out.append(line)
        if needle in line:
            proc.send_signal(signal.SIGKILL)
            break
        assert time.time() - t0 < timeout, "".join(out)
    proc.wait()
    return "".join(out)


def test_search_finds_a_winner_and_resumes_after_sigkill(tmp_path, tiny_bert, glue_dir):
    _write(tmp_path, tiny_bert, glue_dir)
    # killed while the second candidate trains (the first candidate's run finished)
    first = _kill_when(_search(tmp_path), "[search] L2-h00-f50-x00-int8dynamic.r0: rung 0")
    assert "L2-h00-f00-x00-int8dynamic.r0: dev" in first and "[search] report" not in first
    second = subprocess.run(
        [sys.executable, "-m", "compresstune.cli", "search", "s.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    # nothing finished is repeated: every latency from the table, the first candidate's run skipped whole
    timed = [ln for ln in out.splitlines() if ln.startswith("[search] L") and " MB" in ln]
    assert len(timed) == 8 and all("(cached)" in ln for ln in timed)
    block = out.split("[search] L2-h00-f00-x00-int8dynamic.r0: rung 0")[1].split(
        "[search] L2-h00-f00-x00-int8dynamic.r0: dev"
    )[0]
    assert "] running" not in block and "up to date" in block
    sdir = tmp_path / "exported" / "tsearch"
    res = json.loads((sdir / "search.json").read_text())
    assert res["winner"] and res["winner_checks"][0]["meets_budget"]
    by_id = {c["id"]: c for c in res["candidates"]}
    entered = sorted((c for c in by_id.values() if not c["skipped"]), key=lambda c: -c["params"])
    assert len(entered) == 3 and all(c["rungs"].get("0") is not None for c in entered)
    left = [c for c in by_id.values() if c["skipped"]]
    assert len(left) == 5 and all(c["skipped"].startswith("under budget, but not among the 3 largest") for c in left)
    assert max(c["params"] for c in left) <= min(c["params"] for c in entered)
    assert all(c["size_mb"] <= 1.2 for c in by_id.values() if c.get("rungs"))
    winner_run = tmp_path / res["winner_run"]
    assert model_path(winner_run / "deploy").is_file()
    assert json.loads((winner_run / "report.json").read_text())["ship"]["chosen"] == res["winner"]["variant"]
    assert model_path(winner_run / "deploy").stat().st_size / 2**20 <= 1.2
    for f in ("SEARCH.md", "search.png", "latency.json", "winner.yaml"):
        assert (sdir / f).is_file(), f
    assert "Winner: " in (sdir / "SEARCH.md").read_text()
    r = CliRunner().invoke(main, ["pipeline", "validate", str(sdir / "winner.yaml")])
    assert r.exit_code == 0, r.output
    # a third run repeats nothing at all
    third = subprocess.run(
        [sys.executable, "-m", "compresstune.cli", "search", "s.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert third.returncode == 0 and "] running" not in third.stdout, third.stdout
    again = json.loads((sdir / "search.json").read_text())  # the winner's check too: same bundle, same budget
    assert again["winner"] == res["winner"] and again["winner_checks"][0]["cached"]


def test_latency_from_a_target_devices_table(tmp_path, tiny_bert, glue_dir):
    """Candidate files for the target, timed there with `bench onnx`, then searched with that table."""
    text = SEARCH_YAML.replace("head_ratio: [0.0, 0.5], ffn_ratio: [0.0, 0.5]", "ffn_ratio: [0.5]")
    assert text != SEARCH_YAML
    _write(tmp_path, tiny_bert, glue_dir, text)
    cand_dir = tmp_path / "cands"
    r = _search_in(tmp_path, "--export-candidates", str(cand_dir))
    assert r.exit_code == 0, r.output
    files = sorted(cand_dir.glob("*.onnx"))
    assert len(files) == 2
    table = tmp_path / "target.json"
    r = CliRunner().invoke(
        main,
        ["bench", "onnx", *map(str, files), "--shapes", "1x16", "--iters", "10", "--no-footprint", "--out", str(table)],
    )
    assert r.exit_code == 0, r.output
    rows = {row["file"]: row["p50_ms"] for row in json.loads(table.read_text())["rows"]}
    slow = max(rows.values())
    r = _search_in(  # the folder the local timings went to: the target's must still win
        tmp_path,
        f"search.budget.latency_table={table}",
        f"search.budget.latency_ms={slow * 0.999}",
        "search.budget.margin=0",
        "search.ladder.rungs=[]",
    )
    assert r.exit_code in (0, 1), r.output
    lat = json.loads((tmp_path / "out" / "tsearch" / "latency.json").read_text())["entries"]
    from_table = [e for e in lat.values() if e["source"] == str(table)]
    assert sorted(e["p50_ms"] for e in from_table) == sorted(rows.values())
    res = json.loads((tmp_path / "out" / "tsearch" / "search.json").read_text())
    over = [c for c in res["candidates"] if not c["meets_budget"]]
    assert len(over) == 1 and over[0]["p50_ms"] == slow and "ms >" in over[0]["over_budget"]


def test_latency_tables_of_other_searches_count_only_from_this_machine(tmp_path):
    from compresstune.measure.latency import machine_info
    from compresstune.search.latency import LatencyTable
    from compresstune.search.spec import Budget

    here = {"machine": machine_info(), "entries": {"k1": {"p50_ms": 1.0, "size_mb": 1.0}}}
    elsewhere = {"machine": {**machine_info(), "cpu": "another CPU"}, "entries": {"k2": {"p50_ms": 2.0}}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "latency.json").write_text(json.dumps(here))
    (tmp_path / "b" / "latency.json").write_text(json.dumps(elsewhere))
    table = LatencyTable(tmp_path / "latency.json", Budget(size_mb=10), 10)
    assert table.adopt(tmp_path / "a" / "latency.json") == 1 and table.adopt(tmp_path / "b" / "latency.json") == 0
    assert table.adopt(tmp_path / "missing.json") == 0
    assert table.data["entries"]["k1"]["from"] == str(tmp_path / "a" / "latency.json")


def test_space_left_out_keeps_the_recipe_and_time_limit_stops_new_runs(tmp_path, tiny_bert, glue_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = SEARCH_YAML.replace(
        "space: {{layers: [1, 2], head_ratio: [0.0, 0.5], ffn_ratio: [0.0, 0.5]}}", "space: {{head_ratio: [0.5]}}"
    ).replace("distill_mode: task_specific,", "distill_mode: task_specific, student_layers: 1,")
    assert text != SEARCH_YAML
    _write(tmp_path, tiny_bert, glue_dir, text)
    s, _ = load_search(tmp_path / "s.yaml")
    assert (s.space.layers, s.space.head_ratio, s.space.ffn_ratio, s.space.hidden_ratio) == ([1], [0.5], [0.5], [0.0])
    r = CliRunner().invoke(main, ["search", "s.yaml", "search.time_limit_min=0.0001"])
    assert r.exit_code == 1, r.output
    assert "L1-h50-f50-x00-int8dynamic.r0: not started (time limit)" in r.output
    md = (tmp_path / "exported" / "tsearch" / "SEARCH.md").read_text()
    assert "the time limit was reached before a finalist finished" in md
    assert not (tmp_path / "exported" / "tsearch" / "runs").exists()


def test_the_winners_retime_takes_four_times_the_calls_of_a_screening(tmp_path, tiny_bert):
    """The bundle's check decides the winner: it is timed on 4x the calls in 4x the interleaved rounds."""
    from transformers import AutoModelForSequenceClassification

    from compresstune.export.onnx import export_onnx
    from compresstune.search.latency import LatencyTable, retime_bundle
    from compresstune.search.spec import Budget

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    path = export_onnx(model, tmp_path / "model.onnx", 17)
    table = LatencyTable(tmp_path / "latency.json", Budget(latency_fraction=1.0, shape=[1, 16]), 20, reference=model)
    screening = table._time(path, model.config.vocab_size, path.name)
    check = retime_bundle(path, table)
    assert screening["runs"] == 5 * 4  # 20 calls in 4 rounds
    assert check["runs"] == 5 * 16 and check["retimed"]
    assert check["fraction_of_eager"] > 0 and check["size_mb"] > 0


def test_advancing_share_is_exact():
    from compresstune.search.spec import advancing

    assert [advancing(100, 0.07), advancing(8, 0.5), advancing(3, 0.5), advancing(1, 0.1)] == [7, 4, 2, 1]


def test_retime_takes_ids_inside_a_trimmed_bundles_vocabulary(tmp_path, tiny_bert):
    """A bundle whose vocabulary was trimmed (report.trim_vocab) is re-timed with ids its tokenizer can give."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from compresstune.export.onnx import export_onnx
    from compresstune.search.latency import LatencyTable, bundle_vocab_size, retime_bundle
    from compresstune.search.spec import Budget

    reference = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    small = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_bert, vocab_size=40))
    (tmp_path / "deploy").mkdir()
    path = export_onnx(small.eval(), tmp_path / "deploy" / "model.onnx", 17)
    vocab = {f"w{i}": i for i in range(40)}
    Tokenizer(WordLevel(vocab, unk_token="w0")).save(str(tmp_path / "deploy" / "tokenizer.json"))
    assert reference.config.vocab_size > 40 and bundle_vocab_size(path, reference) == 40
    budget = Budget(latency_fraction=1.0, shape=[1, 16])
    table = LatencyTable(tmp_path / "latency.json", budget, 10, reference=reference)
    check = retime_bundle(path, table)
    assert check["retimed"] and check["p50_ms"] > 0


def test_a_target_table_must_match_the_budgets_provider_and_threads(tmp_path):
    from compresstune.errors import UserError
    from compresstune.search.latency import LatencyTable
    from compresstune.search.spec import Budget

    table = tmp_path / "target.json"
    table.write_text(json.dumps({"provider": "cpu", "threads": 8, "rows": []}))
    with pytest.raises(UserError, match=r"threads 8 .* threads 2.*search.budget.threads=8"):
        LatencyTable(tmp_path / "latency.json", Budget(latency_ms=5, threads=2, latency_table=str(table)), 10)
    same = Budget(latency_ms=5, threads=8, latency_table=str(table))
    assert LatencyTable(tmp_path / "l.json", same, 10).external == {}
    # writing the candidate files for the target: its table need not exist yet
    missing = Budget(latency_ms=5, latency_table=str(tmp_path / "not-yet.json"))
    assert LatencyTable(tmp_path / "l2.json", missing, 10, keep_dir=tmp_path / "cands").external is None


def test_own_latency_table_from_another_machine_is_timed_again(tmp_path):
    from compresstune.measure.latency import machine_info
    from compresstune.search.latency import LatencyTable
    from compresstune.search.spec import Budget

    here = "this machine, back to back with the uncompressed model's PyTorch eager"
    entries = {"k1": {"p50_ms": 1.0, "source": here}, "k2": {"p50_ms": 2.0, "source": "target.json"}}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps({"machine": {**machine_info(), "cpu": "another CPU"}, "entries": entries}))
    logged = []
    table = LatencyTable(path, Budget(size_mb=10), 10, log=logged.append)
    assert list(table.data["entries"]) == ["k2"] and "another machine" in logged[0]
    path.write_text(json.dumps({"machine": machine_info(), "entries": entries}))
    assert len(LatencyTable(path, Budget(size_mb=10), 10).data["entries"]) == 2


def test_finished_needs_every_stage_up_to_the_rung(tmp_path):
    from compresstune.manifest import Manifest
    from compresstune.search.halving import _finished

    run = tmp_path / "run"
    man = Manifest(run)
    man.update_stage("teacher", status="done")
    man.update_stage("distill", status="done")
    man.save()
    stages = ["teacher", "distill", "prune", "finetune", "export"]
    assert _finished(run, stages, "distill")
    assert not _finished(run, stages, "finetune")  # killed between two stages: only done records so far
    assert not _finished(run, stages, None) and not _finished(tmp_path / "absent", stages, None)


def test_ladder_notes_the_finalist_cut_and_survives_a_crashing_candidate(tmp_path, tiny_bert, glue_dir, monkeypatch):
    import compresstune.search.halving as ladder_mod
    from compresstune.search.halving import Clock, Ladder

    _write(tmp_path, tiny_bert, glue_dir)
    s, pcfg = load_search(tmp_path / "s.yaml", ["search.ladder.rungs=[]", "search.ladder.finalists=1"])
    lad = Ladder(tmp_path / "out", pcfg, s, 2, Clock(), log=lambda m: None)
    cands = [Candidate(2, 0.0, f, 0.0, "int8_dynamic") for f in (0.0, 0.5)]
    for c in cands:
        lad.results[c.id] = {"rungs": {}}

    def crash(*a, **k):
        raise RuntimeError("shape mismatch in one candidate")

    monkeypatch.setattr(ladder_mod, "run_pipeline", crash)
    assert lad.run(cands) == []
    assert lad.results[cands[0].id]["error"] == "rung 0: RuntimeError: shape mismatch in one candidate"
    assert lad.results[cands[1].id]["stopped"] == "rung 0: not among the 1 finalists (search.ladder.finalists)"


def test_validate_checks_a_search_section_set_by_overrides(tmp_path, tiny_bert, glue_dir):
    """`pipeline validate` decides from the file with its overrides, as `compresstune search` reads it."""
    p = tmp_path / "s.yaml"
    p.write_text(SEARCH_YAML.format(model=tiny_bert, glue=glue_dir))
    args = ["pipeline", "validate", str(p), "distill.student_layers=1"]
    r = CliRunner().invoke(main, [*args, "search.budget.margin=true"])
    assert r.exit_code == 2 and "search.budget.margin: expected a number, not true or false" in r.output, r.output
    assert CliRunner().invoke(main, args).exit_code == 0
