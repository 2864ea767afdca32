"""Runs users can trust: fingerprints that follow the content of the data and model files, the
device and the stage code; stage folders replaced by renames; one process per run folder; clear
messages for a damaged manifest or checkpoint. Through the CLI on a tiny BERT and a custom CSV
task cut from real SST-2 rows."""

import csv
import dataclasses
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from compresstune.cli import main
from compresstune.config import load_config
from compresstune.data.glue import GLUE_DIR_ENV
from compresstune.pipeline import fingerprints
from compresstune.pipeline.atomic import replace_dir, restore_set_aside, run_lock
from compresstune.pipeline.identity import ContentHashes, model_identity
from compresstune.stages import STAGES


def _run(args, cwd):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, ["pipeline", "run", *args, "--no-progress"], catch_exceptions=False)
    finally:
        os.chdir(old)


def _ran(output):
    return [line.split("]")[0][1:] for line in output.splitlines() if line.startswith("[") and "] running" in line]


def _write_csv(src: Path, dst: Path, n: int) -> None:
    rows = [line.rstrip("\n").split("\t") for line in src.read_text(encoding="utf-8").splitlines()[1 : n + 1]]
    with open(dst, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([r[0].strip(), r[1]] for r in rows)


CUSTOM = """
name: t
model: {model}
seed: 7
task:
  name: custom
  train_file: train.csv
  dev_file: dev.csv
  max_length: 32
stages: [finetune, export]
finetune:
  epochs: 1
  lr: 1.0e-3
  batch_size: 16
  checkpoint_every_steps: 2
export:
  verify_shapes: [[1, 7]]
  variants: [fp32]
"""


def _custom_project(d: Path, tiny_bert: Path, glue_dir: Path) -> Path:
    shutil.copytree(tiny_bert, d / "model")
    _write_csv(glue_dir / "SST-2" / "train.tsv", d / "train.csv", 48)
    _write_csv(glue_dir / "SST-2" / "dev.tsv", d / "dev.csv", 16)
    (d / "p.yaml").write_text(CUSTOM.format(model=d / "model"))
    return d


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert, glue_dir):
    """A custom-task project whose [finetune, export] run is done (each test leaves it done)."""
    d = _custom_project(tmp_path_factory.mktemp("trust"), tiny_bert, glue_dir)
    r = _run(["p.yaml"], d)
    assert r.exit_code == 0, r.output
    assert _ran(r.output) == ["finetune", "export"]
    return d


def _swap_two_chars(path: Path) -> None:
    """Change the content, keep the size."""
    data = path.read_bytes()
    i = next(
        i
        for i in range(data.index(b"\n") + 1, len(data) - 1)
        if chr(data[i]).isalpha() and chr(data[i + 1]).isalpha() and data[i] != data[i + 1]
    )
    path.write_bytes(data[:i] + data[i + 1 : i + 2] + data[i : i + 1] + data[i + 2 :])


def test_reruns_follow_file_content_not_timestamps(project):
    d, run = project, project / "exported" / "t"
    size = (d / "dev.csv").stat().st_size
    _swap_two_chars(d / "dev.csv")
    assert (d / "dev.csv").stat().st_size == size
    r = _run(["p.yaml"], d)
    assert r.exit_code == 0, r.output
    assert _ran(r.output) == ["finetune", "export"]  # both read the dev file (training evaluation, ONNX check)
    cache = json.loads((run / ".content_hashes.json").read_text())
    assert {"size", "mtime_ns", "sha256"} <= set(cache[str((d / "dev.csv").resolve())])

    os.utime(d / "train.csv")  # touched, same content
    man = json.loads((run / "manifest.json").read_text())
    man["versions"]["torch"] = "0.0.1"
    (run / "manifest.json").write_text(json.dumps(man))
    r = _run(["p.yaml"], d)
    assert r.exit_code == 0 and _ran(r.output) == [], r.output
    changed = [line for line in r.output.splitlines() if "library versions changed" in line]
    assert len(changed) == 1 and "torch 0.0.1 -> " in changed[0]  # logged, nothing rerun for it
    man = json.loads((run / "manifest.json").read_text())
    assert set(man["versions"]) == {
        "torch",
        "transformers",
        "onnxruntime",
        "onnx",
        "torch_pruning",
        "compresstune",
        "python",
    }

    cfg = json.loads((d / "model" / "config.json").read_text())
    (d / "model" / "config.json").write_text(json.dumps({**cfg, "initializer_range": 0.03}, indent=2))
    r = _run(["p.yaml"], d)
    assert r.exit_code == 0, r.output
    assert _ran(r.output) == ["finetune", "export"]  # everything from the first stage that reads the model
    r = _run(["p.yaml"], d)
    assert _ran(r.output) == []


def test_unchanged_size_and_mtime_are_not_rehashed(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("text,label\nabc,0\n")
    old_ns = time.time_ns() - 3600 * 10**9
    os.utime(f, ns=(old_ns, old_ns))
    h = ContentHashes(tmp_path / "cache.json")
    first = h.file(f)
    h.save()
    f.write_text("text,label\nacb,0\n")  # same size; mtime set back: looks unchanged, so the recorded hash stands
    os.utime(f, ns=(old_ns, old_ns))
    assert ContentHashes(tmp_path / "cache.json").file(f) == first
    os.utime(f)  # a new mtime: hashed again, and the edit is seen
    again = ContentHashes(tmp_path / "cache.json")
    assert again.file(f) != first and again.changed


def test_fingerprints_cover_glue_dir_env_device_version_and_hub_ids(tmp_path, glue_dir, monkeypatch, tiny_bert):
    p = tmp_path / "p.yaml"
    p.write_text(
        f"name: t\nmodel: {tiny_bert}\ntask: {{name: sst2, max_length: 32}}\nstages: [finetune, export, benchmark]\n"
    )
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue_dir))
    cfg = load_config(p)
    base = fingerprints(cfg)
    (tmp_path / "glue2").mkdir()
    (tmp_path / "glue2" / "SST-2").symlink_to(glue_dir / "SST-2")  # same files, another folder
    monkeypatch.setenv(GLUE_DIR_ENV, str(tmp_path / "glue2"))
    assert fingerprints(cfg)["finetune"] != base["finetune"]
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue_dir))
    assert fingerprints(cfg) == base
    cuda = fingerprints(dataclasses.replace(cfg, device="cuda:1"))
    assert all(cuda[n] != base[n] for n in base)
    assert fingerprints(dataclasses.replace(cfg, device="cpu")) == fingerprints(
        dataclasses.replace(cfg, device="cpu:0")
    )
    monkeypatch.setattr(STAGES["export"], "version", STAGES["export"].version + 1)
    bumped = fingerprints(cfg)
    assert bumped["finetune"] == base["finetune"] and bumped["export"] != base["export"]
    hub = dataclasses.replace(cfg, model="someorg/some-model")
    assert model_identity(hub, ContentHashes()) == "hub:someorg/some-model"  # identified by its name only


def test_a_local_model_folder_counts_by_content_however_its_path_is_written(tmp_path, glue_dir, tiny_bert):
    """The same folder named from two pipeline files (relative to each, as a search's candidate pipelines and
    winner.yaml name it) or by its absolute path gives the same fingerprints; different contents do not."""
    shutil.copytree(tiny_bert, tmp_path / "models" / "m")
    text = "name: t\nmodel: {m}\ntask: {{name: sst2, glue_dir: {g}, max_length: 32}}\nstages: [finetune, export]\n"
    fps = []
    for folder, ref in (("a", "../models/m"), ("b/c", "../../models/m"), ("d", str(tmp_path / "models" / "m"))):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "p.yaml").write_text(text.format(m=ref, g=glue_dir))
        fps.append(fingerprints(load_config(tmp_path / folder / "p.yaml")))
    assert fps[0] == fps[1] == fps[2]
    shutil.copytree(tiny_bert, tmp_path / "models" / "m2")
    cfg = json.loads((tmp_path / "models" / "m2" / "config.json").read_text())
    (tmp_path / "models" / "m2" / "config.json").write_text(json.dumps({**cfg, "hidden_dropout_prob": 0.0}))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "p.yaml").write_text(text.format(m="../models/m2", g=glue_dir))
    assert fingerprints(load_config(tmp_path / "e" / "p.yaml"))["finetune"] != fps[0]["finetune"]


def test_damaged_checkpoint_starts_training_over(project):
    d, run = project, project / "exported" / "t"
    man = json.loads((run / "manifest.json").read_text())
    fp = man["stages"]["finetune"]["fingerprint"]
    tmp = run / "01_finetune.tmp"
    (run / "01_finetune").rename(tmp)  # as a run killed mid-training leaves it
    (tmp / ".fingerprint").write_text(fp)
    (tmp / "checkpoints").mkdir()
    (tmp / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 half a zip file" * 10)
    man["stages"]["finetune"]["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(man))
    r = _run(["p.yaml"], d)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert "checkpoint exported/t/01_finetune.tmp/checkpoints/last.pt cannot be read" in r.output
    assert "starts over from step 0" in r.output and "resuming from" not in r.output
    assert _ran(r.output) == ["finetune", "export"]


def test_set_aside_stage_folder_is_restored(project):
    d, run = project, project / "exported" / "t"
    (run / "02_export").rename(run / "02_export.old")  # killed between the two renames of a commit
    r = _run(["p.yaml"], d)
    assert r.exit_code == 0, r.output
    assert "02_export: restored from 02_export.old" in r.output and _ran(r.output) == []
    assert (run / "02_export" / "model.onnx").is_file() and not (run / "02_export.old").exists()


def test_stage_committed_before_the_manifest_said_so_is_adopted(project):
    """Killed after the rename of a commit, before the manifest update: the folder carries its
    fingerprint and summary, so the next run records it as done instead of training again."""
    d, run = project, project / "exported" / "t"
    path = run / "manifest.json"
    data = json.loads(path.read_text())
    before = data["stages"]["finetune"]["summary"]
    data["stages"]["finetune"].update(status="running", summary={})
    data["stages"]["export"]["status"] = "done"  # was made from the previous finetune: must not survive
    path.write_text(json.dumps(data))
    r = _run(["p.yaml"], d)
    assert r.exit_code == 0, r.output
    assert "[finetune] its finished output for fingerprint" in r.output and "01_finetune/: recorded as done" in r.output
    assert _ran(r.output) == ["export"]
    after = json.loads(path.read_text())["stages"]["finetune"]
    assert after["status"] == "done" and after["summary"]["dev_metric"] == before["dev_metric"]
    # a folder whose fingerprint is another's is not adopted
    data = json.loads(path.read_text())
    data["stages"]["export"]["status"] = "running"
    path.write_text(json.dumps(data))
    (run / "02_export" / ".fingerprint").write_text("0123456789abcdef")
    r = _run(["p.yaml"], d)
    assert r.exit_code == 0 and _ran(r.output) == ["export"], r.output


def test_replace_dir_never_loses_the_finished_folder(tmp_path, monkeypatch):
    final, new = tmp_path / "01_a", tmp_path / "01_a.tmp"
    final.mkdir()
    (final / "out.txt").write_text("old")
    new.mkdir()
    (new / "out.txt").write_text("new")
    real_rename = Path.rename

    def killed(self, target):
        if Path(target) == final:
            raise KeyboardInterrupt  # stopped after the old folder was set aside
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(new, final)
    monkeypatch.undo()
    assert not final.exists() and (tmp_path / "01_a.old" / "out.txt").read_text() == "old"
    restore_set_aside(tmp_path, log=lambda s: None)
    assert (final / "out.txt").read_text() == "old"
    replace_dir(new, final)
    assert (final / "out.txt").read_text() == "new" and not (tmp_path / "01_a.old").exists() and not new.exists()


def test_a_second_process_on_the_same_run_folder_is_refused(project):
    d, run = project, project / "exported" / "t"
    held, done = threading.Event(), threading.Event()

    def hold():
        with run_lock(run):
            held.set()
            done.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(30)
        r = CliRunner().invoke(main, ["pipeline", "run", str(d / "p.yaml"), "--output-dir", str(d / "exported")])
    finally:
        done.set()
        t.join()
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and str(run) in r.output
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in r.output and "--run-name" in r.output
    assert not (run / ".lock.owner").exists()  # removed when the holder let go


def test_damaged_manifest_is_a_user_error(tmp_path, tiny_bert, glue_dir):
    d = _custom_project(tmp_path, tiny_bert, glue_dir)
    run = d / "exported" / "t"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"stages": {"finetune": {"status": "do')  # cut short
    r = _run(["p.yaml"], d)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "exported/t/manifest.json: the run record cannot be read" in r.output and "Move it away" in r.output
    assert _ran(r.output) == [] and (run / "manifest.json").is_file()  # left for the user to look at
