"""``attach`` and ``merge``: put Learners on a model, and fold them (or LoRA) back.

``merge`` checks at run time that the merged model computes what the unmerged one did
(max abs logit difference on a dev batch <= ``atol``) and stops otherwise. A merged
uniform model is a plain Hugging Face checkpoint."""

from __future__ import annotations

import torch

from ..artifacts import load_model, save_model
from ..learners.learner import attach_learners, check_merge, learner_modules
from ..learners.methods import group_counts
from ..learners.structure import merge
from ..train import collate, encode, model_inputs
from .base import Stage, StageContext, register
from .finetune import load_plain_input_model


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
        return {"rank": cfg.rank, "targets": list(cfg.targets), "learner_params": added, "linears": len(info["paths"]),
                "total_params": sum(p.numel() for p in model.parameters()), "param_groups": group_counts(model)}


@register
class MergeStage(Stage):
    type = "merge"

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.cfg
        mdir = ctx.require_input_model_dir("merge")
        model, tok, meta = load_model(mdir)
        model = model.float().eval()
        enc = encode(tok, ctx.task.dev.subset(cfg.check_examples, ctx.seed), ctx.pipeline.task.max_length)
        names = model_inputs(model)
        batch = {k: v for k, v in collate(enc, tok.pad_token_id or 0, "token_type_ids" in names).items() if k in names}
        params_before = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            before = model(**batch).logits
        merged, how = merge(model)
        merged.eval()
        with torch.no_grad():
            after = merged(**batch).logits
        diff = check_merge(before, after, cfg.atol)
        structure = {k: v for k, v in (meta.get("structure") or {}).items() if k == "adapters"}  # adapters stay
        save_model(merged, tok, ctx.out_dir / "model", meta.get("task", ctx.task_meta()), {"merged_from": str(mdir), "method": meta.get("method")}, structure=structure)
        ctx.log(f"[{ctx.name}] {how}; max |logit diff| {diff:.2e} on {len(enc)} dev examples")
        return {"how": how, "max_abs_diff": diff, "atol": cfg.atol, "check_examples": len(enc),
                "params_before": params_before, "params_after": sum(p.numel() for p in merged.parameters()),
                "plain_hf": not structure}
