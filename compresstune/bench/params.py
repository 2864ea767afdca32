"""``compresstune inspect params``: parameter accounting of a fine-tuning method on a model."""

from __future__ import annotations

from pathlib import Path

import torch

from ..methods import PrepareContext, get_method
from ..methods.groups import group_counts


def build_model(ref: str, num_labels: int = 2):
    """A sequence-classification model: ``config:TYPE`` builds one with random weights from
    the default config of TYPE (``config:distilbert``, ``config:bert``); anything else is
    a model reference (alias, folder, hub id) or an artifact folder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if ref.startswith("config:"):
        cfg = AutoConfig.for_model(ref.split(":", 1)[1], num_labels=num_labels)
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(cfg)
    from ..methods import load_artifact
    from ..models.artifacts import META_FILE
    from ..models.resolve import load_pretrained_for_task, resolve_model_path

    if (Path(ref) / META_FILE).is_file():
        return load_artifact(ref)[0]
    return load_pretrained_for_task(resolve_model_path(ref), num_labels, "single_label_classification")


def prepare_for_counting(model, method_name: str, **options):
    """``model`` set up for a method as training would start it (FAR: with placeholder node
    scores, which do not change the counts); returns (model, setup). ``options`` that the
    method does not have are ignored."""
    method = get_method(method_name)
    opts = method.options(**{k: v for k, v in options.items() if k in method.Options.model_fields})
    setup = method.prepare(model, opts, PrepareContext())
    return setup.model or model, setup


def param_report(model, method: str, **options) -> dict:
    """Total, trainable and per-group parameter counts of ``method`` on ``model``."""
    base_total = sum(p.numel() for p in model.parameters())
    model, setup = prepare_for_counting(model, method, **options)
    peft = getattr(model, "__dict__", {}).get("_compresstune_peft")
    counted = peft if peft is not None else model
    total = sum(p.numel() for p in counted.parameters())
    trainable = sum(p.numel() for p in counted.parameters() if p.requires_grad)
    return {
        "method": method,
        "base_params": base_total,
        "total_params": total,
        "added_params": total - base_total,
        "trainable_params": trainable,
        "trainable_share": trainable / total,
        "groups": group_counts(counted),
    }
