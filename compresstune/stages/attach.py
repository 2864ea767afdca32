"""``attach``: put rank-r Learners beside the target linears (the function is unchanged)."""

from __future__ import annotations

import torch

from ..methods.groups import group_counts
from ..methods.learner_layer import attach_learners, learner_modules
from ..models.artifacts import save_model
from .base import Stage, StageContext, register
from .inputs import load_plain_input_model


@register
class AttachStage(Stage):
    type = "attach"

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.cfg
        torch.manual_seed(ctx.seed)
        model, tok, source = load_plain_input_model(ctx, "attach Learners to")
        info = attach_learners(model, cfg.rank, tuple(cfg.targets), cfg.scale, cfg.init)
        save_model(model, tok, ctx.out_dir / "model", ctx.task_meta(), {"source": source}, structure={"learners": info})
        added = sum(m.P1.numel() + m.P2.numel() for m in learner_modules(model).values())
        ctx.log(f"[{ctx.name}] rank-{cfg.rank} Learners on {len(info['paths'])} linears: +{added:,} parameters")
        return {
            "rank": cfg.rank,
            "targets": list(cfg.targets),
            "learner_params": added,
            "linears": len(info["paths"]),
            "total_params": sum(p.numel() for p in model.parameters()),
            "param_groups": group_counts(model),
        }
