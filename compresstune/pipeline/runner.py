"""Running a pipeline: plan what to run, skip what is done, run a stage, commit its output.

Each stage's fingerprint (fingerprint.py) hashes its own settings and code version, the
pipeline's model and task when the stage reads them (the data files and a local model by
content), the device kind, and its inputs' fingerprints. A stage whose recorded fingerprint
matches and whose output folder exists is skipped; changing one setting or input file
therefore reruns exactly the stages that depend on it. A stage writes into
``NN_name.tmp/``, renamed to ``NN_name/`` on success (atomic.py: the old folder is deleted
only once the new one is in place). A training stage keeps its checkpoints in that
temporary folder, so running the same command after a crash resumes it (the folder is
reused only when its fingerprint matches). One process at a time holds a run folder's lock.

Under ``accelerate launch`` (several processes, train/distributed.py) only the main process plans,
holds the lock and writes; it names each training stage (``distributed = True`` on the stage class)
to the other processes before running it, they run it with it (every write skipped) and wait at a
barrier until it is committed, and once no training stage is left they are let go (:func:`_follow`)."""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config.preflight import Checked, preflight, run_dir_of
from ..config.results import result_of
from ..config.sections import PipelineConfig
from ..errors import CompresstuneError, UserError
from ..machine import versions
from ..manifest import Manifest, disk_error, write_json_atomic
from ..measure.monitor import ResourceMonitor
from ..names import check_name
from ..stages import STAGES, StageContext
from ..stages.base import InputRef, load_task_data
from ..train.distributed import Processes, setup_processes, single_process_note
from ..train.faults import fault_point
from .atomic import restore_set_aside, run_lock
from .fingerprint import stage_fingerprints
from .identity import CACHE_FILE, ContentHashes
from .outputs import FP_FILE, adopt_committed, commit, intact
from .reuse import reuse_stage


def run_dir_for(cfg: PipelineConfig, run_name: str | None = None, output_dir: str | None = None) -> Path:
    """The run folder: a plain name (names.py) inside the output folder."""
    check_name(run_name or cfg.name, "--run-name" if run_name else "name")
    return run_dir_of(cfg, run_name, output_dir)


def fingerprints(cfg: PipelineConfig, run_dir: Path | None = None) -> dict[str, str]:
    """Every stage's fingerprint; ``run_dir``: keep the content hashes of files in its cache."""
    hashes = ContentHashes(run_dir / CACHE_FILE if run_dir is not None else None)
    fps = stage_fingerprints(cfg, lambda stype: STAGES[stype], hashes)
    hashes.save()
    return fps


def stage_dirname(cfg: PipelineConfig, name: str) -> str:
    return f"{list(cfg.stages).index(name) + 1:02d}_{name}"


@dataclass
class _Plan:
    """Which stages run: every stage up to ``last``, those in ``forced`` even when done."""

    names: list[str]
    last: int
    forced: set[str]
    fps: dict[str, str]
    shared: dict = field(default_factory=dict)
    followers: _Followers = field(default_factory=lambda: _Followers(Processes()))


class _Followers:
    """The main process's side of a multi-process run (no-ops with one process): it names each training
    stage to the other processes before running it, waits for them once it is committed, and lets them
    go when no training stage is left."""

    def __init__(self, procs: Processes):
        self.procs, self.waiting, self.joined = procs, procs.world_size > 1, False

    def start(self, name: str, inputs: list[InputRef]) -> None:
        if self.waiting:
            self.procs.broadcast({"name": name, "inputs": [(r.name, r.type, r.dir, r.result.dump()) for r in inputs]})
            self.joined = True

    def finish(self) -> None:
        if self.joined:
            self.procs.barrier()  # committed: the others may read it as the next stage's input
            self.joined = False

    def release(self) -> None:
        if self.waiting:
            self.procs.broadcast(None)
            self.waiting = False


def _trains(cfg: PipelineConfig, name: str) -> bool:
    return getattr(STAGES[cfg.stages[name].type], "distributed", False)


def run_pipeline(
    cfg: PipelineConfig,
    run_name: str | None = None,
    from_stage: str | None = None,
    until_stage: str | None = None,
    force: bool = False,
    output_dir: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    reuse_from: list | None = None,
    checked: Checked | None = None,
) -> Manifest:
    """Run (or resume) the pipeline; returns the manifest. Raises on the first failing stage,
    keeping every output already computed. Holds the run folder's lock throughout.

    Before anything is written, every check of config/preflight.py runs (the task data, the model,
    the machine, the run folder) and all problems are raised at once; ``checked``: what
    :func:`~compresstune.config.preflight.check_pipeline` already checked and read for this run folder."""
    procs = setup_processes(cfg.device)  # one process, or one of several under `accelerate launch`
    log = log if procs.is_main else _silent
    _check_flags(cfg, from_stage, until_stage, reuse_from, force, log)
    run_dir = run_dir_for(cfg, run_name, output_dir)
    if checked is None or checked.run_dir != run_dir:
        checked = preflight(cfg, run_dir)
    if not procs.is_main:
        return _follow(cfg, run_dir, procs, checked.task)
    if note := single_process_note():
        log(note)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(run_dir):
            restore_set_aside(run_dir, log)
            manifest = _start(cfg, run_dir, log)
            plan = _plan(cfg, manifest, run_dir, from_stage, until_stage, force, checked.task, _Followers(procs))
            _quiet_hf()
            _run_plan(_Run(cfg, manifest, run_dir, plan, log, progress), reuse_from)
    except OSError as exc:
        err = disk_error(exc, f"run {run_dir}")
        if err is None:
            raise
        raise err from None
    return manifest


def _silent(_msg: str) -> None:
    pass


def _follow(cfg: PipelineConfig, run_dir: Path, procs: Processes, task) -> Manifest:
    """A non-main process of a multi-process run: run each training stage the main process names, in its
    temporary folder, writing nothing (the stage and the trainer skip their writes), until let go."""
    _quiet_hf()
    shared = {"task": task} if task is not None else {}
    while (msg := procs.broadcast(None)) is not None:
        name, scfg = msg["name"], cfg.stages[msg["name"]]
        tmp_dir = run_dir / (stage_dirname(cfg, name) + ".tmp")
        inputs = [InputRef.of(*r) for r in msg["inputs"]]
        ctx = StageContext(name, scfg, cfg, run_dir, tmp_dir, inputs, log=_silent, progress=False, extra=shared)
        STAGES[scfg.type]().run(ctx)
        procs.barrier()  # the main process commits the stage before anyone goes on
    return Manifest.load(run_dir)


def _start(cfg: PipelineConfig, run_dir: Path, log) -> Manifest:
    """The run's manifest, with this run's config and library versions recorded."""
    manifest = Manifest.load(run_dir)
    write_json_atomic(run_dir / "config.resolved.json", cfg.to_dict())
    changed = manifest.record_versions(versions())
    if changed:
        log(
            f"library versions changed since this run folder was last run: {', '.join(changed)}; finished stages "
            "are kept (fingerprints decide what reruns); --force recomputes them with these versions"
        )
    manifest.set_run(
        run_name=run_dir.name, config_file=str(cfg.source), config=cfg.to_dict(), stage_order=list(cfg.stages)
    )
    return manifest


@dataclass
class _Run:
    """One invocation's shared state: the config, the run record and folder, the plan, where to log."""

    cfg: PipelineConfig
    manifest: Manifest
    run_dir: Path
    plan: _Plan
    log: Callable[[str], None]
    progress: bool


def _run_plan(run: _Run, reuse_from) -> None:
    cfg, plan, manifest, run_dir, log = run.cfg, run.plan, run.manifest, run.run_dir, run.log
    names = plan.names[: plan.last + 1]
    hashes = ContentHashes(run_dir / CACHE_FILE)
    for i, name in enumerate(names):
        if not any(_trains(cfg, n) for n in names[i:]):
            plan.followers.release()  # no training stage left: the other processes end here
        fp = plan.fps[name]
        final_dir = run_dir / stage_dirname(cfg, name)
        if name not in plan.forced and manifest.is_done(name, fp) and intact(manifest, name, final_dir, hashes, log):
            log(f"[{name}] up to date (fingerprint {fp}), skipped")
            continue
        if name not in plan.forced and adopt_committed(manifest, name, fp, final_dir, hashes, log):
            _mark_downstream_stale(cfg, manifest, name)
            continue
        if name not in plan.forced and reuse_stage(
            name, cfg.stages[name].type, fp, reuse_from, manifest, final_dir, run_dir, log, cfg.stage_inputs(name)
        ):
            manifest.update_stage(name, output_files=hashes.output_files(final_dir))
            _mark_downstream_stale(cfg, manifest, name)
            continue
        _run_stage(run, name, fp, final_dir)
        manifest.update_stage(name, output_files=hashes.output_files(final_dir))
        hashes.save()
    plan.followers.release()
    hashes.save()


def _check_flags(cfg: PipelineConfig, from_stage, until_stage, reuse_from, force, log) -> None:
    names = list(cfg.stages)
    for flag, val in (("--from", from_stage), ("--until", until_stage)):
        if val is not None and val not in names:
            raise UserError(f"{flag} {val}: no stage of that name in {cfg.source}; its stages are {', '.join(names)}.")
    if from_stage and until_stage and names.index(from_stage) > names.index(until_stage):
        raise UserError(f"--from {from_stage} comes after --until {until_stage}; swap them.")
    for src in reuse_from or []:
        if not (Path(src) / Manifest.FILE).is_file():
            raise UserError(
                f"--reuse-from {src}: no manifest.json there; give the folder of an earlier run "
                "(for example exported/quickstart)."
            )
    if reuse_from and force:
        log("note: --force recomputes every stage, so --reuse-from has nothing to do")


def _plan(
    cfg: PipelineConfig, manifest: Manifest, run_dir: Path, from_stage, until_stage, force, task=None, followers=None
) -> _Plan:
    names = list(cfg.stages)
    fps = fingerprints(cfg, run_dir)
    forced = set(names if force else [])
    if from_stage:
        forced |= set(names[names.index(from_stage) :])
    last = names.index(until_stage) if until_stage else len(names) - 1
    plan = _Plan(names, last, forced, fps, followers=followers or _Followers(Processes()))
    todo = [n for n in names[: last + 1] if n in forced or not manifest.is_done(n, fps[n])]
    if any(STAGES[cfg.stages[n].type].uses_model_and_task for n in todo):
        # the task data the preflight read (and checked), else read now, before any stage starts
        plan.shared["task"] = task if task is not None else load_task_data(cfg)
    return plan


def _prepare_tmp(tmp_dir: Path, fp: str, forced: bool) -> None:
    """A stage's temporary folder; one left by an interrupted run with the same fingerprint is kept (resume)."""
    if tmp_dir.exists():
        old = (tmp_dir / FP_FILE).read_text().strip() if (tmp_dir / FP_FILE).is_file() else None
        if old != fp or forced:
            shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    (tmp_dir / FP_FILE).write_text(fp)


def _run_stage(run: _Run, name: str, fp: str, final_dir: Path) -> None:
    cfg, manifest, run_dir, plan, log = run.cfg, run.manifest, run.run_dir, run.plan, run.log
    scfg = cfg.stages[name]
    tmp_dir = final_dir.with_name(final_dir.name + ".tmp")
    _prepare_tmp(tmp_dir, fp, name in plan.forced)
    inputs = []
    for inp in cfg.stage_inputs(name):
        rec = manifest.stages.get(inp, {})
        out = run_dir / stage_dirname(cfg, inp)  # never a folder the run record names elsewhere
        inputs.append(InputRef.of(inp, cfg.stages[inp].type, out, rec.get("summary", {})))
    ctx = StageContext(name, scfg, cfg, run_dir, tmp_dir, inputs, log=log, progress=run.progress, extra=plan.shared)
    manifest.update_stage(
        name,
        type=scfg.type,
        fingerprint=fp,
        status="running",
        output=final_dir.name,
        output_files=None,
        error=None,
        reused_from=None,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        inputs=[r.name for r in inputs],
    )
    log(f"[{name}] running ({scfg.type}, fingerprint {fp})")
    if _trains(cfg, name):
        plan.followers.start(name, inputs)  # the other processes of a multi-process run train with this one
    try:
        with ResourceMonitor() as mon:
            summary = result_of(scfg.type, STAGES[scfg.type]().run(ctx) or {}).dump()  # the stage type's contract
    except BaseException as exc:
        err = disk_error(exc, f"stage {name}") if isinstance(exc, OSError) else None
        try:
            manifest.update_stage(name, status="failed", error=f"{exc.__class__.__name__}: {exc}")
            if err is None and not isinstance(exc, (CompresstuneError, KeyboardInterrupt)):
                (tmp_dir / "error.txt").write_text(traceback.format_exc())
        except OSError:
            pass  # the disk that failed the stage may refuse the record too; the manifest on disk stays consistent
        if err is not None:
            raise err from None
        raise
    summary = {**summary, "resources": mon.summary()}
    commit(tmp_dir, final_dir, summary, name)
    fault_point("stage_committed", name)  # crash tests: renamed into place, not yet recorded as done
    res = summary["resources"]
    manifest.update_stage(
        name,
        status="done",
        summary=summary,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        wall_time_s=res["wall_time_s"],
        peak_rss_mb=res["peak_rss_mb"],
    )
    _mark_downstream_stale(cfg, manifest, name)
    plan.followers.finish()
    log(f"[{name}] done in {res['wall_time_s']:.1f}s, peak RSS {res['peak_rss_mb']:.0f} MB")


def _mark_downstream_stale(cfg: PipelineConfig, manifest: Manifest, name: str) -> None:
    """Stages that read ``name``'s old output are never skipped as "done" afterwards."""
    for dep in downstream_of(cfg, name):
        if manifest.stages.get(dep, {}).get("status") == "done":
            manifest.update_stage(dep, status="stale")


def downstream_of(cfg: PipelineConfig, name: str) -> list[str]:
    """Every stage that reads ``name``'s output, directly or through other stages."""
    out: list[str] = []
    for n in cfg.stages:
        if any(i == name or i in out for i in cfg.stage_inputs(n)):
            out.append(n)
    return out


def _quiet_hf() -> None:
    """transformers' per-load progress bars and reports drown the run log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run_status(run_dir: Path) -> dict:
    """What the manifest says of each stage, plus whether its output folder is there."""
    m = Manifest.load(run_dir)
    if not m.path.is_file():
        raise UserError(
            f"{run_dir}: no manifest.json; is this a run folder? Runs live in exported/RUN "
            "(see `compresstune pipeline run`)."
        )
    out = {"run_dir": str(run_dir), "stages": []}
    for name in m.data.get("stage_order", list(m.stages)):
        rec = m.stages.get(name, {})
        out["stages"].append(
            {
                "name": name,
                "type": rec.get("type"),
                "status": rec.get("status", "pending"),
                "fingerprint": rec.get("fingerprint"),
                "output": str(run_dir / rec["output"]) if rec.get("output") else None,
                "wall_time_s": rec.get("wall_time_s"),
                "error": rec.get("error"),
                "reused_from": rec.get("reused_from"),
            }
        )
    return out
