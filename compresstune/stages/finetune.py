"""``finetune``: train a model on the task with one of the methods in learners/methods.py
(full fine-tuning, Learners with priming, or a baseline).

Input: the previous stage's model artifact, or the pipeline's pretrained ``model`` when
this is the first model stage. Output: ``model/`` (an artifact: with Learners, adapters
or LoRA still attached where the method has them; the ``merge`` stage folds them),
``history.json``."""

from __future__ import annotations

import copy
import math

from ..artifacts import load_model, save_model
from ..errors import UserError
from ..learners.far import ffn_node_change, split_ffns, unsplit_ffns
from ..learners.methods import group_counts, setup_method, steps_for_fraction
from ..learners.structure import attach_peft
from ..models import load_pretrained_for_task, load_tokenizer, resolve_model_path
from ..train import TrainSpec, count_params, train
from .base import Stage, StageContext, register


def load_input_model(ctx: StageContext):
    """(model, tokenizer, structure, source) from the input stage's artifact, else the pretrained model."""
    mdir = ctx.input_model_dir()
    if mdir is not None:
        model, tok, meta = load_model(mdir)
        want = ctx.task_meta()
        got = meta.get("task", {})
        if got and got.get("num_labels") != want["num_labels"]:
            raise UserError(f"{ctx.name}: the input model {mdir} has {got.get('num_labels')} labels but task {want['name']} needs {want['num_labels']}.")
        return model, tok, meta.get("structure") or {}, str(mdir)
    if ctx.inputs:
        names = ", ".join(r.name for r in ctx.inputs)
        raise UserError(f"{ctx.name}: reads from {names}, which produced no model. Set `{ctx.name}.input` to a stage that "
                        "outputs a model (finetune, compress, attach, merge), or `input: pretrained` to start from the pipeline's model.")
    ref = resolve_model_path(ctx.pipeline.model, ctx.pipeline.base_dir)
    tok = load_tokenizer(ref)
    task = ctx.task
    model = load_pretrained_for_task(ref, task.num_labels, task.problem_type)
    if task.label_names:
        model.config.id2label = dict(enumerate(task.label_names))
        model.config.label2id = {n: i for i, n in enumerate(task.label_names)}
    return model, tok, {}, ref


def load_plain_input_model(ctx: StageContext, action: str):
    """Like :func:`load_input_model`, for stages that need a model without Learners/adapters/LoRA."""
    model, tok, structure, source = load_input_model(ctx)
    if structure:
        raise UserError(f"{ctx.name}: the input model carries {', '.join(structure)}; {action} a plain model (merge first).")
    return model, tok, source


def train_spec(ctx: StageContext, **over) -> TrainSpec:
    cfg = ctx.cfg
    kw = dict(
        epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.lr, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
        warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16,
        eval_every_steps=cfg.eval_every_steps, checkpoint_every_steps=cfg.checkpoint_every_steps, select=cfg.select, seed=ctx.seed,
        group_by_length=cfg.group_by_length,
    )
    kw.update(over)
    return TrainSpec(**kw)


def _far_prepare(ctx: StageContext, model, tok, spec: TrainSpec) -> dict:
    """FAR priming: train a copy fully for a small share of the steps, then split the FFNs."""
    cfg = ctx.cfg
    steps_per_epoch = math.ceil(len(ctx.task.train) / spec.batch_size)
    total = spec.max_steps or max(1, math.ceil(spec.epochs * steps_per_epoch))
    n_prime = steps_for_fraction(total, cfg.far_priming_fraction)
    probe = copy.deepcopy(model)
    for p in probe.parameters():
        p.requires_grad_(True)
    ctx.log(f"[{ctx.name}] FAR priming: {n_prime} of {total} steps on a copy, then keep the top {cfg.far_retention:.0%} FFN nodes trainable")
    prime_spec = TrainSpec(**{**spec.__dict__, "max_steps": n_prime, "select": "last", "eval_every_steps": None})
    prime_spec.epochs = n_prime / steps_per_epoch
    # under checkpoints/ so that it is scratch, removed when the stage succeeds
    res = train(probe, ctx.task, tok, prime_spec, ctx.out_dir / "checkpoints" / "far_priming", ctx.pipeline.task.max_length, ctx.device,
                log=ctx.log, progress=False)
    scores = ffn_node_change(model, probe.to("cpu"))
    del probe
    for p in model.parameters():
        p.requires_grad_(True)
    kept = split_ffns(model, scores, cfg.far_retention)
    return {"far_priming_steps": n_prime, "far_priming_time_s": res.train_time_s, "far_nodes_trainable": kept}


@register
class FinetuneStage(Stage):
    type = "finetune"

    def run(self, ctx: StageContext) -> dict:
        import torch

        cfg = ctx.cfg
        torch.manual_seed(ctx.seed)  # the new classifier head's (and Learners') initialisation
        model, tok, structure, source = load_input_model(ctx)
        task = ctx.task
        ctx.log(f"[{ctx.name}] {task.name}: {len(task.train)} train / {len(task.dev)} dev examples; method {cfg.method}; model from {source}")
        spec = train_spec(ctx)
        extra: dict = {}
        if structure and cfg.method != "learner":
            raise UserError(f"{ctx.name}: the input model carries {', '.join(structure)}; method {cfg.method} needs a plain model (put a merge stage before it, or use method: learner).")
        if structure.get("learners"):
            s = structure["learners"]
            ctx.log(f"[{ctx.name}] the input already carries rank-{s['rank']} Learners (from its attach stage); this stage's rank/targets/scale/init are not used")
        if cfg.method == "far":
            extra = _far_prepare(ctx, model, tok, spec)
            setup = None
        else:
            setup = setup_method(model, cfg.method, cfg, log=lambda s: ctx.log(f"[{ctx.name}] {s}"))
            structure = {**structure, **setup.structure}
            if setup.peft_model is not None:
                model = attach_peft(setup.peft_model.base_model.model, setup.peft_model)
        groups = group_counts(model)
        total, trainable_now = count_params(model)
        res = train(model, task, tok, spec, ctx.out_dir / "checkpoints", max_length=ctx.pipeline.task.max_length, device=ctx.device,
                    phase_hook=setup.phase_hook if setup else None, optimizer_params=setup.optimizer_params if setup else None,
                    log=ctx.log, progress=ctx.progress)
        model.to("cpu")
        if cfg.method == "far":
            unsplit_ffns(model)  # back to plain linears for export
        save_model(model, tok, ctx.out_dir / "model", ctx.task_meta(), {"method": cfg.method, "source": source}, structure=structure)
        chosen = res.best_metric if cfg.select == "best" else res.final_metric
        train_time, history = res.train_time_s, res.history
        if cfg.method == "far":  # FAR's priming run is part of its cost: count it, and shift its curve by it
            pt = extra["far_priming_time_s"]
            train_time = round(train_time + pt, 2)
            history = [{**h, "train_time_s": round(h["train_time_s"] + pt, 3)} for h in history]
        return {
            "method": cfg.method, "metric": task.metric, "dev_metric": chosen, "best_dev_metric": res.best_metric,
            "best_step": res.best_step, "final_dev_metric": res.final_metric, "steps": res.steps, "epochs": res.epochs,
            "train_time_s": train_time, "resumed_from_step": res.resumed_from_step,
            "total_params": total, "trainable_params": trainable_now, "optimizer_params": res.trainable_params,
            "param_groups": groups, "structure": structure,
            "train_examples": len(task.train), "dev_examples": len(task.dev), "history": history, **extra,
        }
