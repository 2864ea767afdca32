"""``merge``: fold what a method added (Learners, LoRA) back into the base weights.

It checks at run time that the merged model computes what the unmerged one did (max abs
logit difference on a dev batch <= ``atol``) and stops otherwise. How each structure
merges is the method's own (methods/). A merged uniform model is a plain Hugging Face
checkpoint."""

from __future__ import annotations

import torch

from ..data.batching import collate, encode
from ..methods import load_artifact, merge
from ..methods.learner_layer import check_merge
from ..models.artifacts import save_model
from ..models.inputs import model_inputs
from .base import Stage, StageContext, register


@register
class MergeStage(Stage):
    type = "merge"

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.cfg
        mdir = ctx.require_input_model_dir("merge")
        model, tok, meta = load_artifact(mdir)
        model = model.float().eval()
        enc = encode(tok, ctx.task.dev.subset(cfg.check_examples, ctx.seed), ctx.pipeline.task.max_length)
        names = model_inputs(model)
        batch = {k: v for k, v in collate(enc, tok.pad_token_id or 0, "token_type_ids" in names).items() if k in names}
        params_before = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            before = model(**batch).logits
        merged, how, structure = merge(model, meta.get("structure") or {})
        merged.eval()
        with torch.no_grad():
            after = merged(**batch).logits
        diff = check_merge(before, after, cfg.atol)
        save_model(
            merged,
            tok,
            ctx.out_dir / "model",
            meta.get("task", ctx.task_meta()),
            {"merged_from": str(mdir), "method": meta.get("method")},
            structure=structure,
        )
        ctx.log(f"[{ctx.name}] {how}; max |logit diff| {diff:.2e} on {len(enc)} dev examples")
        return {
            "how": how,
            "max_abs_diff": diff,
            "atol": cfg.atol,
            "check_examples": len(enc),
            "params_before": params_before,
            "params_after": sum(p.numel() for p in merged.parameters()),
            "plain_hf": not structure,
        }
