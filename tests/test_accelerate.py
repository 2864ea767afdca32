"""Data-parallel training under accelerate: `pipeline run --num-processes 2` on the CPU (gloo), through the CLI,
on a tiny random BERT and a slice of real SST-2 (96 examples, 2 epochs).

* Only the main process writes: an audit hook (a sitecustomize.py on PYTHONPATH) in every process of the job
  logs each file write, rename, removal and mkdir under the output folder to a per-process file; rank 1 (and
  the launchers) must log none, rank 0 must log the manifest, the checkpoints and the model (so the hook works).
* With dropout off, 2 processes match 1 process with the same global batch (15: split 8 + 7, the last batch of
  an epoch 3 + 3, so the loss weighting of unequal shards counts): the same steps, losses, dev metric and files;
  the weights differ by reduction order only (measured max abs diff 1.3e-7; bound 1e-5, while training moves
  them by about 5e-3, and weighting the two shards equally instead puts the weights 5.5e-3 apart).
* A whole-job kill after the step-4 checkpoint (COMPRESSTUNE_FAULT_KILL_AFTER_STEP, every rank) followed by the
  same command resumes and reaches bit-identical weights to an unbroken 2-process run, with dropout on: every
  rank's RNG state is restored from the checkpoint.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_pipeline
from safetensors.torch import load_file

from compresstune.cli import main

WEIGHT_TOL = 1e-5  # max abs weight difference, 1 vs 2 processes (reduction order only)
LOSS_RTOL = 1e-5  # relative train-loss difference per logged point

AUDIT = r"""
import os
_dir, _root = os.environ.get("CT_AUDIT_DIR"), os.environ.get("CT_AUDIT_ROOT")
if _dir and _root:
    import sys
    _tag = os.environ.get("RANK", "launcher")
    _log = open(os.path.join(_dir, f"writes.{_tag}.{os.getpid()}.txt"), "a", buffering=1)
    _wflags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        try:
            if event == "open":
                path, mode, flags = args
                if isinstance(path, (str, bytes, os.PathLike)) and os.path.isdir(path):
                    return  # O_TMPFILE in a folder (the preflight's write check): an anonymous file, nothing on disk
                writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _wflags)
            elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"):
                path, writes = args[0], True
            else:
                return
            if writes and isinstance(path, (str, bytes, os.PathLike)):
                p = os.path.abspath(os.fsdecode(path))
                if p.startswith(_root):
                    _log.write(f"{event} {p}\n")
        except Exception:
            pass

    sys.addaudithook(_hook)
"""


def _no_dropout(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _launch(d: Path, args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "compresstune.cli", "pipeline", "run", *args, "--num-processes", "2", "--no-progress"]
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=300)


def _weights(run: Path, stage: str = "01_finetune") -> dict:
    return load_file(run / stage / "model" / "model.safetensors")


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_bert, glue_dir):
    """The same finetune + export pipeline (dropout off) run by 1 process and by 2, the latter audited."""
    d = tmp_path_factory.mktemp("acc")
    write_pipeline(d / "p.yaml", _no_dropout(tiny_bert, d / "nodrop"), glue_dir, stages="[finetune, export]")
    over = ["export.variants=[fp32]", "finetune.batch_size=15"]  # 96 = 6 x 15 + 6: shards of 8 + 7, then 3 + 3
    old = os.getcwd()
    os.chdir(d)
    try:
        one = CliRunner().invoke(main, ["pipeline", "run", "p.yaml", *over, "--run-name", "one", "--no-progress"])
    finally:
        os.chdir(old)
    assert one.exit_code == 0, one.output
    audit = d / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT)
    pythonpath = os.pathsep.join(p for p in (str(audit), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": pythonpath, "CT_AUDIT_DIR": str(audit), "CT_AUDIT_ROOT": str(d / "exported")}
    two = _launch(d, ["p.yaml", *over, "--run-name", "two"], env)
    assert two.returncode == 0, two.stdout + two.stderr
    return d, two, audit


def test_only_the_main_process_writes(pair):
    d, two, audit = pair
    by_tag: dict[str, list[str]] = {}
    for f in audit.glob("writes.*.txt"):  # writes.TAG.PID.txt
        by_tag.setdefault(f.name.split(".")[1], []).extend(f.read_text().splitlines())
    assert {"0", "1", "launcher"} <= set(by_tag), sorted(audit.iterdir())  # the hook ran in every process
    assert by_tag["1"] == [], by_tag["1"][:10]
    assert by_tag["launcher"] == [], by_tag["launcher"][:10]
    main_writes = "\n".join(by_tag["0"])
    for what in ("manifest.json", "checkpoints/last.pt", "checkpoints/best.pt", "model/config.json", "model.onnx"):
        assert what in main_writes, what  # the hook sees the main process's writes: a stray one would show
    # the run folder holds exactly the files of the single-process run: no per-rank or duplicate files
    assert _files(d / "exported" / "two") == _files(d / "exported" / "one")
    assert two.stdout.count("[finetune] running") == 1 and two.stdout.count("run folder:") == 1  # one log


def test_two_processes_match_one_with_the_same_global_batch(pair):
    d, _, _ = pair
    man = {r: json.loads((d / "exported" / r / "manifest.json").read_text()) for r in ("one", "two")}
    s1, s2 = (man[r]["stages"]["finetune"]["summary"] for r in ("one", "two"))
    assert all(s["status"] == "done" for s in man["two"]["stages"].values())
    assert s1["batching"] == {"processes": 1, "global_batch_size": 15, "per_process_batch_size": 15}
    assert s2["batching"]["processes"] == 2 and s2["batching"]["backend"] == "gloo"
    assert s2["batching"]["global_batch_size"] == 15 and s2["batching"]["per_process_batch_size"] == 8
    assert s1["steps"] == s2["steps"] == 14
    for h1, h2 in zip(s1["history"], s2["history"], strict=True):
        assert h1["step"] == h2["step"] and h1["lr"] == h2["lr"]
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=LOSS_RTOL)
        assert h1["dev_main"] == h2["dev_main"]  # the gathered dev logits give the same accuracy
    w1, w2 = _weights(d / "exported" / "one"), _weights(d / "exported" / "two")
    assert w1.keys() == w2.keys()
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    init = {f"bert.{k}": v for k, v in load_file(d / "nodrop" / "model.safetensors").items()}
    moved = max((w1[k] - w0).abs().max().item() for k, w0 in init.items() if k in w1)
    print(f"max abs weight diff 1 vs 2 processes: {diff:.3g} (training moved weights by up to {moved:.3g})")
    assert diff < WEIGHT_TOL and moved > 1e-3
    e1, e2 = (man[r]["stages"]["export"]["summary"] for r in ("one", "two"))
    assert e1["dev_onnx"] == e2["dev_onnx"]  # the export ran once, on the main process, on the same model


def test_whole_job_kill_resumes_to_the_unbroken_result(tmp_path, tiny_bert, glue_dir):
    write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, stages="[finetune]")  # dropout on: RNG state matters
    unbroken = _launch(tmp_path, ["p.yaml", "--run-name", "u"])
    assert unbroken.returncode == 0, unbroken.stdout + unbroken.stderr
    killed = _launch(tmp_path, ["p.yaml", "--run-name", "k"], {"COMPRESSTUNE_FAULT_KILL_AFTER_STEP": "4"})
    assert killed.returncode != 0
    run = tmp_path / "exported" / "k"
    ck = torch.load(run / "01_finetune.tmp" / "checkpoints" / "last.pt", weights_only=False)
    assert ck["step"] == 4 and ck["world_size"] == 2 and len(ck["rng_ranks"]) == 2
    assert not torch.equal(ck["rng_ranks"][0]["torch"], ck["rng_ranks"][1]["torch"])  # each rank its own stream
    assert not (run / "01_finetune").exists()
    resumed = _launch(tmp_path, ["p.yaml", "--run-name", "k"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("resuming from checkpoint at step 4/12") == 1  # logged by the main process only
    summary = json.loads((run / "01_finetune" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 12
    wu, wk = _weights(tmp_path / "exported" / "u"), _weights(run)
    for k in wu:
        assert torch.equal(wu[k], wk[k]), k


def test_shard_weights_make_the_global_batch_mean():
    """Rank r of N takes batch[r::N] with weight N * n_r / n: DDP's average of weight x shard mean is the batch
    mean, whatever the shard sizes (a batch smaller than N gives the extra ranks weight 0)."""
    from types import SimpleNamespace

    from compresstune.train.distributed import DistributedTrainer

    losses = torch.rand(100, dtype=torch.float64)
    for n_batch, world in ((15, 2), (16, 2), (7, 3), (3, 4), (1, 2)):
        idx = list(range(10, 10 + n_batch))
        total, seen = 0.0, []
        for r in range(world):
            me = SimpleNamespace(procs=SimpleNamespace(world_size=world, rank=r))
            mine, w = DistributedTrainer._shard(me, idx)
            total += w * losses[mine].mean().item() / world  # what DDP's gradient average does to the losses
            seen += mine if w else []
        assert sorted(seen) == idx
        assert total == pytest.approx(losses[idx].mean().item(), rel=1e-12)


def test_a_failing_run_ends_the_same_with_one_process_or_two(tmp_path, tiny_bert, glue_dir):
    """A mistake found while a training stage runs on every process (here: weights cut short) exits 2 with the
    message of one process, not the launcher's exit code and traceback."""
    bad = shutil.copytree(tiny_bert, tmp_path / "cut")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 3])
    write_pipeline(tmp_path / "p.yaml", bad, glue_dir, stages="[finetune, export]")
    one = subprocess.run(
        [sys.executable, "-m", "compresstune.cli", "pipeline", "run", "p.yaml", "--run-name", "one", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    two = _launch(tmp_path, ["p.yaml", "--run-name", "two"])
    assert one.returncode == two.returncode == 2, (one.stderr[-2000:], two.stderr[-2000:])
    for r in (one, two):
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        assert r.stderr.count("error: model: the weights in") == 1 and "could not be loaded" in r.stderr
