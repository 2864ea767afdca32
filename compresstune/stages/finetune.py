"""``finetune``: train a model on the task with one of the registered methods (methods/):
full fine-tuning, Learners with priming, or a baseline.

Input: the previous stage's model artifact, or the pipeline's pretrained ``model`` when
this is the first model stage. Output: ``model/`` (an artifact: with Learners, adapters
or LoRA still attached where the method has them; the ``merge`` stage folds them),
``history.json``."""

from __future__ import annotations

from ..errors import UserError
from ..methods import PrepareContext, get_method
from ..methods.groups import group_counts
from ..models.artifacts import save_model
from ..train.distributed import is_main_process
from ..train.loop import count_params, train
from .base import Stage, StageContext, register
from .inputs import load_input_model


@register
class FinetuneStage(Stage):
    type = "finetune"
    distributed = True  # under `accelerate launch` every process runs it (the runner); only the main one saves

    def run(self, ctx: StageContext) -> dict:
        import torch

        cfg, task = ctx.cfg, ctx.task
        method = get_method(cfg.method)
        torch.manual_seed(ctx.seed)  # the new classifier head's (and Learners') initialisation
        model, tok, structure, source = load_input_model(ctx)
        ctx.log(
            f"[{ctx.name}] {task.name}: {len(task.train)} train / {len(task.dev)} "
            f"{'held-out (task.holdout)' if task.holdout else 'dev'} examples; method {cfg.method}; "
            f"model from {source}"
        )
        self._check_structure(ctx, method, structure)
        opts = cfg.train_options(ctx.seed, ctx.device)
        precision = ctx.precision()
        setup = method.prepare(model, method.options(cfg), self._prepare_context(ctx, tok, opts))
        model = setup.model or model
        structure = {**structure, **setup.structure}
        groups = group_counts(model)
        total, trainable_now = count_params(model)
        res = self._train(ctx, model, tok, opts, setup)
        if not is_main_process():
            return {}  # one of several training processes: the main one saves the model and the summary
        model.to("cpu")
        method.after_training(model)
        save_model(
            model,
            tok,
            ctx.out_dir / "model",
            ctx.task_meta(),
            {"method": cfg.method, "source": source},
            structure=structure,
        )
        return {**self._summary(ctx, res, setup, total, trainable_now, groups, structure), **precision}

    @staticmethod
    def _prepare_context(ctx: StageContext, tok, opts) -> PrepareContext:
        return PrepareContext(
            ctx.task,
            tok,
            opts,
            ctx.pipeline.task.max_length,
            ctx.device,
            ctx.out_dir / "checkpoints",
            log=lambda s: ctx.log(f"[{ctx.name}] {s}"),
        )

    @staticmethod
    def _train(ctx: StageContext, model, tok, opts, setup):
        return train(
            model,
            ctx.task,
            tok,
            opts,
            ctx.out_dir / "checkpoints",
            max_length=ctx.pipeline.task.max_length,
            device=ctx.device,
            phase_hook=setup.phase_hook,
            optimizer_params=setup.optimizer_params,
            log=ctx.log,
            progress=ctx.progress,
        )

    @staticmethod
    def _summary(ctx: StageContext, res, setup, total: int, trainable_now: int, groups, structure: dict) -> dict:
        cfg, task = ctx.cfg, ctx.task
        # time spent inside prepare (FAR's priming run) is part of the method's cost: count it, shift the curve by it
        extra = setup.extra_train_time_s
        train_time = round(res.train_time_s + extra, 2) if extra else res.train_time_s
        history = (
            [{**h, "train_time_s": round(h["train_time_s"] + extra, 3)} for h in res.history] if extra else res.history
        )
        return {
            "method": cfg.method,
            "metric": task.metric,
            "dev_metric": res.best_metric if cfg.select == "best" else res.final_metric,
            "best_dev_metric": res.best_metric,
            "best_step": res.best_step,
            "final_dev_metric": res.final_metric,
            "steps": res.steps,
            "epochs": res.epochs,
            "train_time_s": train_time,
            "batching": res.batching,
            "resumed_from_step": res.resumed_from_step,
            "total_params": total,
            "trainable_params": trainable_now,
            "optimizer_params": res.trainable_params,
            "param_groups": groups,
            "structure": structure,
            "train_examples": len(task.train),
            "dev_examples": len(task.dev),
            "history": history,
            **setup.summary,
        }

    @staticmethod
    def _check_structure(ctx: StageContext, method, structure: dict) -> None:
        extra = [k for k in structure if k not in method.continues]
        if extra:
            raise UserError(
                f"{ctx.name}: the input model carries {', '.join(structure)}; method {method.name} needs a "
                "plain model (put a merge stage before it, or use method: learner)."
            )
        if structure.get("learners"):
            s = structure["learners"]
            ctx.log(
                f"[{ctx.name}] the input already carries rank-{s['rank']} Learners (from its attach stage); "
                "this stage's rank/targets/scale/init are not used"
            )
