"""``lora`` via PEFT: LoRA A/B on the target linears + the head train; merged with PEFT's
``merge_and_unload``.

The model handed back for training is PEFT's inner model (same module objects), with the
PEFT wrapper kept beside it (not as a submodule) so that the merge stage can call it."""

from __future__ import annotations

import re

import torch.nn as nn
from pydantic import Field

from ..models.arch import arch_for
from ..options import Section
from .base import Method, MethodSetup, register
from .learner import TARGETS_FIELD, Targets

_PEFT_KEY = "_compresstune_peft"


class LoraOptions(Section):
    rank: int = Field(64, gt=0, le=65536, description="Learner (or LoRA) rank r")
    targets: Targets = TARGETS_FIELD
    lora_alpha: float = Field(16.0, gt=0, le=1e6, description="lora: scaling numerator (PEFT lora_alpha)")


def lora_target_regex(model: nn.Module, targets) -> str:
    spec = arch_for(model)
    roles = spec.layer_modules()
    alts = "|".join(re.escape(roles[t]) for t in targets)
    return rf".*{re.escape(spec.base)}\.{re.escape(spec.layers)}\.\d+\.({alts})"


def lora_config(model: nn.Module, rank: int, alpha: float, targets):
    from peft import LoraConfig

    spec = arch_for(model)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=lora_target_regex(model, targets),
        modules_to_save=[h.split(".")[-1] for h in spec.head_modules],
        bias="none",
    )


def _wrap(model: nn.Module, rank: int, alpha: float, targets) -> nn.Module:
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(model, rank, alpha, targets))
    inner = peft_model.base_model.model
    inner.__dict__[_PEFT_KEY] = peft_model  # not a submodule: keep the wrapper for merging
    return inner


@register
class Lora(Method):
    name = "lora"
    Options = LoraOptions
    structure_key = "lora"
    merges = True
    default_lr = 1e-3
    summary = "LoRA A/B + head (PEFT); merge uses PEFT merge_and_unload: plain"

    def prepare(self, model, opts, ctx) -> MethodSetup:
        inner = _wrap(model, opts.rank, opts.lora_alpha, opts.targets)
        entry = {"rank": opts.rank, "alpha": opts.lora_alpha, "targets": list(opts.targets)}
        return MethodSetup(structure={"lora": entry}, model=inner)

    def reapply(self, model, entry):
        return _wrap(model, entry["rank"], entry["alpha"], entry["targets"])

    def merge(self, model, entry):
        peft_model = model.__dict__.get(_PEFT_KEY)
        merged = peft_model.merge_and_unload()
        merged.__dict__.pop(_PEFT_KEY, None)
        return merged, "LoRA merged into the base weights (PEFT merge_and_unload)", False

    def parse_label(self, label: str) -> dict | None:
        m = re.fullmatch(r"lora(\d+)", label)
        return {"rank": int(m.group(1)), "lora_alpha": 2.0 * int(m.group(1))} if m else None

    def label_help(self) -> str:
        return "loraR (e.g. lora8)"
