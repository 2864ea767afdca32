"""``learner`` (arXiv 2208.02070): rank-r Learners beside the target linears, with priming.

Learners + every bias + every LayerNorm + the head train; during the first ``priming_epochs``
attention Q,K,V,O train too, inside the same optimizer and learning-rate schedule. The merge
stage folds the Learners into their base weights (``W' = W + (P1 P2)^T``): a plain model.
The Learner module itself lives in learner_layer.py."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from ..options import Section
from .base import Method, MethodSetup, register
from .groups import param_groups, train_only
from .learner_layer import attach_learners, learner_modules, merge_learners


def _unique_targets(v):
    if not v or len(set(v)) != len(v):
        raise ValueError("targets must name each linear at most once and at least one (q, k, v, o, ffn_in, ffn_out)")
    return v


Targets = Annotated[list[Literal["q", "k", "v", "o", "ffn_in", "ffn_out"]], AfterValidator(_unique_targets)]
TARGETS_FIELD = Field(
    default_factory=lambda: ["q", "k", "v", "o", "ffn_in", "ffn_out"],
    description="linears of every encoder layer that get a Learner",
)


class AttachOptions(Section):
    """How Learners are attached (the ``attach`` stage uses exactly these)."""

    rank: int = Field(64, gt=0, le=65536, description="Learner (or LoRA) rank r")
    targets: Targets = TARGETS_FIELD
    scale: float = Field(1.0, gt=0, le=1000, description="multiplier on the Learner branch")
    init: Literal["kaiming_zero", "gaussian_zero", "kaiming_both"] = Field(
        "kaiming_zero", description="P1/P2 initialisation (the *_zero ones leave the function unchanged at attach)"
    )


class LearnerOptions(AttachOptions):
    priming_epochs: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="learner: epochs at the start during which attention Q,K,V,O train too (the paper's p)",
    )


BASE_GROUPS = ("learners", "bias", "layernorm", "head")  # a tuple: the optimizer order must not depend on hashing


def priming_hook(attention: list, p_epochs: float, log):
    """A phase hook: attention Q,K,V,O train while ``epoch < p_epochs``, then freeze (gradients dropped)."""
    state = {"primed": None}

    def hook(step: int, epoch: float) -> None:
        priming = epoch < p_epochs
        if state["primed"] != priming:
            for p in attention:
                p.requires_grad_(priming)
                if not priming:
                    p.grad = None
            state["primed"] = priming
            what = (
                "priming: attention Q,K,V,O train with the Learners"
                if priming
                else "attention frozen; Learners, biases, LayerNorm and head train"
            )
            log(f"step {step}: {what}")

    return hook


@register
class Learner(Method):
    name = "learner"
    Options = LearnerOptions
    structure_key = "learners"
    merges = True
    default_lr = 1e-3
    continues = ("learners",)  # an attach stage may have put the Learners on already
    summary = "Learners + every bias + every LayerNorm + head; Q,K,V,O too while priming; merged: plain"

    def prepare(self, model, opts, ctx) -> MethodSetup:
        structure = {}
        if not learner_modules(model):
            structure = {"learners": attach_learners(model, opts.rank, tuple(opts.targets), opts.scale, opts.init)}
            ctx.log(f"attached rank-{opts.rank} Learners to {len(structure['learners']['paths'])} linears")
        train_only(model, set(BASE_GROUPS))
        attention = [p for _, p in param_groups(model)["attention"]]
        p_epochs = float(opts.priming_epochs)
        optimizer = [p for g in BASE_GROUPS for _, p in param_groups(model)[g]] + (attention if p_epochs > 0 else [])
        hook = priming_hook(attention, p_epochs, ctx.log) if p_epochs > 0 else None
        return MethodSetup(hook, optimizer, structure)

    def reapply(self, model, entry):
        attach_learners(model, entry["rank"], tuple(entry["targets"]), entry["scale"], entry["init"])
        return model

    def merge(self, model, entry):
        n = merge_learners(model)
        return model, f"{n} Learners folded into their base weights (W' = W + (P1 P2)^T)", False

    def parse_label(self, label: str) -> dict | None:
        m = re.fullmatch(r"learner(\d+)-p(\d+(?:\.\d+)?)", label)
        return {"rank": int(m.group(1)), "priming_epochs": float(m.group(2))} if m else None

    def label_help(self) -> str:
        return "learnerR-pP (e.g. learner64-p2)"
