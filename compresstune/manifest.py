"""The run record: ``exported/RUN/manifest.json``.

One entry per stage: type, fingerprint, status, output folder, summary, timings; and the
library versions of the run. Written atomically after every change (a temporary file,
flushed to disk, then renamed over the old one) so a killed run leaves a readable record."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

from .errors import UserError
from .names import is_inside


def write_json_atomic(path: Path, data) -> None:
    """Write ``data`` as JSON so that ``path`` always holds either the old or the new content, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written .tmp behind; the old file stands
        raise


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def disk_error(exc: OSError, where: str) -> UserError | None:
    """A full disk or a refused write as one message naming what was being written (None for other errors)."""
    if exc.errno not in DISK_ERRNOS:
        return None
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    what = "the disk is full" if full else "writing is not permitted"
    target = exc.filename or "a file"
    try:
        free = shutil.disk_usage(Path(exc.filename or ".").resolve().parent).free if full else None
    except OSError:
        free = None
    room = f" ({free / 2**20:.0f} MiB free there now)" if free is not None else ""
    fix = "free some space" if full else "make the folder writable (or use --output-dir)"
    return UserError(
        f"{where}: {what} while writing {target}{room}: {exc.strerror}. Finished stages and checkpoints are kept; "
        f"{fix} and run the same command again: it goes on from where it stopped."
    )


_TYPES = {
    "type": str,
    "fingerprint": str,
    "status": str,
    "output": str,
    "error": str,
    "summary": dict,
    "output_files": dict,
    "wall_time_s": (int, float),
    "peak_rss_mb": (int, float),
    "reused_from": str,
    "inputs": list,
}


def _record_problem(data) -> str | None:
    """Why ``data`` is not a run record (None when it is): an object whose ``stages`` maps names to records whose
    fields have their types (a hand edit that breaks one is reported, never followed into a traceback)."""
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        return "it is JSON but not a run record (an object with a `stages` object)"
    for name, rec in data.get("stages", {}).items():
        if not isinstance(rec, dict):
            return f"stages.{name} is not a record"
        for key, want in _TYPES.items():
            v = rec.get(key)
            if v is not None and (not isinstance(v, want) or isinstance(v, bool)):
                return f"stages.{name}.{key} is {type(v).__name__} {v!r:.40}, not what a run record holds there"
        files = rec.get("output_files") or {}
        if not all(isinstance(k, str) and isinstance(x, str) for k, x in files.items()):
            return f"stages.{name}.output_files is not a map of file names to sha256 digests"
    return None


class Manifest:
    FILE = "manifest.json"

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.FILE
        self.data = self._read() if self.path.is_file() else {"stages": {}}

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            why = f"it is not valid JSON ({exc})"
        else:
            why = _record_problem(data)
            if why is None:
                return data
        raise UserError(
            f"{self.path}: the run record cannot be read: {why}; it was cut short or edited by hand. "
            f"Move it away (for example `mv {self.path} {self.path}.bad`) and run again: the stages are then "
            "recomputed, since without the record nothing in the run folder can be trusted as done."
        )

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        return cls(run_dir)

    @property
    def stages(self) -> dict:
        return self.data.setdefault("stages", {})

    def set_run(self, **kw) -> None:
        self.data.update(kw)
        self.save()

    def record_versions(self, current: dict) -> list[str]:
        """Keep ``current`` (library -> version) as this run's versions (saved with the next change);
        returns what differs from the versions recorded before, as "torch 2.12.0 -> 2.13.0"."""
        old = self.data.get("versions")
        old = old if isinstance(old, dict) else {}
        self.data["versions"] = dict(current)
        return [f"{k} {old[k]} -> {v}" for k, v in current.items() if k in old and old[k] != v]

    def update_stage(self, name: str, **kw) -> None:
        self.stages.setdefault(name, {}).update(kw)
        self.save()

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(self.path, self.data)

    def is_done(self, name: str, fp: str) -> bool:
        rec = self.stages.get(name)
        return (
            bool(rec)
            and rec.get("status") == "done"
            and rec.get("fingerprint") == fp
            and isinstance(rec.get("output"), str)
            and is_inside(self.run_dir / rec["output"], self.run_dir)
            and (self.run_dir / rec["output"]).is_dir()
        )


SET_ASIDE = ".old"  # a folder set aside while its replacement is renamed into place


def replace_dir(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is set aside first and deleted only afterwards."""
    aside = final.with_name(final.name + SET_ASIDE)
    for link in (aside, final):  # a link is removed itself, never what it points at
        if link.is_symlink():
            link.unlink()
    if aside.exists():  # a leftover from an interrupted replacement
        shutil.rmtree(aside)
    if final.exists():
        final.rename(aside)
    new.rename(final)
    if aside.exists():
        shutil.rmtree(aside)
