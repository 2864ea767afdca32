"""Fault injection for the crash tests: SIGKILL this process at a named moment. Never set outside tests.

* ``COMPRESSTUNE_FAULT_KILL_AFTER_STEP=N``: right after the first checkpoint at step >= N is written.
* ``COMPRESSTUNE_FAULT_KILL_AT=POINT[@K]``: the K-th time (default: the first) this process reaches POINT:

  - ``checkpoint_write`` (any) or ``checkpoint_write:last.pt`` / ``checkpoint_write:best.pt``: inside a
    checkpoint write: its temporary file cut to half its size, not yet renamed over the old one;
  - ``stage_done:NAME``: stage NAME's summary written, its checkpoints dropped, its folder not yet renamed;
  - ``stage_committed:NAME``: stage NAME's folder renamed into place, the manifest not yet updated.

Tests that cannot afford a fresh process replace :func:`kill` (for example by a function that raises).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

KILL_AFTER_STEP_ENV = "COMPRESSTUNE_FAULT_KILL_AFTER_STEP"
KILL_AT_ENV = "COMPRESSTUNE_FAULT_KILL_AT"
_reached: Counter = Counter()


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_step() -> int:
    return int(os.environ.get(KILL_AFTER_STEP_ENV, "0") or 0)


def fault_point(name: str, detail: str = "", cut: Path | None = None) -> None:
    """Kill here when ``$COMPRESSTUNE_FAULT_KILL_AT`` names this point, as ``name`` or ``name:detail`` (and
    this is its K-th time); ``cut``: a file being written, cut to half its size first (an interrupted write)."""
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point not in (name, f"{name}:{detail}"):
        return
    _reached[point] += 1
    if _reached[point] != int(nth or 1):
        return
    if cut is not None and Path(cut).is_file():
        os.truncate(cut, Path(cut).stat().st_size // 2)
    kill()
