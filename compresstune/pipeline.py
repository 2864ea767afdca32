"""Running a pipeline: ordering, skipping what is done, resuming, atomic outputs.

Each stage's fingerprint hashes its own settings (those that change its result), the
pipeline's model and task when the stage reads them, and its inputs' fingerprints.
A stage whose recorded fingerprint matches and whose output folder exists is
skipped; changing one setting therefore reruns that stage and exactly those
downstream of it. A stage writes into ``NN_name.tmp/``, renamed to ``NN_name/`` on
success. A training stage keeps its checkpoints in that temporary folder, so running
the same command after a crash resumes it (the folder is reused only when its
fingerprint matches)."""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable

from .config import PipelineConfig, fingerprint_fields
from .errors import CompresstuneError, UserError
from .manifest import Manifest, fingerprint, write_json_atomic
from .monitor import ResourceMonitor
from .stages import STAGES, StageContext
from .stages.base import InputRef, load_task_data

FP_FILE = ".fingerprint"


def run_dir_for(cfg: PipelineConfig, run_name: str | None = None, output_dir: str | None = None) -> Path:
    return Path(output_dir or cfg.output_dir) / (run_name or cfg.name)


def stage_fingerprints(cfg: PipelineConfig) -> dict[str, str]:
    fps: dict[str, str] = {}
    for name, scfg in cfg.stages.items():
        stage_cls = STAGES[scfg.type]
        payload = {"type": scfg.type, "settings": fingerprint_fields(scfg), "inputs": [fps[i] for i in cfg.stage_inputs(name)]}
        payload["settings"].pop("input", None)
        if stage_cls.uses_model_and_task:
            payload.update(model=cfg.model, task=cfg.task.model_dump(), seed=cfg.seed)
        fps[name] = fingerprint(payload)
    return fps


def stage_dirname(cfg: PipelineConfig, name: str) -> str:
    return f"{list(cfg.stages).index(name) + 1:02d}_{name}"


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
) -> Manifest:
    """Run (or resume) the pipeline; returns the manifest. Raises on the first failing stage,
    keeping every output already computed."""
    names = list(cfg.stages)
    for flag, val in (("--from", from_stage), ("--until", until_stage)):
        if val is not None and val not in names:
            raise UserError(f"{flag} {val}: no stage of that name in {cfg.source}; its stages are {', '.join(names)}.")
    if from_stage and until_stage and names.index(from_stage) > names.index(until_stage):
        raise UserError(f"--from {from_stage} comes after --until {until_stage}; swap them.")

    for src in reuse_from or []:
        if not (Path(src) / Manifest.FILE).is_file():
            raise UserError(f"--reuse-from {src}: no manifest.json there; give the folder of an earlier run (for example exported/quickstart).")
    if reuse_from and force:
        log("note: --force recomputes every stage, so --reuse-from has nothing to do")
    run_dir = run_dir_for(cfg, run_name, output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(run_dir)
    fps = stage_fingerprints(cfg)
    (run_dir / "config.resolved.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    manifest.set_run(run_name=run_dir.name, config_file=str(cfg.source), config=cfg.to_dict(), stage_order=names)

    forced = set(names if force else [])
    if from_stage:
        forced |= set(names[names.index(from_stage):])
    last = names.index(until_stage) if until_stage else len(names) - 1
    todo = [n for n in names[: last + 1] if n in forced or not manifest.is_done(n, fps[n])]
    shared: dict = {}
    if any(STAGES[cfg.stages[n].type].uses_model_and_task for n in todo):
        # read (and so check) the task data before any stage starts: a bad row fails fast
        shared["task"] = load_task_data(cfg)
    _quiet_hf()

    for i, name in enumerate(names[: last + 1]):
        scfg = cfg.stages[name]
        fp = fps[name]
        final_dir = run_dir / stage_dirname(cfg, name)
        if name not in forced and manifest.is_done(name, fp):
            log(f"[{name}] up to date (fingerprint {fp}), skipped")
            continue
        tmp_dir = final_dir.with_name(final_dir.name + ".tmp")
        if name not in forced and _reuse(name, scfg.type, fp, reuse_from, manifest, final_dir, run_dir, log, cfg.stage_inputs(name)):
            for dep in downstream_of(cfg, name):
                if manifest.stages.get(dep, {}).get("status") == "done":
                    manifest.update_stage(dep, status="stale")
            continue
        if tmp_dir.exists():
            old = (tmp_dir / FP_FILE).read_text().strip() if (tmp_dir / FP_FILE).is_file() else None
            if old != fp or name in forced:
                shutil.rmtree(tmp_dir)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        (tmp_dir / FP_FILE).write_text(fp)
        inputs = []
        for inp in cfg.stage_inputs(name):
            rec = manifest.stages.get(inp, {})
            inputs.append(InputRef(inp, cfg.stages[inp].type, run_dir / rec.get("output", stage_dirname(cfg, inp)), rec.get("summary", {})))
        ctx = StageContext(name, scfg, cfg, run_dir, tmp_dir, inputs, log=log, progress=progress, extra=shared)
        manifest.update_stage(name, type=scfg.type, fingerprint=fp, status="running", output=final_dir.name, error=None, reused_from=None,
                              started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), inputs=[r.name for r in inputs])
        log(f"[{name}] running ({scfg.type}, fingerprint {fp})")
        stage = STAGES[scfg.type]()
        try:
            with ResourceMonitor() as mon:
                summary = stage.run(ctx) or {}
        except BaseException as exc:
            manifest.update_stage(name, status="failed", error=f"{exc.__class__.__name__}: {exc}")
            if not isinstance(exc, (CompresstuneError, KeyboardInterrupt)):
                (tmp_dir / "error.txt").write_text(traceback.format_exc())
            raise
        summary = {**summary, "resources": mon.summary()}
        write_json_atomic(tmp_dir / "summary.json", summary)
        (tmp_dir / FP_FILE).unlink(missing_ok=True)
        _remove_scratch(tmp_dir)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        tmp_dir.rename(final_dir)
        manifest.update_stage(name, status="done", summary=summary, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              wall_time_s=summary["resources"]["wall_time_s"], peak_rss_mb=summary["resources"]["peak_rss_mb"])
        for dep in downstream_of(cfg, name):  # they read this stage's old output: never skip them as "done"
            if manifest.stages.get(dep, {}).get("status") == "done":
                manifest.update_stage(dep, status="stale")
        log(f"[{name}] done in {summary['resources']['wall_time_s']:.1f}s, peak RSS {summary['resources']['peak_rss_mb']:.0f} MB")
    return manifest


NOT_REUSED = {"benchmark", "report"}  # timings belong to a moment and a machine; the report publishes this run's files


def _reuse(name, stype, fp, sources, manifest: Manifest, final_dir: Path, run_dir: Path, log, inputs: list[str]) -> bool:
    """Copy a finished stage with the same type and fingerprint (same settings, model, task and
    inputs) from another run folder instead of recomputing it. Paths in its summary that point
    into the source run are rewritten to the matching stages of this run, or made absolute."""
    if not sources or stype in NOT_REUSED:
        return False
    for src in sources:
        src_man = Manifest.load(Path(src))
        for src_name, rec in src_man.stages.items():
            if rec.get("type") != stype or rec.get("fingerprint") != fp or rec.get("status") != "done":
                continue
            src_dir = src_man.run_dir / rec["output"]
            if not src_dir.is_dir():
                continue
            tmp_dir = final_dir.with_name(final_dir.name + ".tmp")
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir)
            shutil.copytree(src_dir, tmp_dir)
            # a path like "01_finetune/model" in the source run -> "01_teacher/model" here
            by_fp = {r.get("fingerprint"): r.get("output") for r in manifest.stages.values() if r.get("status") == "done"}
            by_fp[fp] = final_dir.name
            dirs = {r["output"]: by_fp.get(r.get("fingerprint")) for r in src_man.stages.values() if r.get("output")}

            def fix(v):
                if isinstance(v, dict):
                    return {k: fix(x) for k, x in v.items()}
                if isinstance(v, list):
                    return [fix(x) for x in v]
                if isinstance(v, str) and "/" in v and v.split("/", 1)[0] in dirs:
                    head, tail = v.split("/", 1)
                    return f"{dirs[head]}/{tail}" if dirs[head] else str(src_man.run_dir.resolve() / v)  # no counterpart here
                return v

            summary = fix(rec.get("summary", {}))
            write_json_atomic(tmp_dir / "summary.json", summary)
            if final_dir.exists():
                shutil.rmtree(final_dir)
            tmp_dir.rename(final_dir)
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            manifest.update_stage(name, type=stype, fingerprint=fp, status="done", output=final_dir.name, summary=summary, inputs=inputs,
                                  reused_from=f"{src_man.run_dir}/{rec['output']}", error=None, started_at=now, finished_at=now,
                                  wall_time_s=rec.get("wall_time_s"), peak_rss_mb=rec.get("peak_rss_mb"))
            log(f"[{name}] reused {src_man.run_dir / rec['output']} (same fingerprint {fp}; its wall time {rec.get('wall_time_s')} s was spent there)")
            return True
    log(f"[{name}] nothing to reuse (no finished {stype} stage with fingerprint {fp} in {', '.join(map(str, sources))})")
    return False


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


def _remove_scratch(stage_dir: Path) -> None:
    """Resumable training checkpoints are not part of a finished stage's output."""
    ck = stage_dir / "checkpoints"
    if ck.is_dir():
        hist = ck / "history.json"
        if hist.is_file():
            shutil.copy(hist, stage_dir / "history.json")
        shutil.rmtree(ck)


def run_status(run_dir: Path) -> dict:
    """What the manifest says of each stage, plus whether its output folder is there."""
    m = Manifest.load(run_dir)
    if not m.path.is_file():
        raise UserError(f"{run_dir}: no manifest.json; is this a run folder? Runs live in exported/RUN (see `compresstune pipeline run`).")
    out = {"run_dir": str(run_dir), "stages": []}
    for name in m.data.get("stage_order", list(m.stages)):
        rec = m.stages.get(name, {})
        out["stages"].append({"name": name, "type": rec.get("type"), "status": rec.get("status", "pending"),
                              "fingerprint": rec.get("fingerprint"), "output": str(run_dir / rec["output"]) if rec.get("output") else None,
                              "wall_time_s": rec.get("wall_time_s"), "error": rec.get("error"), "reused_from": rec.get("reused_from")})
    return out
