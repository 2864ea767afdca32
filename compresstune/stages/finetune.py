"""``finetune``: train a model on the task (full fine-tuning; later also Learners, baselines).

Input: the previous stage's model artifact, or the pipeline's pretrained ``model``
when this is the first model stage. Output: ``model/`` (an artifact), ``history.json``.
"""

from __future__ import annotations

from ..artifacts import load_model, save_model
from ..models import load_pretrained_for_task, load_tokenizer, resolve_model_path
from ..train import TrainSpec, train
from .base import Stage, StageContext, register


def load_input_model(ctx: StageContext):
    """(model, tokenizer, source) from the input stage's artifact, else the pretrained model."""
    mdir = ctx.input_model_dir()
    if mdir is not None:
        model, tok, meta = load_model(mdir)
        want = ctx.task_meta()
        got = meta.get("task", {})
        if got and (got.get("num_labels") != want["num_labels"]):
            from ..errors import UserError

            raise UserError(f"{ctx.name}: the input model {mdir} has {got.get('num_labels')} labels but task {want['name']} needs {want['num_labels']}.")
        return model, tok, str(mdir)
    ref = resolve_model_path(ctx.pipeline.model, ctx.pipeline.base_dir)
    tok = load_tokenizer(ref)
    task = ctx.task
    model = load_pretrained_for_task(ref, task.num_labels, task.problem_type)
    if task.label_names:
        model.config.id2label = dict(enumerate(task.label_names))
        model.config.label2id = {n: i for i, n in enumerate(task.label_names)}
    return model, tok, ref


@register
class FinetuneStage(Stage):
    type = "finetune"

    def run(self, ctx: StageContext) -> dict:
        import torch

        cfg = ctx.cfg
        torch.manual_seed(ctx.seed)  # the new classifier head's initialisation
        model, tok, source = load_input_model(ctx)
        task = ctx.task
        ctx.log(f"[{ctx.name}] {task.name}: {len(task.train)} train / {len(task.dev)} dev examples; model from {source}")
        for p in model.parameters():
            p.requires_grad_(True)
        spec = TrainSpec(
            epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.lr, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
            warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16,
            eval_every_steps=cfg.eval_every_steps, checkpoint_every_steps=cfg.checkpoint_every_steps, select=cfg.select, seed=ctx.seed,
            group_by_length=cfg.group_by_length,
        )
        res = train(model, task, tok, spec, ctx.out_dir / "checkpoints", max_length=ctx.pipeline.task.max_length,
                    device=ctx.device, log=ctx.log, progress=ctx.progress)
        model.to("cpu")
        save_model(model, tok, ctx.out_dir / "model", ctx.task_meta(), {"method": cfg.method, "source": source})
        chosen = res.best_metric if cfg.select == "best" else res.final_metric
        return {
            "method": cfg.method, "metric": task.metric, "dev_metric": chosen, "best_dev_metric": res.best_metric,
            "best_step": res.best_step, "final_dev_metric": res.final_metric, "steps": res.steps, "epochs": res.epochs,
            "train_time_s": res.train_time_s, "resumed_from_step": res.resumed_from_step,
            "total_params": res.total_params, "trainable_params": res.trainable_params,
            "train_examples": len(task.train), "dev_examples": len(task.dev), "history": res.history,
        }
