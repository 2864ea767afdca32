"""Parameter groups: every parameter of a model in exactly one named group.

Methods decide what trains by group ("learners", "bias", "layernorm", "head", ...);
"head" is the classification head (DistilBERT: pre_classifier + classifier; BERT:
pooler + classifier). Groups are found through the architecture table.
"""

from __future__ import annotations

import torch.nn as nn

from ..models.arch import arch_for, base_linear, encoder_layers, get_module
from .adapters import Bottleneck
from .learner_layer import learner_modules


def param_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every parameter in exactly one group: embeddings, attention, ffn, learners, adapters,
    lora, layernorm, bias, head, other."""
    spec = arch_for(model)
    head_ids = {id(p) for h in spec.head_modules for p in _head_params(model, h)}
    emb_ids = {id(p) for p in get_module(get_module(model, spec.base), spec.embeddings).parameters()}
    ln_ids = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    learner_ids = {id(p) for m in learner_modules(model).values() for p in (m.P1, m.P2)}
    adapter_ids = {id(p) for m in model.modules() if isinstance(m, Bottleneck) for p in m.parameters()}
    att_ids, ffn_ids = set(), set()
    for layer in encoder_layers(model):
        for roles, ids in ((("q", "k", "v", "o"), att_ids), (("ffn_in", "ffn_out"), ffn_ids)):
            for role in roles:
                try:
                    ids |= {id(p) for p in _linear_weights(get_module(layer, getattr(spec, role)))}
                except AttributeError:  # attention skipped after all its heads were pruned
                    pass
    groups: dict[str, list] = {
        k: []
        for k in (
            "embeddings",
            "attention",
            "ffn",
            "learners",
            "adapters",
            "lora",
            "layernorm",
            "bias",
            "head",
            "other",
        )
    }
    for name, p in model.named_parameters():
        i = id(p)
        if i in head_ids and "lora_" not in name:
            g = "head"
        elif "lora_" in name:
            g = "lora"
        elif i in learner_ids:
            g = "learners"
        elif i in adapter_ids:
            g = "adapters"
        elif i in emb_ids and i not in ln_ids:
            g = "embeddings"
        elif i in ln_ids:
            g = "layernorm"
        elif name.endswith("bias"):
            g = "bias"
        elif i in att_ids:
            g = "attention"
        elif i in ffn_ids:
            g = "ffn"
        else:
            g = "other"
        groups[g].append((name, p))
    return groups


def _head_params(model: nn.Module, path: str) -> list[nn.Parameter]:
    """A head module's parameters. A head the architecture table names must exist: a renamed
    module would otherwise silently leave the head out of training. A slot that exists but is
    empty (BERT built without its pooler) has no parameters."""
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path) if parent_path else model
    if not hasattr(parent, name):
        raise RuntimeError(
            f"{type(model).__name__} has no module `{path}`, which the architecture table "
            f"(compresstune/models/arch.py) names as part of its classification head; "
            "update the table's head_modules for this model type."
        )
    mod = getattr(parent, name)
    return [] if mod is None else list(mod.parameters())


def _linear_weights(mod: nn.Module) -> list[nn.Parameter]:
    """Weight matrices of a (possibly wrapped or FAR-split) projection, without biases."""
    from .far import SplitIn, SplitOut  # far imports this module

    if isinstance(mod, (SplitIn, SplitOut)):
        return [mod.train_part.weight, mod.frozen_part.weight]
    try:
        return [base_linear(mod).weight]
    except TypeError:
        return []


def group_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    out = {}
    for g, ps in param_groups(model).items():
        if ps:
            out[g] = {
                "total": sum(p.numel() for _, p in ps),
                "trainable": sum(p.numel() for _, p in ps if p.requires_grad),
            }
    return out


def train_only(model: nn.Module, groups: set[str], extra: list[nn.Parameter] = ()) -> None:
    pg = param_groups(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for g in groups:
        for _, p in pg[g]:
            p.requires_grad_(True)
    for p in extra:
        p.requires_grad_(True)


def bitfit_params(model: nn.Module) -> list[nn.Parameter]:
    """Every bias vector, LayerNorm biases included (not LayerNorm weights)."""
    return [p for n, p in model.named_parameters() if n.endswith("bias")]
