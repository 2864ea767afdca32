"""Resumable training checkpoints: atomic writes, reads that survive a damaged file, and the RNG
states a resumed run restores."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .faults import fault_point

# What a resumable checkpoint (Trainer._save_checkpoint) must hold; one without them starts training over.
RESUME_KEYS = ("model", "optimizer", "scheduler", "step", "history", "best", "best_step", "loss_sum", "loss_n", "rng")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    fault_point("checkpoint_write", path.name, cut=tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, log=print, required: tuple = ()) -> dict | None:
    """The checkpoint dict at ``path``, or None, with a log line, when it cannot be used: a file cut
    short (a kill while it was written outside :func:`atomic_save`, a full disk) or not a checkpoint."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)  # RNG states must stay CPU tensors
    except Exception as exc:  # torch raises several types for a damaged file (UnpicklingError, RuntimeError, EOFError)
        why = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    else:
        missing = [k for k in required if k not in ck] if isinstance(ck, dict) else ["(not a dict)"]
        if not missing:
            return ck
        why = f"it lacks {', '.join(missing)}"
    log(
        f"checkpoint {path} cannot be read ({why}); it is damaged (cut short by a kill or a full disk?), "
        "so this stage's training starts over from step 0"
    )
    return None


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
