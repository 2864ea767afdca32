"""Keeping a run folder consistent: one process at a time, and stage folders replaced by renames.

* ``run_lock``: an OS file lock on ``RUN/.lock`` held for the whole run; a second process
  is refused at once with the other one's pid and host (``RUN/.lock.owner``). The OS
  releases the lock when its process ends, even by SIGKILL, so it never goes stale.
* ``replace_dir``: a finished stage's new folder replaces the old one by renames only; the
  old folder is set aside as ``NN_name.old`` and deleted once the new one is in place, so a
  kill at any moment leaves one complete folder. ``restore_set_aside`` puts a set-aside
  folder back when the run that set it aside was stopped before the new one was in place.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import UserError
from ..manifest import SET_ASIDE, replace_dir, write_json_atomic  # noqa: F401 - part of this module's API

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock; raises :class:`UserError` at once when another process holds it."""
    run_dir = Path(run_dir)
    lock = FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(_locked_message(run_dir)) from None
    owner = run_dir / OWNER_FILE
    try:
        write_json_atomic(
            owner, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        )
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _locked_message(run_dir: Path) -> str:
    try:
        who = json.loads((run_dir / OWNER_FILE).read_text(encoding="utf-8"))
        holder = f"pid {who.get('pid')} on host {who.get('host')}, since {who.get('since')}"
    except (OSError, ValueError, AttributeError):
        holder = "its pid and host were not recorded yet"
    return (
        f"the run folder {run_dir} is in use by another compresstune process ({holder}). Two runs in one folder "
        "would overwrite each other's stages. Wait for that run to finish (or stop it), or run this one in "
        "another folder (--run-name NAME or --output-dir DIR). The lock is released as soon as that process "
        "ends, even if it is killed, so nothing needs deleting by hand."
    )


def restore_set_aside(run_dir: Path, log: Callable[[str], None] = print) -> None:
    """Undo what a stopped ``replace_dir`` left: a set-aside folder whose replacement never arrived
    is renamed back; one whose replacement is in place is deleted."""
    for aside in sorted(Path(run_dir).glob("*" + SET_ASIDE)):
        if aside.is_symlink():  # never one of ours: a stage folder is a real folder; the link goes, not its target
            aside.unlink()
            continue
        if not aside.is_dir():
            continue
        final = aside.with_name(aside.name[: -len(SET_ASIDE)])
        if final.exists():
            shutil.rmtree(aside)
        else:
            aside.rename(final)
            log(f"{final.name}: restored from {aside.name} (an earlier run was stopped while replacing it)")
