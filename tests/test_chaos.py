"""Chaos-tested resume: a real pipeline (tiny BERT, slices of real SST-2; Learners with priming, merge,
export, benchmark, report) run as a subprocess and SIGKILLed again and again at seeded random moments
(inside training steps, inside checkpoint writes, between a stage's folder rename and the manifest update,
during export, benchmark and report, between stages), rerunning the same command each time. At the end the
run is complete, every artifact loads, and the weights, dev metrics and exported ONNX weights equal those of
an uninterrupted run with the same seed, bit for bit."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from compresstune.deploy.layout import model_path

REPO = Path(__file__).resolve().parent.parent
STAGES = ["finetune", "merge", "export", "benchmark", "ship", "report"]


def _pipeline(path: Path, model: Path, glue_dir: Path) -> Path:
    path.write_text(f"""
name: chaos
model: {model}
seed: 11
task:
  name: sst2
  glue_dir: {glue_dir}
  train_subset: 96
  dev_subset: 48
  max_length: 32
stages: [{", ".join(STAGES)}]
finetune:
  method: learner
  rank: 4
  priming_epochs: 1
  epochs: 3
  lr: 1.0e-3
  batch_size: 16
  checkpoint_every_steps: 1
merge: {{}}
export:
  verify_shapes: [[1, 7], [3, 19]]
  variants: [fp32, int8_dynamic]
benchmark:
  batch_sizes: [1]
  seq_lengths: [16]
  warmup: 1
  iters: 3
  rounds: 1
  min_time_s: 0
  pytorch: false
  footprint: false
ship:
  shape: [1, 16]
  edge: false
""")
    return path


@dataclass
class Event:
    """One interrupted run: SIGKILL ``delay`` seconds after the line ``[stage] <trigger>`` appears, or at
    a fault point (``fault``, via $COMPRESSTUNE_FAULT_KILL_AT; if the run never reaches it, right after
    ``[stage] done``)."""

    stage: str
    kind: str  # "running" (a moment after the stage starts), "done" (between stages), "start" (after launch), "fault"
    delay: float = 0.0
    fault: str | None = None


class Runner:
    def __init__(self, cwd: Path, pipeline: Path):
        self.cwd, self.pipeline = cwd, pipeline
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        for k in ("COMPRESSTUNE_FAULT_KILL_AT", "COMPRESSTUNE_FAULT_KILL_AFTER_STEP"):
            self.env.pop(k, None)

    def run(self, out: str, event: Event | None = None, timeout: float = 600) -> tuple[int, str, bool]:
        """(return code, output, whether this harness sent the kill) of one ``pipeline run``; SIGKILLed
        (its whole process group) as ``event`` says."""
        env = dict(self.env)
        if event is not None and event.kind == "fault":
            env["COMPRESSTUNE_FAULT_KILL_AT"] = event.fault
        cmd = [sys.executable, "-m", "compresstune.cli", "pipeline", "run", str(self.pipeline)]
        proc = subprocess.Popen(
            [*cmd, "--no-progress", "--output-dir", out],
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the kill reaches any child it started
        )
        lines: queue.Queue = queue.Queue()
        log: list[str] = []

        def read():
            for line in proc.stdout:
                log.append(line)
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        killed = False
        if event is not None:
            trigger = (
                None
                if event.kind == "start"
                else f"[{event.stage}] " + ("running" if event.kind == "running" else "done")
            )
            killed = self._kill_at(proc, lines, trigger, event.delay, timeout)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=30)
        return proc.returncode, "".join(log), killed

    @staticmethod
    def _kill_at(proc, lines: queue.Queue, trigger: str | None, delay: float, timeout: float) -> bool:
        """SIGKILL ``delay`` seconds after a line starting with ``trigger`` (None: after the start)."""
        deadline = time.monotonic() + timeout
        while trigger is not None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                return False
            if line.startswith(trigger):
                break
        time.sleep(delay)
        if proc.poll() is not None:
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        return True


def _schedule(rng: random.Random, wall: dict[str, float]) -> list[Event]:
    """Kills in pipeline order, so that every stage is reached and hit several times."""

    def at_random(stage, frac=0.9):
        return Event(stage, "running", rng.uniform(0.0, frac * wall[stage]))

    ev = [Event("finetune", "start", rng.uniform(0.5, 4.0))]  # while it starts (imports, planning, the lock)
    # a finished training stage killed before its commit trains again from step 0, so these come first: the
    # training whose output is kept is then the one the kills below interrupt (and it has to resume to match)
    ev += [Event("finetune", "fault", fault="stage_done:finetune")]  # checkpoints dropped, not yet renamed
    ev += [at_random("finetune", 0.6) for _ in range(3)]  # inside training steps (a resumed one is shorter)
    ev += [Event("finetune", "fault", fault=f"checkpoint_write@{rng.randint(1, 3)}")]
    ev += [Event("finetune", "fault", fault="checkpoint_write:best.pt@1")]  # the best weights' file
    ev += [at_random("finetune", 0.6) for _ in range(3)]
    # renamed into place, manifest not yet updated: the next run records it as done without training again
    ev += [Event("finetune", "fault", fault="stage_committed:finetune")]
    ev += [at_random("merge"), Event("merge", "fault", fault="stage_committed:merge")]
    # spare kills where no event is skipped: a late finetune kill can carry the run past that stage's later
    # events (seen: 4 skipped, 19 of 20 landed), and the count below must not hang on that
    ev += [at_random("export") for _ in range(6)] + [Event("export", "fault", fault="stage_done:export")]
    ev += [Event("export", "done")]
    ev += [at_random("benchmark") for _ in range(2)] + [Event("benchmark", "fault", fault="stage_committed:benchmark")]
    ev += [at_random("ship", 0.5), Event("ship", "fault", fault="stage_committed:ship")]
    ev += [at_random("report", 0.5) for _ in range(2)] + [Event("report", "fault", fault="stage_committed:report")]
    return ev


def _done(run: Path) -> set[str]:
    man = run / "manifest.json"
    if not man.is_file():
        return set()
    return {n for n, s in json.loads(man.read_text())["stages"].items() if s.get("status") == "done"}


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not (wa[k] == wb[k]).all()]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def _without_times(summary: dict) -> dict:
    """A finetune summary without what legitimately varies between runs (timings, resumption, resources)."""
    drop = {"train_time_s", "resumed_from_step", "resources"}
    out = {k: v for k, v in summary.items() if k not in drop}
    out["history"] = [{k: v for k, v in h.items() if k != "train_time_s"} for h in summary["history"]]
    return out


def test_repeated_sigkills_resume_to_the_uninterrupted_result(tmp_path, tiny_bert, glue_dir):
    p = _pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    runner = Runner(tmp_path, p)
    t0 = time.monotonic()
    rc, out, _ = runner.run("ref")
    assert rc == 0, out[-3000:]
    ref = tmp_path / "ref" / "chaos"
    ref_man = json.loads((ref / "manifest.json").read_text())
    wall = {s: ref_man["stages"][s]["wall_time_s"] for s in STAGES}

    run = tmp_path / "chaos" / "chaos"
    kills, kinds, outputs, cut_files, story = [], set(), [], 0, []
    seed = int(os.environ.get("COMPRESSTUNE_CHAOS_SEED", "20240611"))  # another seed: other moments (soak runs)
    for i, ev in enumerate(_schedule(random.Random(seed), wall)):
        if ev.stage in _done(run):  # (reading the manifest: every kill left it readable)
            story.append(f"{ev}: skipped, {ev.stage} is done")  # a late kill carried the run past it
            continue
        rc, out, by_harness = runner.run("chaos", ev)
        outputs.append(out)
        ran = [ln.split("]")[0][1:] for ln in out.splitlines() if ln.startswith("[") and "] running" in ln]
        story.append(f"{ev}: exit {rc}, ran {ran}")
        assert rc in (0, -signal.SIGKILL), f"event {i} {ev}: exit {rc}\n{out[-3000:]}"
        if rc == -signal.SIGKILL:
            kills.append(ev)
            fault = ev.kind == "fault" and not by_harness
            kinds.add(
                ev.fault.split("@")[0].split(":")[0]
                if fault
                else f"{'done' if ev.kind == 'fault' else ev.kind}:{ev.stage}"
            )
            if fault and ev.fault.startswith("checkpoint_write"):  # a half-written checkpoint left behind
                cut_files += len(list((run / "01_finetune.tmp" / "checkpoints").glob("*.pt.tmp")))
    assert len(kills) >= 20, f"only {len(kills)} kills landed:\n" + "\n".join(story)
    assert {"checkpoint_write", "stage_done", "stage_committed", "running:finetune", "running:export"} <= kinds
    assert any("resuming from checkpoint at step" in o for o in outputs), "no kill landed inside training"
    assert cut_files, "no kill landed inside a checkpoint write"

    rc, out, _ = runner.run("chaos")
    assert rc == 0, out[-3000:]
    assert _done(run) == set(STAGES)
    rc, out, _ = runner.run("chaos")  # and it is complete: nothing left to do
    assert rc == 0 and out.count("skipped") == len(STAGES), out[-3000:]
    assert not list(run.glob("[0-9][0-9]_*.tmp")) and not list(run.glob("[0-9][0-9]_*.old"))  # no stage left half-way

    # the same weights as the uninterrupted run, bit for bit, and the same metrics
    _same_weights(
        run / "01_finetune" / "model" / "model.safetensors", ref / "01_finetune" / "model" / "model.safetensors"
    )
    _same_weights(run / "02_merge" / "model" / "model.safetensors", ref / "02_merge" / "model" / "model.safetensors")
    man = json.loads((run / "manifest.json").read_text())
    ft, ft_ref = man["stages"]["finetune"]["summary"], ref_man["stages"]["finetune"]["summary"]
    assert ft["resumed_from_step"], "the kept training must be one that was killed and resumed"
    assert _without_times(ft) == _without_times(ft_ref)
    ex, ex_ref = man["stages"]["export"]["summary"], ref_man["stages"]["export"]["summary"]
    for k in ("dev_pytorch", "dev_onnx", "max_abs_diff"):
        assert ex[k] == ex_ref[k], k
    assert {v: r["dev"] for v, r in ex["variants"].items()} == {v: r["dev"] for v, r in ex_ref["variants"].items()}
    assert man["stages"]["merge"]["summary"]["max_abs_diff"] == ref_man["stages"]["merge"]["summary"]["max_abs_diff"]

    # every artifact loads
    from compresstune.deploy import Predictor
    from compresstune.methods import load_artifact

    for stage in ("01_finetune", "02_merge"):
        model, tok, meta = load_artifact(run / stage / "model")
        assert meta["task"]["name"] == "sst2" and model(**tok(["a fine film"], return_tensors="pt")).logits.shape == (
            1,
            2,
        )
    import onnxruntime as ort

    for name in ("model.onnx", "model.int8_dynamic.onnx"):
        ort.InferenceSession(str(run / "03_export" / name), providers=["CPUExecutionProvider"])
        a, b = _initializers(run / "03_export" / name), _initializers(ref / "03_export" / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    # the bundle ships the variant the benchmark found fastest (timing, so either run may pick another one):
    # its weights are that variant's, the same as the uninterrupted run's file of that name
    chosen = man["stages"]["ship"]["summary"]["decision"]["chosen"]
    shipped = _initializers(model_path(run / "deploy"))
    same_variant = _initializers(ref / "03_export" / ("model.onnx" if chosen == "fp32" else f"model.{chosen}.onnx"))
    assert shipped.keys() == same_variant.keys() and all(np.array_equal(shipped[k], same_variant[k]) for k in shipped)
    texts = [t[0] for t in _dev_texts(glue_dir, 16)]
    got = Predictor(run / "deploy").predict(texts, warn=False)
    want = Predictor(ref / "deploy").predict(texts, warn=False)
    if chosen == ref_man["stages"]["ship"]["summary"]["decision"]["chosen"]:
        assert got == want
    else:
        assert len(got) == len(want) == 16 and all(0.5 <= g["score"] <= 1 for g in got)
    print("\n".join(["", *story, f"seed {seed}: {len(kills)} kills ({sorted(kinds)}) in {time.monotonic() - t0:.0f}s"]))


def _dev_texts(glue_dir: Path, n: int) -> list[tuple[str, ...]]:
    from compresstune.data.glue import load_glue

    return load_glue("sst2", "local", str(glue_dir)).dev.texts[:n]


@pytest.fixture(autouse=True)
def _no_inherited_faults(monkeypatch):
    monkeypatch.delenv("COMPRESSTUNE_FAULT_KILL_AT", raising=False)
    monkeypatch.delenv("COMPRESSTUNE_FAULT_KILL_AFTER_STEP", raising=False)
