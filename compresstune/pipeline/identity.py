"""What a stage reads, identified by content, for its fingerprint (fingerprint.py).

* the task's data files (custom train/dev files, or the local GLUE files actually read) and
  the pipeline's model when it is a local folder or the packaged alias: sha256 of the files.
  A file is hashed once; later runs recognise it by size and modification time, recorded
  with its hash in the run folder (``.content_hashes.json``: path -> size, mtime_ns, sha256).
  A changed size or mtime re-hashes it, so touching a file reruns nothing but editing it
  does, even at the same size. A hub model or hub dataset is identified by its name only.
* the device kind (cpu or cuda) of stages that train or time,
* the library versions of a run (recorded in manifest.json; they do not decide what reruns).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..config.sections import PipelineConfig, TaskConfig
from ..data.glue import GLUE_TASKS, find_glue_dir, glue_dir_env
from ..manifest import write_json_atomic
from ..models.resolve import resolve_model_path

CACHE_FILE = ".content_hashes.json"
# A file modified this soon after its mtime was read could change again within the same mtime tick
# (coarse-mtime file systems): such a hash is not trusted by size and mtime alone, it is checked again.
_RACY_NS = 2_000_000_000


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ContentHashes:
    """sha256 of files, recomputed only when a file's size or mtime differs from the recorded ones.
    ``cache``: the JSON file that keeps them between runs (None: this process only)."""

    def __init__(self, cache: Path | None = None):
        self.cache = Path(cache) if cache is not None else None
        self.entries: dict = {}
        self.changed = False
        if self.cache is not None and self.cache.is_file():
            try:
                data = json.loads(self.cache.read_text(encoding="utf-8"))
                self.entries = data if isinstance(data, dict) else {}
            except (ValueError, OSError, UnicodeDecodeError):
                pass  # only a cache: a damaged one means hashing again

    def file(self, path: Path) -> str:
        """The file's sha256 ("missing" when there is no such file; reading it later says why)."""
        p = Path(path).resolve()
        if not p.is_file():
            return "missing"
        st = p.stat()
        rec = self.entries.get(str(p))
        if (
            isinstance(rec, dict)
            and rec.get("size") == st.st_size
            and rec.get("mtime_ns") == st.st_mtime_ns
            and rec.get("hashed_at_ns", 0) - st.st_mtime_ns > _RACY_NS
        ):
            return rec["sha256"]
        digest = file_sha256(p)
        self.entries[str(p)] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": digest,
            "hashed_at_ns": time.time_ns(),
        }
        self.changed = True
        return digest

    def folder(self, folder: Path) -> str:
        """One hash over every file in ``folder`` (recursively; names starting with '.' are skipped)."""
        folder = Path(folder)
        rel = sorted(f.relative_to(folder) for f in folder.rglob("*") if f.is_file())
        rel = [r for r in rel if not any(part.startswith(".") for part in r.parts)]
        lines = "".join(f"{r.as_posix()}\t{self.file(folder / r)}\n" for r in rel)
        return hashlib.sha256(lines.encode()).hexdigest()

    def output_files(self, folder: Path) -> dict[str, str]:
        """Every file in ``folder`` (recursively; names starting with '.' skipped) -> its sha256: what a finished
        stage's output was when it was recorded, checked again before the stage is skipped or reused."""
        folder = Path(folder)
        rel = sorted(f.relative_to(folder) for f in folder.rglob("*") if f.is_file())
        return {r.as_posix(): self.file(folder / r) for r in rel if not any(p.startswith(".") for p in r.parts)}

    def save(self) -> None:
        if self.cache is not None and self.changed:
            write_json_atomic(self.cache, self.entries)
            self.changed = False


def task_files(task: TaskConfig) -> dict[str, Path] | None:
    """The files the task's data is read from (split -> path), or None when it comes from the hub."""
    if task.name == "custom":
        return {"train": Path(task.train_file), "dev": Path(task.dev_file)}
    t = GLUE_TASKS[task.name]
    local = find_glue_dir(task.glue_dir)
    if task.source == "hub" or local is None:  # as load_glue decides
        return None
    return {"train": local / t.folder / "train.tsv", "dev": local / t.folder / t.dev_file}


def data_identity(task: TaskConfig, hashes: ContentHashes) -> dict:
    """The task's data by content; with $COMPRESSTUNE_GLUE_DIR when it decides which GLUE folder is read."""
    files = task_files(task)
    out: dict = {"data": {k: hashes.file(p) for k, p in files.items()} if files else f"hub:{task.name}"}
    if task.name != "custom" and not task.glue_dir:
        out["glue_dir_env"] = glue_dir_env()  # as the data is read: a blank value is no folder
    return out


def model_identity(cfg: PipelineConfig, hashes: ContentHashes) -> str:
    """The pipeline's model by content when it is a local folder (or the packaged alias), else its hub id."""
    ref = resolve_model_path(cfg.model, cfg.base_dir)
    p = Path(ref)
    if p.is_absolute() and p.is_dir():
        return hashes.folder(p)
    return f"hub:{ref}"


def device_kind(device: str) -> str:
    """'cpu' or 'cuda' (the kind, not the index): what a stage trained or timed on."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]
