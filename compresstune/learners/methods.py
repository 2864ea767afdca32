"""Fine-tuning methods: what trains, when, and how the result merges.

| method | trains | merges |
|---|---|---|
| full | everything | nothing to merge |
| learner | Learners + every bias + every LayerNorm + head; Q,K,V,O too during the first ``priming_epochs`` | folded into W (merge stage) |
| bitfit | every bias (LayerNorm biases included) + head | nothing to merge |
| freeze_ffn | everything but the FFN weight matrices and the embeddings | nothing to merge |
| adapters_seq / adapters_par | adapters + every LayerNorm + head | cannot merge (nonlinear); exported with adapters |
| far | everything but the frozen (1 - retention) FFN nodes | split undone after training: plain |
| lora (PEFT) | LoRA A/B + head | PEFT merge_and_unload (merge stage) |

"head" is the classification head (DistilBERT: pre_classifier + classifier; BERT:
pooler + classifier). Parameter groups are found through the architecture table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..models import arch_for, base_linear, encoder_layers, get_module
from .adapters import Bottleneck, add_adapters
from .learner import attach_learners, learner_modules

METHODS = ("full", "learner", "bitfit", "freeze_ffn", "adapters_seq", "adapters_par", "far", "lora")


def param_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every parameter in exactly one group: embeddings, attention, ffn, learners, adapters,
    lora, layernorm, bias, head, other."""
    spec = arch_for(model)
    head_ids = {id(p) for h in spec.head_modules for p in _maybe(model, h)}
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
    groups: dict[str, list] = {k: [] for k in ("embeddings", "attention", "ffn", "learners", "adapters", "lora", "layernorm", "bias", "head", "other")}
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


def _maybe(model, path):
    try:
        return list(get_module(model, path).parameters())
    except AttributeError:
        return []


def _linear_weights(mod: nn.Module) -> list[nn.Parameter]:
    """Weight matrices of a (possibly wrapped or FAR-split) projection, without biases."""
    from .far import SplitIn, SplitOut

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
            out[g] = {"total": sum(p.numel() for _, p in ps), "trainable": sum(p.numel() for _, p in ps if p.requires_grad)}
    return out


@dataclass
class MethodSetup:
    """What the training loop needs to run a method."""

    phase_hook: Callable[[int, float], None] | None = None
    optimizer_params: list[nn.Parameter] | None = None
    structure: dict = field(default_factory=dict)  # saved with the artifact to rebuild the model
    peft_model: object = None


def _train_only(model: nn.Module, groups: set[str], extra: list[nn.Parameter] = ()) -> None:
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


def setup_method(model: nn.Module, method: str, opts, log=print) -> MethodSetup:
    """Configure ``model`` (in place) for ``method``; ``opts`` is the stage's method settings."""
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return MethodSetup()
    if method == "learner":
        structure = {}
        if not learner_modules(model):
            structure = {"learners": attach_learners(model, opts.rank, tuple(opts.targets), opts.scale, opts.init)}
            log(f"attached rank-{opts.rank} Learners to {len(structure['learners']['paths'])} linears")
        base_groups = {"learners", "bias", "layernorm", "head"}
        _train_only(model, base_groups)
        attention = [p for _, p in param_groups(model)["attention"]]
        p_epochs = float(opts.priming_epochs)
        state = {"primed": None}

        def hook(step: int, epoch: float) -> None:
            priming = epoch < p_epochs
            if state["primed"] != priming:
                for p in attention:
                    p.requires_grad_(priming)
                    if not priming:
                        p.grad = None
                state["primed"] = priming
                log(f"step {step}: {'priming: attention Q,K,V,O train with the Learners' if priming else 'attention frozen; Learners, biases, LayerNorm and head train'}")

        optimizer = [p for g in base_groups for _, p in param_groups(model)[g]] + (attention if p_epochs > 0 else [])
        return MethodSetup(hook if p_epochs > 0 else None, optimizer, structure)
    if method == "bitfit":
        _train_only(model, {"head"}, bitfit_params(model))
        return MethodSetup()
    if method == "freeze_ffn":
        for p in model.parameters():
            p.requires_grad_(True)
        for g in ("ffn", "embeddings"):
            for _, p in param_groups(model)[g]:
                p.requires_grad_(False)
        return MethodSetup()
    if method in ("adapters_seq", "adapters_par"):
        info = add_adapters(model, "sequential" if method == "adapters_seq" else "parallel", opts.adapter_size)
        _train_only(model, {"adapters", "layernorm", "head"})
        return MethodSetup(structure={"adapters": info})
    if method == "lora":
        return _setup_lora(model, opts)
    if method == "far":
        raise ValueError("far is set up by the finetune stage (it needs a priming run); see stages/finetune.py")
    raise ValueError(f"unknown method {method!r}")


def lora_target_regex(model: nn.Module, targets) -> str:
    spec = arch_for(model)
    roles = spec.layer_modules()
    import re

    alts = "|".join(re.escape(roles[t]) for t in targets)
    return rf".*{re.escape(spec.base)}\.{re.escape(spec.layers)}\.\d+\.({alts})"


def lora_config(model: nn.Module, opts):
    from peft import LoraConfig

    spec = arch_for(model)
    return LoraConfig(r=opts.rank, lora_alpha=opts.lora_alpha, lora_dropout=0.0, target_modules=lora_target_regex(model, opts.targets),
                      modules_to_save=[h.split(".")[-1] for h in spec.head_modules], bias="none")


def _setup_lora(model: nn.Module, opts) -> MethodSetup:
    from peft import get_peft_model

    cfg = lora_config(model, opts)
    peft_model = get_peft_model(model, cfg)
    return MethodSetup(structure={"lora": {"rank": opts.rank, "alpha": opts.lora_alpha, "targets": list(opts.targets)}}, peft_model=peft_model)


def steps_for_fraction(total_steps: int, fraction: float) -> int:
    return max(1, math.ceil(total_steps * fraction))
