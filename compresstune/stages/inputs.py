"""What stages read: the input stage's model artifact (or the pipeline's pretrained model)."""

from __future__ import annotations

from ..errors import UserError
from ..methods import load_artifact
from ..models.resolve import load_pretrained_for_task, load_tokenizer, resolve_model_path
from .base import StageContext


def load_input_model(ctx: StageContext):
    """(model, tokenizer, structure, source) from the input stage's artifact, else the pretrained model."""
    mdir = ctx.input_model_dir()
    if mdir is not None:
        model, tok, meta = load_artifact(mdir)
        want = ctx.task_meta()
        got = meta.get("task", {})
        if got and got.get("num_labels") != want["num_labels"]:
            raise UserError(
                f"{ctx.name}: the input model {mdir} has {got.get('num_labels')} labels but task "
                f"{want['name']} needs {want['num_labels']}."
            )
        return model, tok, meta.get("structure") or {}, str(mdir)
    if ctx.inputs:
        names = ", ".join(r.name for r in ctx.inputs)
        raise UserError(
            f"{ctx.name}: reads from {names}, which produced no model. Set `{ctx.name}.input` to a stage that "
            "outputs a model (finetune, compress, attach, merge), or `input: pretrained` to start from the "
            "pipeline's model."
        )
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
        raise UserError(
            f"{ctx.name}: the input model carries {', '.join(structure)}; {action} a plain model (merge first)."
        )
    return model, tok, source
