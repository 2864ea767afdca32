"""``compresstune inspect params``: parameter accounting of a fine-tuning method on a model."""

from __future__ import annotations

import types

import torch

from .learners.methods import METHODS, group_counts, setup_method


def build_model(ref: str, num_labels: int = 2):
    """A sequence-classification model: ``config:TYPE`` builds one with random weights from
    the default config of TYPE (``config:distilbert``, ``config:bert``); anything else is
    a model reference (alias, folder, hub id) or an artifact folder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if ref.startswith("config:"):
        cfg = AutoConfig.for_model(ref.split(":", 1)[1], num_labels=num_labels)
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(cfg)
    from pathlib import Path

    from .artifacts import META_FILE, load_model
    from .models import load_pretrained_for_task, resolve_model_path

    if (Path(ref) / META_FILE).is_file():
        return load_model(ref)[0]
    return load_pretrained_for_task(resolve_model_path(ref), num_labels, "single_label_classification")


def param_report(model, method: str, rank: int = 64, priming_epochs: float = 0.0, adapter_size: int = 256,
                 far_retention: float = 0.1, targets=("q", "k", "v", "o", "ffn_in", "ffn_out"), lora_alpha: float = 16.0) -> dict:
    base_total = sum(p.numel() for p in model.parameters())
    opts = types.SimpleNamespace(rank=rank, targets=list(targets), scale=1.0, init="kaiming_zero", priming_epochs=priming_epochs,
                                 adapter_size=adapter_size, lora_alpha=lora_alpha)
    if method == "far":
        from .learners.far import split_ffns
        from .models import encoder_layers, arch_for, get_module, base_linear

        spec = arch_for(model)
        scores = [torch.arange(base_linear(get_module(layer, spec.ffn_in)).out_features, 0, -1).float() for layer in encoder_layers(model)]
        for p in model.parameters():
            p.requires_grad_(True)
        split_ffns(model, scores, far_retention)  # which nodes does not change the counts
    else:
        setup = setup_method(model, method, opts, log=lambda s: None)
        if setup.peft_model is not None:
            model = setup.peft_model
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"method": method, "base_params": base_total, "total_params": total, "added_params": total - base_total,
            "trainable_params": trainable, "trainable_share": trainable / total, "groups": group_counts(model)}


__all__ = ["METHODS", "build_model", "param_report"]
