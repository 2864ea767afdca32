"""Checks of what a config names on disk: the task's data files and the model."""

from __future__ import annotations

import os
from pathlib import Path

from ..data.glue import GLUE_DIR_ENV, GLUE_TASKS, glue_dir_env
from ..errors import UserError
from ..models.resolve import resolve_model_path
from .sections import TaskConfig


def _resolve(p: str, base_dir: Path) -> Path:
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else (base_dir / q)


TASK_PATHS = ("glue_dir", "train_file", "dev_file")  # task keys naming files, resolved against the file's folder
STAGE_PATHS = ("text_file",)  # stage keys naming files, resolved against the pipeline file's folder when used


def absolutize(task: TaskConfig, base_dir: Path) -> TaskConfig:
    """Relative paths in a pipeline file are relative to that file's folder."""
    upd = {}
    for key in TASK_PATHS:
        v = getattr(task, key)
        if v:
            upd[key] = str(_resolve(v, base_dir).resolve())
    return task.model_copy(update=upd)


def check_task_files(task: TaskConfig, base_dir: Path, where) -> list[str]:
    out = []
    if task.name == "custom":
        for key in ("train_file", "dev_file"):
            try:
                p = _resolve(getattr(task, key), base_dir)
                exists, regular = p.exists(), p.is_file()
            except (OSError, ValueError):  # a NUL byte, a name too long for the file system
                p, exists, regular = getattr(task, key), False, False
            if exists and not regular:
                out.append(
                    f"{where(('task', key))}task.{key}: {p} is not a regular file (a folder, a device or a pipe); "
                    "give the path of the data file."
                )
            elif not regular:
                out.append(
                    f"{where(('task', key))}task.{key}: {p!s:.300} does not exist; "
                    "relative paths are resolved against the pipeline file's folder."
                )
        return out
    glue = task.glue_dir or glue_dir_env()
    if glue is None:
        if task.source == "local":
            out.append(
                f"{where(('task',))}task.source is local but neither task.glue_dir "
                f"nor ${GLUE_DIR_ENV} names a GLUE folder."
            )
        return out
    if task.source == "hub":
        return out
    g = _resolve(glue, base_dir) if task.glue_dir else Path(glue)
    origin = "task.glue_dir" if task.glue_dir else f"${GLUE_DIR_ENV}"
    t = GLUE_TASKS[task.name]
    if not g.is_dir():
        what = "is not a folder" if g.exists() else "does not exist"
        out.append(
            f"{where(('task', 'glue_dir'))}{origin}: {g} {what}; "
            f"point it at the folder that holds {t.folder}/ (or override: task.glue_dir=PATH)."
        )
    else:
        for f in ("train.tsv", t.dev_file):
            if not (g / t.folder / f).is_file():
                out.append(
                    f"{where(('task', 'glue_dir'))}{origin}: {g / t.folder / f} is missing; "
                    f"the GLUE folder needs the standard layout {t.folder}/train.tsv, {t.folder}/{t.dev_file}."
                )
    return out


def model_reference_problems(ref: str, base_dir: Path, where) -> list[str]:
    """The model reference resolves (alias installed, folder with config.json, or a hub id)."""
    try:
        resolve_model_path(ref, base_dir)
    except UserError as exc:
        return [f"{where(('model',))}{exc}"]
    return []


def portable_dict(cfg, to_dir: Path) -> dict:
    """``cfg`` (a PipelineConfig) as a pipeline file's contents for a file in ``to_dir``: every setting (JSON
    types), and every path the loader resolves against the file's folder (the task's files, a local model folder,
    a stage's text file) rewritten to point where it pointed for ``cfg``."""
    import json

    out = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as a YAML file holds them
    base, to_dir = Path(cfg.base_dir), to_dir.resolve()

    def moved(v):
        if not isinstance(v, str) or not v or "://" in v or Path(os.path.expanduser(v)).is_absolute():
            return v  # absolute paths (the loader makes the task's absolute) hold from anywhere
        p = _resolve(v, base)
        return os.path.relpath(p.resolve(), to_dir) if p.exists() else v  # a hub id stays as it is

    for key in TASK_PATHS:
        out["task"][key] = moved(out["task"].get(key))
    out["model"] = moved(out["model"])
    for name in out["stages"]:
        for key in STAGE_PATHS:
            if key in out[name]:
                out[name][key] = moved(out[name][key])
    return out
