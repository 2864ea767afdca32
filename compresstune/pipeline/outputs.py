"""A finished stage's output: committed into place by renames, recorded by content, checked before it is trusted.

* :func:`commit`: the summary is written, scratch (checkpoints) dropped and the temporary folder renamed into
  place (atomic.py deletes the old one only once the new one is there); ``.fingerprint`` stays in the folder.
* :func:`intact`: the files are what the run record says they were when the stage finished (sha256 per file);
  a file edited, replaced or removed since makes the stage run again instead of being skipped.
* :func:`adopt_committed`: a folder carrying this fingerprint and its summary is recorded as done, so a kill
  between the rename and the record, or a later run with another setting that stopped, never costs the work."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..manifest import Manifest, write_json_atomic
from ..train.faults import fault_point
from .atomic import replace_dir
from .identity import ContentHashes

FP_FILE = ".fingerprint"


def intact(manifest: Manifest, name: str, final_dir: Path, hashes: ContentHashes, log) -> bool:
    """A finished stage's output is what it was when recorded (a file replaced, edited or removed since is noticed,
    and the stage runs again); a record made before outputs were recorded is trusted once and recorded now."""
    rec = manifest.stages.get(name, {})
    if not final_dir.is_dir():
        log(f"[{name}] its output folder {final_dir.name}/ is gone: running it again")
        return False
    now = hashes.output_files(final_dir)
    before = rec.get("output_files")
    if before is None:
        manifest.update_stage(name, output_files=now)
        return True
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        log(f"[{name}] its output changed since it was made ({shown} in {final_dir.name}/): running it again")
        return False
    return True


def commit(tmp_dir: Path, final_dir: Path, summary: dict, name: str = "") -> None:
    """Write the summary, drop scratch, and rename the temporary folder into place (the old one
    is deleted only once the new one is there)."""
    write_json_atomic(tmp_dir / "summary.json", summary)
    _remove_scratch(tmp_dir)  # the fingerprint file stays: it lets an interrupted commit be adopted
    fault_point("stage_done", name)  # crash tests: finished, not yet renamed into place
    replace_dir(tmp_dir, final_dir)


def adopt_committed(manifest: Manifest, name: str, fp: str, final_dir: Path, hashes: ContentHashes, log) -> bool:
    """A finished stage folder made for this fingerprint that the manifest does not record as done: a run killed
    after the folder was renamed into place but before the manifest said so, or a later run with another setting
    that was interrupted or failed (its attempt lives in NN_name.tmp/; the finished folder was never touched). The
    folder carries the fingerprint it was computed for and its summary, so it is recorded as done instead of being
    computed again."""
    rec = manifest.stages.get(name, {})
    if rec.get("status") in ("done", "stale"):
        return False  # done: its files were checked (intact); stale: its inputs were recomputed since
    fp_file, summary_file = final_dir / FP_FILE, final_dir / "summary.json"
    if not fp_file.is_file() or fp_file.read_text().strip() != fp or not summary_file.is_file():
        return False
    tmp_fp = final_dir.with_name(final_dir.name + ".tmp") / FP_FILE
    if tmp_fp.is_file() and tmp_fp.read_text().strip() == fp:
        return False  # a later attempt at this same fingerprint is under way: resume that one
    try:
        summary = json.loads(summary_file.read_text())
    except ValueError:
        return False
    res = summary.get("resources", {})
    manifest.update_stage(
        name,
        status="done",
        fingerprint=fp,
        output=final_dir.name,
        error=None,
        summary=summary,
        finished_at=rec.get("finished_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        wall_time_s=res.get("wall_time_s"),
        peak_rss_mb=res.get("peak_rss_mb"),
        output_files=hashes.output_files(final_dir),
    )
    log(f"[{name}] its finished output for fingerprint {fp} is in {final_dir.name}/: recorded as done, not rerun")
    return True


def _remove_scratch(stage_dir: Path) -> None:
    """Resumable training checkpoints are not part of a finished stage's output."""
    ck = stage_dir / "checkpoints"
    if ck.is_dir():
        hist = ck / "history.json"
        if hist.is_file():
            shutil.copy(hist, stage_dir / "history.json")
        shutil.rmtree(ck)
