"""``compress``: structured pruning (torch-pruning) or distillation into a smaller student.

Input: the model to compress: an earlier stage's artifact (a fine-tuned teacher for
task-specific work), else the pipeline's pretrained ``model``. Output: ``model/``, an
artifact with physically smaller matrices that reloads without torch-pruning or the
original model, and a compression record (parameters, FLOPs, dev metric before/after)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from ..compress.distill import DistillLoss, every_other, keep_layers_student
from ..compress.prune import PruneSpec, count_params, encoder_flops, prune_model, ratio_for_budget
from ..data.batching import collate, encode
from ..data.task import Split
from ..errors import UserError
from ..models.arch import encoder_layers
from ..models.artifacts import save_model
from ..models.inputs import model_inputs
from ..train.distributed import is_main_process
from ..train.evaluate import evaluate
from ..train.loop import train
from .base import Stage, StageContext, register
from .inputs import load_plain_input_model

FLOP_SEQS = (64, 128)


def _unlabelled(ctx: StageContext) -> Split:
    cfg = ctx.cfg
    if cfg.text_file:
        p = Path(cfg.text_file)
        if not p.is_absolute():
            p = ctx.pipeline.base_dir / p
        if not p.is_file():
            raise UserError(f"{ctx.name}.text_file: {p} does not exist; give a text file with one example per line.")
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise UserError(f"{ctx.name}.text_file: {p} has no text.")
        return Split([(ln,) for ln in lines], [0] * len(lines))
    tr = ctx.task.train  # the task's training sentences, labels dropped
    return Split(tr.texts, [0] * len(tr))


def _unlabelled_task(ctx: StageContext):
    """The task with its training split replaced by unlabelled text (task-agnostic distillation)."""
    from ..data.task import TaskData

    task = ctx.task
    return TaskData(
        task.name, _unlabelled(ctx), task.dev, task.num_labels, task.metric, task.is_regression, task.label_names
    )


def _flop_seqs(ctx) -> list[int]:
    """128 (the budget's default length) and 64, plus every benchmark stage's sequence lengths."""
    return sorted(
        set(FLOP_SEQS) | {s for st in ctx.pipeline.stages.values() if st.type == "benchmark" for s in st.seq_lengths}
    )


def _summary_of(model, seqs=FLOP_SEQS) -> dict:
    out = {
        "params": count_params(model),
        "gflops_per_seq": {str(s): round(encoder_flops(model, s) / 1e9, 4) for s in seqs},
        "layers": len(encoder_layers(model)),
    }
    return out


@register
class CompressStage(Stage):
    type = "compress"
    version = 2  # 2: heads-only pruning (ffn_ratio 0) prunes heads; it silently removed nothing before
    distributed = True  # under `accelerate launch` every process runs it (the runner); only the main one saves

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.cfg
        torch.manual_seed(ctx.seed)
        model, tok, source = load_plain_input_model(ctx, "compress")
        model.eval()
        task = ctx.task
        has_head = ctx.input_model_dir() is not None  # a fine-tuned input has a trained head worth scoring
        dev_enc = encode(tok, task.dev, ctx.pipeline.task.max_length)
        pad = tok.pad_token_id or 0
        seqs = _flop_seqs(ctx)
        before = _summary_of(model, seqs)
        if has_head:
            before["dev"] = evaluate(model, task, dev_enc, pad)["main"]
        teacher = copy.deepcopy(model)
        if cfg.method == "prune":
            student, info = self._prune(ctx, model, tok)
        else:
            student, info = self._layer_student(ctx, model)
        heal = cfg.method == "distill" or cfg.heal_epochs > 0
        if heal:
            info["distill"] = self._distill(ctx, teacher, student, tok, info.get("keep_layers"))
        if not is_main_process():
            return {}  # one of several training processes: the main one scores and saves the student
        student.to("cpu").eval()
        after = _summary_of(student, seqs)
        task_specific = cfg.method == "distill" and cfg.distill_mode == "task_specific"
        if has_head or task_specific:
            after["dev"] = evaluate(student, task, dev_enc, pad)["main"]
        save_model(
            student, tok, ctx.out_dir / "model", ctx.task_meta(), {"compressed_from": source, "compression": cfg.method}
        )
        size = os.path.getsize(ctx.out_dir / "model" / "model.safetensors")
        ctx.log(
            f"[{ctx.name}] params {before['params']['total']:,} -> {after['params']['total']:,}; "
            f"encoder GFLOPs@128 {before['gflops_per_seq']['128']} -> {after['gflops_per_seq']['128']}"
        )
        return {
            "method": cfg.method,
            "metric": task.metric,
            "before": before,
            "after": after,
            "size_mb": round(size / 2**20, 2),
            "source": source,
            **info,
        }

    def _layer_student(self, ctx, model):
        """A student made of some of the teacher's encoder layers (``keep_layers``, else every other one)."""
        cfg = ctx.cfg
        n = len(encoder_layers(model))
        if (
            cfg.keep_layers
            and not all(0 <= i < n for i in cfg.keep_layers)
            or len(set(cfg.keep_layers or [])) != len(cfg.keep_layers or [])
        ):
            raise UserError(f"{ctx.name}.keep_layers: {cfg.keep_layers} must name distinct teacher layers 0..{n - 1}.")
        if not cfg.keep_layers and cfg.student_layers >= n:
            raise UserError(
                f"{ctx.name}.student_layers: {cfg.student_layers} is not fewer than the teacher's {n} layers."
            )
        keep = cfg.keep_layers or every_other(n, cfg.student_layers)
        student = keep_layers_student(model, keep)
        ctx.log(f"[{ctx.name}] student keeps teacher layers {keep}")
        return student, {"keep_layers": keep}

    def _prune(self, ctx, model, tok):
        cfg = ctx.cfg
        spec = PruneSpec(cfg.head_ratio, cfg.ffn_ratio, cfg.mode, cfg.importance, cfg.hidden_ratio)
        self._fit_budget(ctx, model, spec)
        labelled = cfg.calibration == "task"
        calib = self._calibration_batches(ctx, model, tok, labelled) if cfg.importance == "taylor" else None
        ctx.log(
            f"[{ctx.name}] pruning {spec.head_ratio:.0%} of heads and {spec.ffn_ratio:.0%} of FFN neurons "
            f"({spec.mode}, {spec.importance})"
        )
        rep = prune_model(model, spec, calib, labelled)
        if cfg.target != "ratio":  # the budget search ranks by magnitude; Taylor/global ranking can land elsewhere
            self._check_budget(ctx, model)
        return model, {
            "prune": {
                "head_ratio": spec.head_ratio,
                "ffn_ratio": spec.ffn_ratio,
                "mode": spec.mode,
                "importance": spec.importance,
                "layer_shapes_before": rep["before"]["layer_shapes"],
                "layer_shapes_after": rep["after"]["layer_shapes"],
            }
        }

    @staticmethod
    def _fit_budget(ctx, model, spec: PruneSpec) -> None:
        """With ``target: params`` or ``flops``, set the head and FFN ratios that meet the budget."""
        cfg = ctx.cfg
        if cfg.target == "params":
            if not cfg.target_params:
                raise UserError(f"{ctx.name}.target_params: required with target: params.")
            r = ratio_for_budget(model, spec, lambda m: count_params(m)["total"], cfg.target_params)
            spec.head_ratio = spec.ffn_ratio = r
        elif cfg.target == "flops":
            if not cfg.target_gflops:
                raise UserError(f"{ctx.name}.target_gflops: required with target: flops.")
            r = ratio_for_budget(model, spec, lambda m: encoder_flops(m, cfg.flops_seq) / 1e9, cfg.target_gflops)
            spec.head_ratio = spec.ffn_ratio = r

    @staticmethod
    def _calibration_batches(ctx, model, tok, labelled: bool) -> list:
        """Batches of 32 for Taylor importance: (inputs, labels), labels None for unlabelled text."""
        cfg = ctx.cfg
        split = ctx.task.train if labelled else _unlabelled(ctx)
        split = split.subset(cfg.calibration_examples, ctx.seed)
        enc = encode(tok, split, ctx.pipeline.task.max_length)
        names = model_inputs(model)
        lab = torch.tensor(split.labels, dtype=torch.float if ctx.task.is_regression else torch.long)
        calib = []
        for i in range(0, len(enc), 32):
            b = {
                k: v
                for k, v in collate(enc[i : i + 32], tok.pad_token_id or 0, "token_type_ids" in names).items()
                if k in names
            }
            calib.append((b, lab[i : i + 32] if labelled else None))
        return calib

    @staticmethod
    def _check_budget(ctx, model) -> None:
        cfg = ctx.cfg
        got = count_params(model)["total"] if cfg.target == "params" else encoder_flops(model, cfg.flops_seq) / 1e9
        want = cfg.target_params if cfg.target == "params" else cfg.target_gflops
        if got > want * 1.001:
            from ..errors import CheckFailed

            raise CheckFailed(
                f"{ctx.name}: the pruned model has {got:g} ({cfg.target}), over the budget {want:g}: the ratio was "
                "searched with magnitude importance and the final ranking differs. Use importance: magnitude or "
                "lower the budget a little."
            )

    def _distill(self, ctx, teacher, student, tok, keep):
        cfg = ctx.cfg
        task_specific = self._task_specific(ctx)
        teacher.to(ctx.device)  # train() moves only the student
        n_t = len(encoder_layers(teacher))
        layer_map = keep if keep is not None else list(range(n_t))
        if cfg.attention_weight:
            for m in (teacher, student):
                m.config._attn_implementation = "eager"  # attention probabilities are returned by the eager path only
        loss = DistillLoss(
            teacher,
            layer_map,
            cfg.temperature,
            cfg.logit_weight if task_specific else 0.0,
            cfg.hidden_weight,
            cfg.attention_weight,
            cfg.task_weight if task_specific else 0.0,
            ctx.task.is_regression,
        )
        task = ctx.task if task_specific else _unlabelled_task(ctx)
        over = {"select": "last"} if not task_specific else {}
        if cfg.method == "prune":
            over["epochs"] = cfg.heal_epochs
        spec = cfg.train_options(ctx.seed, ctx.device, **over)
        precision = ctx.precision()
        for p in student.parameters():
            p.requires_grad_(True)
        res = train(
            student,
            task,
            tok,
            spec,
            ctx.out_dir / "checkpoints",
            max_length=ctx.pipeline.task.max_length,
            device=ctx.device,
            log=ctx.log,
            progress=ctx.progress,
            loss_fn=loss,
            evaluate_dev=task_specific,
        )
        return {
            "mode": "task_specific" if task_specific else "task_agnostic",
            "steps": res.steps,
            "train_time_s": res.train_time_s,
            "batching": res.batching,
            "layer_map": layer_map,
            "best_dev": res.best_metric,
            "history": res.history,
            **precision,
        }

    @staticmethod
    def _task_specific(ctx) -> bool:
        """Whether distillation uses the teacher's logits and the task labels (needs a fine-tuned teacher)."""
        cfg = ctx.cfg
        task_specific = (
            cfg.method == "distill"
            and cfg.distill_mode == "task_specific"
            or (cfg.method == "prune" and ctx.input_model_dir() is not None)
        )
        if task_specific and ctx.input_model_dir() is None:
            raise UserError(
                f"{ctx.name}: distill_mode task_specific distils the teacher's logits, but the teacher is the "
                f"pretrained model with an untrained head. Put a fine-tuned teacher first (`{ctx.name}.input: "
                "teacher`) or use distill_mode: task_agnostic."
            )
        return task_specific
