"""The facts a bundle's model card header states (deploy/card.py ``front_matter``): base model, license and
language, the dataset and split the metric was measured on, and tags naming the compression and method."""

from __future__ import annotations

from pathlib import Path

from ..data.glue import GLUE_TASKS
from ..models.resolve import base_model_facts
from .base import StageContext


def _dataset(ctx: StageContext) -> tuple[list[str] | None, dict]:
    t = ctx.pipeline.task
    held = f"train (held-out {t.holdout} examples, task.holdout)" if t.holdout else None
    if t.name in GLUE_TASKS:
        g = GLUE_TASKS[t.name]
        split = held or g.hf_dev_split
        return ["nyu-mll/glue"], {"type": "nyu-mll/glue", "name": f"GLUE {g.folder}", "config": t.name, "split": split}
    name = Path(t.dev_file).name if t.dev_file else "custom"
    return None, {"type": "custom", "name": name, "split": held or "dev"}


def _tags(ctx: StageContext) -> list[str]:
    tags = ["text-classification"]
    for sc in ctx.pipeline.stages.values():
        if sc.type == "compress":
            tags.append({"prune": "pruned", "distill": "distilled"}.get(sc.method, sc.method))
        elif sc.type == "finetune":
            tags.append(f"finetune-{sc.method}")
    return tags


def card_meta(ctx: StageContext) -> dict:
    """``meta`` for :func:`compresstune.deploy.card.model_card` from the run's pipeline."""
    base_dir = Path(ctx.pipeline.source).parent if ctx.pipeline.source else None
    datasets, dataset = _dataset(ctx)
    return {
        **base_model_facts(ctx.pipeline.model, base_dir),
        "datasets": datasets,
        "dataset": dataset,
        "tags": _tags(ctx),
    }
