"""Fine-tuning methods, one module each, held in a registry (base.py).

full, learner (+ learner_layer: the Learner module), bitfit, freeze_ffn, adapters
(adapters_seq, adapters_par), far, lora. groups.py sorts a model's parameters into named
groups that methods train or freeze. A new method is one new module that subclasses
:class:`Method` and calls :func:`register`; the config, CLI, ``inspect params``,
``bench finetune`` and the merge stage find it in the registry.

This package also rebuilds and merges what methods add to a model (:func:`reapply`,
:func:`merge`) and loads artifacts that carry it (:func:`load_artifact`).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from . import adapters, bitfit, far, freeze_ffn, full, learner, lora  # noqa: F401  (registration)
from .base import (  # noqa: F401
    Method,
    MethodSetup,
    PrepareContext,
    all_methods,
    get_method,
    method_for_structure,
    register,
    registry_version,
    unregister,
)


def reapply(model: nn.Module, structure: dict) -> nn.Module:
    """Add the recorded Learners/adapters/LoRA to ``model``; returns the module whose state_dict matches the
    artifact."""
    for key, entry in (structure or {}).items():
        model = method_for_structure(key).reapply(model, entry)
    return model


def merge(model: nn.Module, structure: dict) -> tuple[nn.Module, str, dict]:
    """Fold every mergeable structure into plain weights (fp32); returns (model, what was done, structure kept)."""
    if not structure:
        return model, "nothing to merge: the model has the plain architecture", {}
    hows, kept = [], {}
    for key, entry in structure.items():
        model, how, stays = method_for_structure(key).merge(model, entry)
        hows.append(how)
        if stays:
            kept[key] = entry
    return model, "; ".join(hows), kept


def load_artifact(folder: str | Path):
    """(model, tokenizer, meta) from an artifact folder, with the structure its method added rebuilt."""
    from ..models.artifacts import load_model

    return load_model(folder, rebuild=reapply)
