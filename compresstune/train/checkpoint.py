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
        # tensors and plain data only: a checkpoint is data, and unpickling anything else could run code from it
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file (UnpicklingError, RuntimeError, EOFError)
        if "weights only load failed" in str(exc).lower() or "weights_only" in str(exc):
            log(
                f"checkpoint {path} holds objects other than tensors and plain data; it was refused unread (loading "
                "it could run code from it) and this stage's training starts over from step 0. A checkpoint this "
                "version writes never does: it came from another program, or from an earlier compresstune (which "
                "stored RNG states as numpy objects)."
            )
            return None
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
    """Every RNG's state as tensors and plain data (what ``torch.load(weights_only=True)`` reads back)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    name, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
