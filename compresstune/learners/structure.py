"""Rebuilding and merging models that carry Learners, adapters or LoRA.

An artifact records what was added to the plain architecture under
``compresstune.json: structure``; :func:`reapply` rebuilds that structure on a freshly
built model before its weights are loaded, and :func:`merge` folds it away."""

from __future__ import annotations

import torch.nn as nn

from .adapters import add_adapters, has_adapters
from .learner import attach_learners, learner_modules, merge_learners

_PEFT_KEY = "_compresstune_peft"


def reapply(model: nn.Module, structure: dict) -> nn.Module:
    """Add the recorded Learners/adapters/LoRA to ``model``; returns the module whose state_dict matches the artifact."""
    if not structure:
        return model
    if "learners" in structure:
        s = structure["learners"]
        attach_learners(model, s["rank"], tuple(s["targets"]), s["scale"], s["init"])
    if "adapters" in structure:
        add_adapters(model, structure["adapters"]["kind"], structure["adapters"]["size"])
    if "lora" in structure:
        from peft import get_peft_model

        from .methods import lora_config

        s = structure["lora"]
        opts = type("Opts", (), {"rank": s["rank"], "lora_alpha": s["alpha"], "targets": s["targets"]})
        peft_model = get_peft_model(model, lora_config(model, opts))
        inner = peft_model.base_model.model
        inner.__dict__[_PEFT_KEY] = peft_model  # not a submodule: keep the wrapper for merging
        return inner
    return model


def attach_peft(inner: nn.Module, peft_model) -> nn.Module:
    inner.__dict__[_PEFT_KEY] = peft_model
    return inner


def merge(model: nn.Module) -> tuple[nn.Module, str]:
    """Fold everything mergeable into plain weights (fp32); returns (plain model, what was done)."""
    peft_model = model.__dict__.get(_PEFT_KEY)
    if peft_model is not None:
        merged = peft_model.merge_and_unload()
        merged.__dict__.pop(_PEFT_KEY, None)
        return merged, "LoRA merged into the base weights (PEFT merge_and_unload)"
    n = len(learner_modules(model))
    if n:
        merge_learners(model)
        return model, f"{n} Learners folded into their base weights (W' = W + (P1 P2)^T)"
    if has_adapters(model):
        return model, "adapters have a nonlinearity and cannot be merged; the model keeps them"
    return model, "nothing to merge: the model has the plain architecture"
