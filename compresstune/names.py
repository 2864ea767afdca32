"""Names that become paths, and paths that must stay inside a folder: one rule, checked in one place.

A run name, a stage name and a search name each become a folder name, so each must be a plain name:
letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit, at most 64 characters; no
separators, no ``..``, nothing the shell or another operating system reads specially. Every path the
tool writes, replaces or deletes on the user's behalf, and every file a run record or bundle config
points at, is resolved (links followed) and must lie inside the folder it belongs to."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = (
    "a plain name: letters, digits, '_', '-' and '.', starting with a letter or digit, at most 64 characters "
    "(it becomes a folder name)"
)


def name_problem(name, what: str) -> str | None:
    """Why ``name`` cannot name a run, stage or search folder (None when it can)."""
    if not isinstance(name, str):
        return f"{what}: expected {NAME_RULE}, got {type(name).__name__} {name!r:.80}."
    if NAME_RE.fullmatch(name) and ".." not in name:
        return None
    shown = name if len(name) <= 80 else name[:77] + "..."
    return f"{what}: {shown!r} is not {NAME_RULE}; for example {_suggest(name)!r}."


def _suggest(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).replace("..", "-").strip("-._")[:64]
    return s or "run1"


def check_name(name, what: str) -> str:
    problem = name_problem(name, what)
    if problem:
        raise UserError(problem)
    return name


def is_inside(path, root) -> bool:
    """``path`` (links followed) is ``root`` or lies under it."""
    try:
        p, r = Path(path).resolve(), Path(root).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a link loop: not a path inside anything
        return False
    return p == r or p.is_relative_to(r)


def inside(root, rel, what: str) -> Path:
    """``root / rel``, refused unless ``rel`` is relative and the result lies inside ``root``."""
    if not isinstance(rel, str) or not rel or "\0" in rel or Path(rel).is_absolute():
        raise UserError(f"{what}: {rel!r} must be a path relative to {root}.")
    p = Path(root) / rel
    if not is_inside(p, root):
        if Path(os.path.abspath(p)).is_relative_to(os.path.abspath(root)):  # by name inside: a link leads out
            try:
                where = f"leads outside {root} (to {p.resolve(strict=False)})"
            except (OSError, RuntimeError, ValueError):  # a loop of links
                where = "leads nowhere (a loop of links)"
            raise UserError(
                f"{what}: {p} is (or lies under) a symbolic link that {where}; refusing to read or write there: put "
                "the file itself in its place."
            )
        raise UserError(f"{what}: {rel!r} points outside {root}; refusing to read or write there.")
    return p
