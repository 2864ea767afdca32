"""Reusing finished stages from other run folders (``pipeline run --reuse-from RUN``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..manifest import Manifest, write_json_atomic
from ..names import is_inside, name_problem
from .atomic import replace_dir
from .identity import ContentHashes

NOT_REUSED = {"benchmark", "report"}  # timings belong to a moment and a machine; the report publishes this run's files


def reuse_stage(
    name, stype, fp, sources, manifest: Manifest, final_dir: Path, run_dir: Path, log, inputs: list[str]
) -> bool:
    """Copy a finished stage with the same type and fingerprint (same settings, model, task and
    inputs) from another run folder instead of recomputing it. Paths in its summary that point
    into the source run are rewritten to the matching stages of this run, or made absolute."""
    if not sources or stype in NOT_REUSED:
        return False
    for src in sources:
        src_man = Manifest.load(Path(src))
        for rec in src_man.stages.values():
            if rec.get("type") != stype or rec.get("fingerprint") != fp or rec.get("status") != "done":
                continue
            src_dir = _source_dir(src_man, rec, fp, log)
            if src_dir is None:
                continue
            tmp_dir = final_dir.with_name(final_dir.name + ".tmp")
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir)
            shutil.copytree(src_dir, tmp_dir)
            summary = _relocate_paths(rec.get("summary", {}), src_man, manifest, fp, final_dir.name)
            write_json_atomic(tmp_dir / "summary.json", summary)
            replace_dir(tmp_dir, final_dir)
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            manifest.update_stage(
                name,
                type=stype,
                fingerprint=fp,
                status="done",
                output=final_dir.name,
                summary=summary,
                inputs=inputs,
                reused_from=f"{src_man.run_dir}/{rec['output']}",
                error=None,
                started_at=now,
                finished_at=now,
                wall_time_s=rec.get("wall_time_s"),
                peak_rss_mb=rec.get("peak_rss_mb"),
            )
            log(
                f"[{name}] reused {src_man.run_dir / rec['output']} "
                f"(same fingerprint {fp}; its wall time {rec.get('wall_time_s')} s was spent there)"
            )
            return True
    where = ", ".join(map(str, sources[:3])) + (f" and {len(sources) - 3} more run folders" if len(sources) > 3 else "")
    log(f"[{name}] nothing to reuse (no finished {stype} stage with fingerprint {fp} in {where})")
    return False


MODEL_STAGES = {"finetune", "compress", "attach", "merge"}  # their output is a model folder


def _source_dir(src_man: Manifest, rec: dict, fp: str, log) -> Path | None:
    """The other run's stage folder, only when it is a stage folder of that run (a plain name inside it, never a
    path the record points elsewhere) whose files are what was recorded when it finished (or, for a record made
    before outputs were recorded, that carries this fingerprint and its summary, and its model when it made one)."""
    out = rec.get("output")
    if name_problem(out, "output") or not is_inside(src_man.run_dir / out, src_man.run_dir):
        log(f"  not reused: {src_man.run_dir}'s run record names {out!r:.80} as a stage folder (not one of its own)")
        return None
    d = src_man.run_dir / out
    if not d.is_dir():
        return None
    recorded = rec.get("output_files")
    if recorded is not None:
        now = ContentHashes().output_files(d)
        changed = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
        if changed:
            log(f"  not reused: {d} changed since it finished ({', '.join(changed[:3])})")
            return None
        return d
    fp_file = d / ".fingerprint"
    complete = fp_file.is_file() and fp_file.read_text().strip() == fp and (d / "summary.json").is_file()
    if complete and rec.get("type") in MODEL_STAGES:
        complete = (d / "model" / "config.json").is_file() and any((d / "model").glob("*.safetensors"))
    if not complete:
        log(f"  not reused: {d} is incomplete (its fingerprint file, summary or model is missing)")
        return None
    return d


def _relocate_paths(summary: dict, src_man: Manifest, manifest: Manifest, fp: str, here: str) -> dict:
    """Paths in a copied summary that point into the source run -> the matching stage folders of
    this run (a path like "01_finetune/model" there -> "01_teacher/model" here), or absolute."""
    by_fp = {r.get("fingerprint"): r.get("output") for r in manifest.stages.values() if r.get("status") == "done"}
    by_fp[fp] = here
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

    return fix(summary)
