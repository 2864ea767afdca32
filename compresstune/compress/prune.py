"""Structured pruning of attention heads and FFN neurons with torch-pruning.

Weights are physically removed (smaller matrices), never masked: only that speeds up
ONNX Runtime. The hidden size (the residual stream) is kept unless asked: every layer
writing to it (attention output, FFN output) is given to torch-pruning as ignored,
so only query/key/value heads (all of a head together, via ``num_heads``) and FFN
neurons are pruned. Afterwards the attention modules' head counts are corrected
(torch-pruning leaves them stale) and a layer left with no head has its attention
skipped.

* ``uniform``: the same ratio in every layer (a standard HF config still describes it).
* ``global``: heads and neurons ranked across layers (per-layer widths).
* target: a ratio, a parameter budget or a FLOP budget (found by bisection on the ratio).
* importance: weight magnitude (L2), or first-order Taylor ``|w * dL/dw|`` on a
  calibration set (the task's labelled examples; for unlabelled text the loss is the
  mean squared final hidden state, our documented proxy for output change).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch.nn as nn

from ..models.arch import SkippedAttention, arch_for, base_linear, encoder_layers, get_module
from ..models.artifacts import fix_attention_attributes, layer_shapes


@dataclass
class PruneSpec:
    head_ratio: float = 0.5
    ffn_ratio: float = 0.5
    mode: str = "uniform"  # or "global"
    importance: str = "magnitude"  # or "taylor"
    hidden_ratio: float = 0.0  # share of the hidden size removed in a second pass (0 = keep it)


def count_params(model: nn.Module) -> dict:
    spec = arch_for(model)
    emb = sum(p.numel() for p in get_module(get_module(model, spec.base), spec.embeddings).parameters())
    enc = sum(p.numel() for p in encoder_layers(model).parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "embeddings": emb, "encoder": enc, "head_and_other": total - emb - enc}


def encoder_flops(model: nn.Module, seq: int) -> int:
    """Multiply-accumulates x2 of the encoder for one sequence of ``seq`` tokens:
    the linear layers (2 * in * out per token) plus attention scores and context
    (2 * 2 * seq * heads * head_dim per token). Embedding lookups and the head are ignored."""
    spec = arch_for(model)
    total = 0
    for layer, shp in zip(encoder_layers(model), layer_shapes(model)):
        for role in ("q", "k", "v", "o", "ffn_in", "ffn_out"):
            try:
                lin = base_linear(get_module(layer, getattr(spec, role)))
            except AttributeError:
                continue  # skipped attention
            total += 2 * lin.in_features * lin.out_features * seq
        total += 2 * 2 * seq * seq * shp["heads"] * shp["head_dim"]
    return total


def _example_inputs(model: nn.Module, seq: int = 16) -> dict:
    from ..models.inputs import dummy_inputs, model_inputs

    return dummy_inputs(model_inputs(model), 2, seq, model.config.vocab_size, pad_tail=False)


def exact_head_ratio(ratio: float, heads: int) -> float:
    """torch-pruning removes ceil(ratio * heads) heads per layer in uniform mode, so 0.667 of 12
    (8.004) removes 9; we mean the nearest whole count (8), so pass a ratio just under it."""
    n = round(ratio * heads)
    return 0.0 if n == 0 else max(0.0, n / heads - 1e-6)


def _pruner(model: nn.Module, spec: PruneSpec, importance, example):
    import torch_pruning as tp

    aspec = arch_for(model)
    num_heads, ignored = {}, []
    for h in aspec.head_modules:
        ignored += [m for m in get_module(model, h).modules() if isinstance(m, nn.Linear)]
    for layer in encoder_layers(model):
        att = get_module(layer, aspec.attention)
        heads = int(getattr(att, aspec.heads_attr))
        for role in ("q", "k", "v"):
            num_heads[get_module(layer, getattr(aspec, role))] = heads
        ignored += [get_module(layer, aspec.o), get_module(layer, aspec.ffn_out)]  # the hidden size is a separate pass
        if spec.ffn_ratio == 0:
            ignored.append(get_module(layer, aspec.ffn_in))  # heads only: the FFNs are not a group to prune
    head_ratio = exact_head_ratio(spec.head_ratio, max(num_heads.values(), default=1))
    # uniform mode: no group loses more than its own ratio (the cap must admit the head ratio too, or a
    # heads-only pruning would silently remove nothing)
    cap = 1.0 if spec.mode == "global" else max(spec.ffn_ratio, head_ratio) + 1e-9
    return tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        global_pruning=spec.mode == "global",
        pruning_ratio=spec.ffn_ratio or head_ratio,  # a zero ratio makes torch-pruning skip every group
        ignored_layers=ignored,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=head_ratio,
        output_transform=lambda out: out.logits.sum(),
        max_pruning_ratio=cap,
    )


def _hidden_pruner(model: nn.Module, hidden_ratio: float, importance, example):
    """Second pass: only the residual stream. Every layer whose output is a head or FFN
    dimension (Q, K, V, FFN-in) and the logits layer are ignored, so what is left is the
    hidden size, shared by the embeddings, each attention output and FFN output, every
    LayerNorm and every reader's input, plus the pooler's (pre-classifier's) own output,
    which HF sizes as the hidden size too. The kept width is rounded down to a
    multiple of the config's head count, which HF checks when it rebuilds the model."""
    import torch_pruning as tp

    aspec = arch_for(model)
    hidden = getattr(model.config, aspec.config_hidden)
    heads = getattr(model.config, aspec.config_heads)
    keep = max(heads, (round(hidden * (1 - hidden_ratio)) // heads) * heads)
    ratio = (hidden - keep) / hidden
    ignored = []
    for h in (
        aspec.head_modules
    ):  # the logits keep their width; the pooler / pre-classifier shrinks with hidden (HF sizes it so)
        ignored += [
            m
            for m in get_module(model, h).modules()
            if isinstance(m, nn.Linear) and m.out_features == model.config.num_labels
        ]
    for layer in encoder_layers(model):
        skipped = isinstance(get_module(layer, aspec.attn_block), SkippedAttention)
        ignored += [
            get_module(layer, getattr(aspec, role)) for role in (("ffn_in",) if skipped else ("q", "k", "v", "ffn_in"))
        ]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        global_pruning=False,
        pruning_ratio=ratio,
        ignored_layers=ignored,
        output_transform=lambda out: out.logits.sum(),
    )
    return pruner, keep


def _taylor_gradients(model: nn.Module, batches, labelled: bool) -> None:
    """Accumulate gradients for Taylor importance over calibration batches."""
    model.zero_grad(set_to_none=True)
    model.eval()  # no dropout noise in the scores
    for batch, labels in batches:
        if labelled and labels is not None:
            loss = model(**batch, labels=labels).loss
        else:
            base = get_module(model, arch_for(model).base)
            loss = base(**batch).last_hidden_state.pow(2).mean()
        loss.backward()


def _run_pass(model: nn.Module, pruner, importance: str, calib_batches, labelled: bool) -> None:
    """One torch-pruning pass: Taylor gradients if asked, prune every group, drop the gradients,
    and make the attention modules' head counts match their new weights."""
    if importance == "taylor":
        _taylor_gradients(model, calib_batches, labelled)
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    fix_attention_attributes(model)


def prune_model(model: nn.Module, spec: PruneSpec, calib_batches=None, labelled: bool = True) -> dict:
    """Prune ``model`` in place; returns what changed. ``calib_batches``: [(inputs, labels)] for Taylor."""
    import torch_pruning as tp

    before_shapes, before_params = layer_shapes(model), count_params(model)
    if spec.importance == "taylor":
        if not calib_batches:
            raise ValueError("Taylor importance needs calibration batches")
        importance = tp.importance.GroupTaylorImportance()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    example = _example_inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _run_pass(model, _pruner(model, spec, importance, example), spec.importance, calib_batches, labelled)
        if spec.hidden_ratio > 0:
            aspec = arch_for(model)
            head_dims = [s["head_dim"] for s in layer_shapes(model)]
            pruner, keep = _hidden_pruner(model, spec.hidden_ratio, importance, example)
            _run_pass(model, pruner, spec.importance, calib_batches, labelled)
            setattr(model.config, aspec.config_hidden, keep)
            for layer, hd in zip(encoder_layers(model), head_dims):  # the head size is its own, not hidden / heads
                if not isinstance(get_module(layer, aspec.attn_block), SkippedAttention) and aspec.head_dim_attr:
                    setattr(get_module(layer, aspec.attention), aspec.head_dim_attr, hd)
            fix_attention_attributes(model)
            _check_hidden(model, keep)
    shapes = layer_shapes(model)
    if len({s["ffn"] for s in shapes}) == 1:
        # uniform FFN widths fit in the HF config, so FFN-only pruning still gives a plain checkpoint;
        # fewer heads cannot (HF derives the head size from hidden_size / num_heads)
        setattr(model.config, arch_for(model).config_ffn, shapes[0]["ffn"])
    return {
        "before": {"layer_shapes": before_shapes, "params": before_params},
        "after": {"layer_shapes": layer_shapes(model), "params": count_params(model)},
    }


def _check_hidden(model: nn.Module, keep: int) -> None:
    """Every module on the residual stream must now have width ``keep``."""
    aspec = arch_for(model)
    bad = []
    for name, m in get_module(model, aspec.base).named_modules():
        if isinstance(m, nn.LayerNorm) and m.normalized_shape[0] != keep:
            bad.append(f"{name} ({m.normalized_shape[0]})")
        elif isinstance(m, nn.Embedding) and m.embedding_dim != keep:
            bad.append(f"{name} ({m.embedding_dim})")
    if bad:
        raise RuntimeError(f"hidden-size pruning left modules at another width than {keep}: {', '.join(bad[:5])}")


def ratio_for_budget(model: nn.Module, spec: PruneSpec, measure, target: float, iters: int = 12) -> float:
    """Bisection on one ratio r (heads and FFN alike) so that ``measure(pruned) <= target``."""
    lo, hi = 0.0, 0.95
    trial = copy.deepcopy(model)
    prune_model(trial, PruneSpec(hi, hi, spec.mode, "magnitude", spec.hidden_ratio))
    if measure(trial) > target:
        from ..errors import UserError

        raise UserError(
            f"compress: the budget {target:g} cannot be met by pruning heads and FFN neurons (even 95% of them leaves "
            f"{measure(trial):g}); raise the budget, or use distillation to drop layers."
        )
    for _ in range(iters):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        prune_model(trial, PruneSpec(mid, mid, spec.mode, "magnitude", spec.hidden_ratio))
        if measure(trial) <= target:
            hi = mid
        else:
            lo = mid
    return hi
