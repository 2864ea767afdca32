"""Hostile input that gets past the checks made before work, or that is not a pipeline file at all: data that
would run code, outputs that silently stop matching their stage, run records and bundles that point outside
their folder, broken model files, a full disk, and two property tests (every numeric setting fed 0, -1, NaN,
+-inf and 1e300; random run and stage names). Each case ends with an exit code and a message, never a
traceback, and nothing outside the run folder changes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from click.testing import CliRunner

from compresstune.cli import main
from compresstune.deploy.layout import load_config, model_path, save_config

REPO = Path(__file__).resolve().parent.parent
PIPELINE = """
name: t
model: model
seed: 7
task:
  name: custom
  train_file: train.csv
  dev_file: dev.csv
  max_length: 32
stages: [finetune, export]
finetune: {epochs: 1, lr: 1.0e-3, batch_size: 16, bf16: false}
export: {verify_shapes: [[1, 7]], variants: [fp32]}
"""


def _cli(args, cwd: Path):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        os.chdir(old)


def _checksum(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def proj(tmp_path_factory, tiny_bert, glue_dir):
    """A custom-task project with one finished [finetune, export] run and a sibling folder of the user's."""
    d = tmp_path_factory.mktemp("hostile")
    shutil.copytree(tiny_bert, d / "model")
    lines = (glue_dir / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:65]
    rows = [ln.split("\t") for ln in lines]
    (d / "train.csv").write_text("text,label\n" + "".join(f'"{t.strip()}",{y}\n' for t, y in rows[:48]))
    (d / "dev.csv").write_text("text,label\n" + "".join(f'"{t.strip()}",{y}\n' for t, y in rows[48:]))
    (d / "p.yaml").write_text(PIPELINE)
    (d / "victim").mkdir()
    (d / "victim" / "precious.txt").write_text("keep me\n")
    r = _cli(["pipeline", "run", "p.yaml", "--no-progress"], d)
    assert r.exit_code == 0, r.output
    return d


def _copy_run(proj: Path, name: str) -> Path:
    dst = proj / "exported" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(proj / "exported" / "t", dst, ignore=shutil.ignore_patterns(".lock*"))
    return dst


# --- no code from data ----------------------------------------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('ran')",))


def test_a_crafted_checkpoint_runs_nothing(tmp_path, monkeypatch):
    from compresstune.train.checkpoint import RESUME_KEYS, load_checkpoint

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "last.pt"
    with open(path, "wb") as f:
        pickle.dump({k: _Payload() for k in RESUME_KEYS}, f)
    said = []
    assert load_checkpoint(path, log=said.append, required=RESUME_KEYS) is None
    assert not (tmp_path / "PWNED").exists()
    assert "refused unread" in said[0] and "could run code" in said[0] and "starts over" in said[0]


def test_no_unsafe_torch_load_in_the_package():
    hits = [str(p) for p in (REPO / "compresstune").rglob("*.py") if "weights_only=False" in p.read_text()]
    assert hits == []


def test_checkpoint_rng_state_round_trips_as_plain_data(tmp_path):
    import numpy as np
    import torch

    from compresstune.train.checkpoint import atomic_save, rng_state, set_rng_state

    np.random.seed(3)
    atomic_save({"rng": rng_state()}, tmp_path / "c.pt")
    want = np.random.rand(3)
    set_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    assert np.array_equal(np.random.rand(3), want)


def test_a_pickled_weights_file_is_refused_with_a_message(proj, tmp_path):
    bad = proj / "pickled"
    shutil.copytree(proj / "model", bad, dirs_exist_ok=True)
    (bad / "model.safetensors").unlink()
    with open(bad / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Payload()}, f)
    before = _checksum(proj / "victim")
    r = _cli(["pipeline", "run", "p.yaml", "model=pickled", "--run-name", "pickled", "--no-progress"], proj)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "pickled" in r.output and "could not be loaded" in r.output
    assert not (proj / "PWNED").exists() and _checksum(proj / "victim") == before


# --- broken model files: a message naming the folder ----------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated_safetensors", "hidden_size_mismatch"])
def test_broken_weights_end_with_a_message(proj, damage):
    bad = proj / damage
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(proj / "model", bad)
    if damage == "truncated_safetensors":
        data = (bad / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(data[: len(data) // 3])
    else:
        cfg = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}))
    r = _cli(["pipeline", "run", "p.yaml", f"model={damage}", "--run-name", damage, "--no-progress"], proj)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert damage in r.output and ("could not be loaded" in r.output or "do not fit its config" in r.output)


# --- outputs that silently stop matching their stage ----------------------------------------------------------


def test_published_files_are_copies_and_a_changed_stage_output_is_noticed(proj):
    run = _copy_run(proj, "copies")
    r = _cli(["pipeline", "run", "p.yaml", "--run-name", "copies", "--no-progress", "stages=[finetune, export]"], proj)
    assert r.exit_code == 0 and "up to date" in r.output, r.output
    stage_onnx = run / "02_export" / "model.onnx"
    before = stage_onnx.read_bytes()
    (run / "model.onnx").unlink(missing_ok=True)  # the published copy (a report stage makes it; none here)
    shutil.copy(stage_onnx, run / "model.onnx")
    (run / "model.onnx").write_bytes(b"replaced by the user")
    assert stage_onnx.read_bytes() == before  # a copy, not a hard link
    stage_onnx.write_bytes(b"not the exported model")  # the stage output itself changed after the fact
    r = _cli(["pipeline", "run", "p.yaml", "--run-name", "copies", "--no-progress"], proj)
    assert r.exit_code == 0, r.output
    assert "[export] its output changed since it was made (model.onnx in 02_export/): running it again" in r.output
    assert "[finetune] up to date" in r.output and stage_onnx.read_bytes()[:4] != b"not "


def test_an_interrupted_changed_run_never_loses_the_finished_stage(proj):
    """A run with one setting changed that stops (here: fails) leaves the finished folder of the original setting;
    the original command finds it again instead of training from step 0."""
    run = _copy_run(proj, "interrupted")
    import compresstune.stages.finetune as ft

    real = ft.FinetuneStage.run

    def stop(self, ctx):
        raise KeyboardInterrupt

    ft.FinetuneStage.run = stop
    try:
        r = _cli(["pipeline", "run", "p.yaml", "finetune.lr=5e-4", "--run-name", "interrupted", "--no-progress"], proj)
    finally:
        ft.FinetuneStage.run = real
    assert r.exit_code != 0 and "[finetune] running" in r.output
    man = json.loads((run / "manifest.json").read_text())
    assert man["stages"]["finetune"]["status"] == "failed"
    r = _cli(["pipeline", "run", "p.yaml", "--run-name", "interrupted", "--no-progress"], proj)
    assert r.exit_code == 0, r.output
    assert "[finetune] its finished output for fingerprint" in r.output and "recorded as done, not rerun" in r.output
    assert "[finetune] running" not in r.output


# --- run records and bundles that point outside their folder --------------------------------------------------


@pytest.mark.parametrize("how", ["absolute_output", "dotdot_output", "model_folder_gone"])
def test_reuse_from_adopts_only_intact_stage_folders_of_that_run(proj, how):
    src = _copy_run(proj, f"src-{how}")
    man = json.loads((src / "manifest.json").read_text())
    rec = man["stages"]["finetune"]
    if how == "absolute_output":
        rec["output"] = str(proj / "victim")
    elif how == "dotdot_output":
        rec["output"] = "../../victim"
    else:
        shutil.rmtree(src / "01_finetune" / "model")
    (src / "manifest.json").write_text(json.dumps(man))
    before = _checksum(proj / "victim")
    args = ["pipeline", "run", "p.yaml", "--run-name", f"dst-{how}", "--reuse-from", str(src), "--until", "finetune"]
    r = _cli([*args, "--no-progress"], proj)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "[finetune] reused" not in r.output and "not reused" in r.output
    assert "[finetune] running" in r.output
    assert _checksum(proj / "victim") == before
    assert not (proj / "exported" / f"dst-{how}" / "01_finetune" / "precious.txt").exists()


@pytest.mark.parametrize(
    "change, expect",
    [
        ({"files": {"model": "../outside.onnx"}}, "points outside"),
        ({"files": {"tokenizer": "/etc/passwd"}}, "must be a path relative to"),
        ({"pad_id": 10**9}, "pad_id 1000000000 is not a token of its tokenizer"),
        ({"pad_id": "zero"}, "pad_id must be a non-negative integer"),
        ({"files": ["model.onnx"]}, "files must map names to file names"),
        ({"max_length": "long"}, "max_length must be an integer"),
        ({"labels": 5}, "labels must be a list"),
    ],
)
def test_a_hostile_bundle_config_is_refused(proj, tmp_path, change, expect):
    from compresstune.deploy.bundle import write_bundle

    run = proj / "exported" / "t" / "02_export"
    labels = json.loads((run / "labels.json").read_text())
    bundle = tmp_path / "b"
    write_bundle(bundle, run / "model.onnx", run / "tokenizer", labels, compress=False)
    (tmp_path / "outside.onnx").write_bytes(model_path(bundle).read_bytes())
    cfg = load_config(bundle)
    if isinstance(change.get("files"), dict):
        change = {"files": {**cfg["files"], **change["files"]}}  # one file entry changed, the others kept
    save_config(bundle, {**cfg, **change})
    for cmd in (["predict", str(bundle), "a fine film"], ["verify", str(bundle)]):
        r = _cli(cmd, tmp_path)
        assert r.exit_code == 2 and "Traceback" not in r.output, (cmd, r.output)
        assert expect in r.output, (cmd, r.output)


def test_bench_onnx_refuses_a_zero_shape(proj):
    r = _cli(["bench", "onnx", "exported/t/02_export/model.onnx", "--shapes", "0x8", "--no-footprint"], proj)
    assert r.exit_code == 2 and "Traceback" not in r.output and "0x8" in r.output, r.output


# --- a full disk ---------------------------------------------------------------------------------------------


def test_a_full_disk_ends_with_one_message_and_a_consistent_run_record(proj, monkeypatch):
    run = _copy_run(proj, "full")
    import compresstune.stages.export as ex

    def full(self, ctx):
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.out_dir / "model.onnx"))

    monkeypatch.setattr(ex.ExportStage, "run", full)
    before = _checksum(run / "01_finetune")
    r = _cli(["pipeline", "run", "p.yaml", "--run-name", "full", "--from", "export", "--no-progress"], proj)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "stage export: the disk is full while writing" in r.output and "MiB free there now" in r.output
    assert "run the same command again" in r.output
    man = json.loads((run / "manifest.json").read_text())  # readable, and it says what happened
    assert man["stages"]["export"]["status"] == "failed" and man["stages"]["finetune"]["status"] == "done"
    assert not (run / "manifest.json.tmp").exists() and _checksum(run / "01_finetune") == before


# --- failures recorded, never retried by surprise -------------------------------------------------------------


def test_verify_variant_records_any_onnxruntime_failure(tmp_path):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from compresstune.export.variants import verify_variant

    def refuse(_path):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : this graph is refused")

    res = verify_variant("int8_static", tmp_path / "m.onnx", refuse, refuse, 90.0, 1.0)
    assert res["passed"] is False and "Fail" in res["error"] and "refused" in res["error"]


def test_numeric_labels_written_two_ways_are_one_class(tmp_path):
    from compresstune.data.files import load_user_files

    (tmp_path / "t.jsonl").write_text(
        "\n".join(json.dumps({"text": f"t{i}", "label": v}) for i, v in enumerate([0, 1, 0.0, 1.0, "1", " 0 "]))
    )
    data = load_user_files(str(tmp_path / "t.jsonl"), str(tmp_path / "t.jsonl"), ["text"], "label")
    assert data.label_names == ["0", "1"] and data.num_labels == 2 and data.train.labels == [0, 1, 0, 1, 1, 0]


# --- property tests ------------------------------------------------------------------------------------------


def _numeric_keys() -> list[tuple[str, str, tuple]]:
    """(stages override, KEY, finite range) for every int/float setting of every stage section and the task."""
    from compresstune.config.sections import TaskConfig, stage_types

    stage_lists = {
        "finetune": "[finetune, export]",
        "export": "[finetune, export]",
        "compress": "[compress, finetune, export]",
        "attach": "[attach, finetune, merge, export]",
        "merge": "[attach, finetune, merge, export]",
        "benchmark": "[finetune, export, benchmark]",
        "report": "[finetune, export, benchmark, ship, report]",
    }
    out = []
    sections = [("task", TaskConfig, "[finetune, export]")]
    sections += [(t, cls, stage_lists[t]) for t, cls in stage_types().items() if t in stage_lists]
    for sec, cls, stages in sections:
        for key, f in cls.model_fields.items():
            ann = typing.get_args(f.annotation) or (f.annotation,)
            if any(a in (int, float) for a in ann) and key not in ("seed",):
                out.append((stages, f"{sec}.{key}"))
    return out + [("[finetune, export]", "seed")]


def test_every_numeric_setting_refuses_or_runs_every_extreme_value(proj):
    """0, -1, NaN, +inf, -inf and 1e300 for every numeric key: `pipeline validate` exits 0 or 2 without a traceback,
    and the values it accepts run a tiny pipeline to the end (or a clean exit 2) within a time limit."""
    keys = _numeric_keys()
    assert len(keys) > 40
    accepted, bad = [], []
    for stages, key in keys:
        for value in ("0", "-1", ".nan", ".inf", "-.inf", "1e300"):
            r = _cli(["pipeline", "validate", "p.yaml", f"stages={stages}", f"{key}={value}"], proj)
            if r.exit_code not in (0, 2) or "Traceback" in r.output:
                bad.append((key, value, r.exit_code, r.output[-300:]))
            elif r.exit_code == 0 and stages == "[finetune, export]":
                accepted.append((key, value))
    assert not bad, bad
    assert all(v in ("0",) for _, v in accepted), accepted  # only 0 passes, and only where 0 means something
    # every accepted value runs the CLI to the end in one fresh process (one import of torch, not one per value)
    tail = ["finetune.max_steps=2", "--run-name", "fuzz", "--no-progress"]
    runs = [["pipeline", "run", "p.yaml", f"{key}={value}", *tail] for key, value in accepted]
    r = subprocess.run(
        [sys.executable, "-c", _RUN_EACH, json.dumps(runs)],
        cwd=proj,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120 * len(runs),
    )
    codes = [json.loads(ln[len("EXIT ") :]) for ln in r.stdout.splitlines() if ln.startswith("EXIT ")]
    assert r.returncode == 0 and len(codes) == len(runs), r.stderr[-2000:]
    assert all(c in (0, 2) for c in codes) and "Traceback" not in r.stderr, (
        list(zip(accepted, codes)),
        r.stderr[-800:],
    )


_RUN_EACH = """
import json, sys
from compresstune.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args, prog_name="compresstune")
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    print("EXIT " + json.dumps(code), flush=True)
"""


NAME_CHARS = "ab./\\-_ ~:$*?\u00e9\u4e2d\0\n"


def test_random_names_never_touch_anything_outside_the_output_folder(proj):
    """Run and stage names with separators, dots, unicode, control characters and 300 characters: each is refused
    or names a folder inside exported/, and nothing beside it is created or removed."""
    rng = random.Random(19)
    outside = set(proj.parent.iterdir()) | {p for p in proj.iterdir() if p.name != "exported"}
    victim = _checksum(proj / "victim")
    names = ["..", ".", "../x", "/tmp/x", "a/../../b", "e" * 300, "", "-rf", ".hidden", "ok-name.1"]
    names += ["".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(1, 12))) for _ in range(30)]
    for n in names:
        for args in (["--run-name", n], [f"stages=[finetune, '{n}']"] if "'" not in n and "\0" not in n else []):
            if not args:
                continue
            r = _cli(["pipeline", "validate", "p.yaml", *args], proj)
            assert r.exit_code in (0, 2) and "Traceback" not in r.output, (n, r.output)
    r = _cli(["pipeline", "run", "p.yaml", "--run-name", "../escape", "--no-progress"], proj)
    assert r.exit_code == 2
    assert set(proj.parent.iterdir()) | {p for p in proj.iterdir() if p.name != "exported"} == outside
    assert _checksum(proj / "victim") == victim


def test_a_search_rerun_does_not_retry_a_candidate_that_failed(tmp_path):
    from types import SimpleNamespace

    from compresstune.search.halving import Clock, Ladder

    said = []
    s = SimpleNamespace(ladder=SimpleNamespace(rungs=[{}]))
    earlier = {"L2-h00-f25": {"rungs": {"0": None}, "error": "rung 0: CheckFailed: ONNX logits differ"}}
    lad = Ladder(tmp_path, None, s, 6, Clock(), log=said.append, earlier=earlier)
    assert lad._run_one(SimpleNamespace(id="L2-h00-f25"), 0, {}) is None
    assert lad.results["L2-h00-f25"]["error"] == "rung 0: CheckFailed: ONNX logits differ"
    assert "failed in an earlier invocation" in said[0] and "not retried" in said[0]


def test_a_search_budget_shape_past_the_position_embeddings_is_refused(tmp_path, tiny_bert, glue_dir):
    from test_search import _write

    p = _write(tmp_path, tiny_bert, glue_dir)
    r = CliRunner().invoke(
        main, ["search", str(p), "--output-dir", str(tmp_path / "out"), "search.budget.shape=[1,600]"]
    )
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "search.budget.shape: sequence length 600 is longer than the model's 512 position embeddings" in r.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("manifest.json"))


# --- found by an adversarial session: a verification set, a bundle, a run record or a stage folder edited by hand


def _bundle(proj: Path, tmp_path: Path) -> Path:
    from compresstune.deploy.bundle import write_bundle
    from compresstune.deploy.verify import write_verification_set

    run = proj / "exported" / "t" / "02_export"
    bundle = tmp_path / "b"
    write_bundle(bundle, run / "model.onnx", run / "tokenizer", json.loads((run / "labels.json").read_text()))
    write_verification_set(bundle, ["a fine film", "dull", "it works", "never again"], n=4)
    return bundle


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["logits"].__setitem__(0, [0.1]),
        lambda r: r["logits"].__setitem__(0, [float("nan"), 0.0]),
        lambda r: r["logits"].__setitem__(0, ["a", "b"]),
        lambda r: r.__setitem__("labels", r["labels"][:2]),
        lambda r: r.pop("labels"),
        lambda r: r["inputs"].__setitem__(0, None),
        lambda r: r["inputs"].__setitem__(0, {"text": "a"}),
        lambda r: r.__setitem__("batch_size", "abc"),
        lambda r: r.__setitem__("batch_size", 0),
        lambda r: r.__setitem__("made_on", "x"),
        lambda r: r.__setitem__("problem_type", "regression"),
        lambda r: r.__setitem__("format_version", 99),
        lambda r: r.__setitem__("labels", [True, 1.5, 7, 0]),
    ],
)
def test_a_tampered_verification_set_is_refused(proj, tmp_path, edit):
    bundle = _bundle(proj, tmp_path)
    rec = json.loads((bundle / "verify.json").read_text())
    edit(rec)
    (bundle / "verify.json").write_text(json.dumps(rec))
    r = _cli(["verify", str(bundle), "--json"], tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "verify.json: it does not fit this bundle" in r.output and "PASSED" not in r.output


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "BUNDLE", "x", "--threads", "100000"],
        ["verify", "BUNDLE", "--threads", "100000"],
        ["bench", "onnx", "BUNDLE/model.onnx", "--iters", "0", "--no-footprint", "--shapes", "1x8"],
        ["bench", "onnx", "BUNDLE/model.onnx", "--rounds", "0", "--no-footprint", "--shapes", "1x8"],
        ["bench", "onnx", "BUNDLE/model.onnx", "--threads", "100000", "--no-footprint", "--shapes", "1x8"],
        # no point at all, or one twice: nothing (or the same thing twice) would be timed
        ["bench", "onnx", "BUNDLE/model.onnx", "--no-footprint", "--shapes", ","],
        ["bench", "onnx", "BUNDLE/model.onnx", "--no-footprint", "--seq-lengths", " "],
        ["bench", "onnx", "BUNDLE/model.onnx", "--no-footprint", "--shapes", "1x8,1X8"],
        # outputs that cannot be written are refused before the work whose results they would hold
        ["bench", "onnx", "BUNDLE/model.onnx", "--no-footprint", "--shapes", "1x8", "--out", "NOWHERE/o.json"],
        [
            "bench",
            "onnx",
            "BUNDLE/model.onnx",
            "--no-footprint",
            "--shapes",
            "1x8",
            "--out",
            "BUNDLE/model.onnx/o.json",
        ],
        ["bench", "speed", "--task", "sst2", "--methods", "full", "--out", "NOWHERE/s.md"],
        ["bench", "memory", "--task", "sst2", "--methods", "full", "--out", "BUNDLE"],
        ["bench", "finetune", "--task", "sst2", "--methods", "full", "--out", "AFILE/runs"],
        ["web", "BUNDLE", "--out", "AFILE"],
        ["bench", "onnx", "BUNDLE/model.onnx", "--no-footprint", "--shapes", "1x8", "--out", "DANGLING"],
        ["bench", "onnx", "BUNDLE/model.onnx", "--no-footprint", "--shapes", "1x8", "--out", ""],
        ["bench", "onnx", "BUNDLE/model.onnx", "--no-footprint", "--shapes", "1x8", "--out", "COMPANION/r.json"],
        ["web", "BUNDLE", "--out", "DANGLING"],
        ["search", "SEARCH.yaml", "--export-candidates", "AFILE/x"],
    ],
)
def test_out_of_range_flags_are_refused(proj, tmp_path, args):
    bundle = _bundle(proj, tmp_path)
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "no" / "such")
    (tmp_path / "companion" / "r.md").mkdir(parents=True)  # where `bench onnx --out r.json` writes its table
    named = {
        "NOWHERE": tmp_path / "no" / "such",
        "AFILE": tmp_path / "afile",
        "DANGLING": tmp_path / "dangling",
        "COMPANION": tmp_path / "companion",
        "BUNDLE": bundle,
    }
    for key, path in named.items():
        args = [a.replace(key, str(path)) for a in args]
    r = _cli(args, tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output and "Invalid value" in r.output, r.output
    assert "] running" not in r.output and not (tmp_path / "no").exists()


def test_bench_onnx_past_the_positions_is_a_message(proj, tmp_path):
    bundle = _bundle(proj, tmp_path)
    r = _cli(["bench", "onnx", str(model_path(bundle)), "--shapes", "1x1000", "--no-footprint"], tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output and "cannot run at batch 1 x seq 1000" in r.output


@pytest.mark.parametrize(
    "change, expect",
    [
        ({"files": {"model": "model.onnx\u0000x"}}, "must be a path relative to"),
        ({"max_length": 100000}, "max_length must be an integer from 4 to 4096"),
    ],
)
def test_more_hostile_bundle_configs(proj, tmp_path, change, expect):
    bundle = _bundle(proj, tmp_path)
    cfg = load_config(bundle)
    save_config(bundle, {**cfg, **change})
    r = _cli(["predict", str(bundle), "a fine film"], tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output and expect in r.output, r.output


def test_a_bundle_config_linked_from_outside_is_refused(proj, tmp_path):
    bundle = _bundle(proj, tmp_path)
    (tmp_path / "outside.json").write_text((bundle / "config.json").read_text())
    (bundle / "config.json").unlink()
    os.symlink(tmp_path / "outside.json", bundle / "config.json")
    r = _cli(["predict", str(bundle), "a fine film"], tmp_path)
    assert r.exit_code == 2 and "link to a file outside the bundle" in r.output, r.output


def test_a_stage_folder_that_is_a_link_is_refused_and_its_target_kept(proj, tmp_path):
    run = _copy_run(proj, "stagelink")
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    shutil.rmtree(run / "02_export")
    os.symlink(target, run / "02_export")
    r = _cli(["pipeline", "run", "p.yaml", "--run-name", "stagelink", "--from", "export", "--no-progress"], proj)
    assert r.exit_code == 2 and "Traceback" not in r.output and "02_export in" in r.output, r.output
    assert "symbolic links" in r.output and (target / "keep.txt").read_text() == "keep"
    (run / "02_export").unlink()
    os.symlink(target, run / "02_export.old")  # a link left where a set-aside folder would be
    r = _cli(["pipeline", "run", "p.yaml", "--run-name", "stagelink", "--no-progress"], proj)
    assert r.exit_code == 0, r.output
    assert (target / "keep.txt").read_text() == "keep" and not (run / "02_export.old").exists()


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda st: st.__setitem__("finetune", None), "stages.finetune is not a record"),
        (lambda st: st["finetune"].__setitem__("output_files", [1]), "stages.finetune.output_files is list"),
        (lambda st: st["finetune"].__setitem__("wall_time_s", "x"), "stages.finetune.wall_time_s is str"),
        (lambda st: st["finetune"].__setitem__("fingerprint", 5), "stages.finetune.fingerprint is int"),
        (lambda st: st["finetune"].__setitem__("summary", "x"), "stages.finetune.summary is str"),
    ],
)
def test_a_hand_edited_run_record_is_a_message(proj, edit, expect):
    run = _copy_run(proj, "edited")
    man = json.loads((run / "manifest.json").read_text())
    edit(man["stages"])
    (run / "manifest.json").write_text(json.dumps(man))
    for cmd in (
        ["pipeline", "status", str(run)],
        ["pipeline", "run", "p.yaml", "--run-name", "edited", "--no-progress"],
    ):
        r = _cli(cmd, proj)
        assert r.exit_code == 2 and "Traceback" not in r.output, (cmd, r.output)
        assert expect in r.output and "Move it away" in r.output, (cmd, r.output)


def test_bench_onnx_feeds_ids_a_small_vocabulary_takes(tiny_bert, tmp_path):
    """A model with fewer token ids than BERT's (a trimmed bundle's: here 40) is timed and footprinted with ids it
    takes; the vocabulary comes from its own embedding table."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from compresstune.deploy.edge import embedding_rows
    from compresstune.export.onnx import export_onnx

    small = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_bert, vocab_size=40))
    path = export_onnx(small.eval(), tmp_path / "small.onnx", 17)
    assert embedding_rows(path) == 40
    r = _cli(["bench", "onnx", str(path), "--shapes", "2x8", "--iters", "3", "--rounds", "1"], tmp_path)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "error" not in r.output.lower(), r.output
