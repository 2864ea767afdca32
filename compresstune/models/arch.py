"""The one architecture table, and module surgery helpers.

Module-name differences between BERT-like and DistilBERT-like models live in
:data:`ARCHITECTURES` only; code elsewhere asks :func:`arch_for` instead of testing
``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn

from ..errors import UserError


@dataclass(frozen=True)
class ArchSpec:
    """Where things are inside one family of encoder models.

    Paths are dotted attribute paths; ``layers`` is relative to the task model
    (``BertForSequenceClassification``), the per-layer names relative to one layer.
    """

    model_types: tuple[str, ...]
    base: str  # attribute holding the bare encoder model
    layers: str
    embeddings: str
    q: str
    k: str
    v: str
    o: str
    ffn_in: str
    ffn_out: str
    attention: str  # module carrying the head-count attributes
    heads_attr: str  # its attribute for the number of heads
    head_dim_attr: str | None  # its attribute for the size of one head (None: derived)
    all_head_attr: str | None  # its attribute for heads*head_dim (None: derived)
    config_heads: str
    config_ffn: str
    config_layers: str
    config_hidden: str
    head_modules: tuple[str, ...]  # classification head (trainable in Learner fine-tuning)
    uses_token_type_ids: bool
    attn_block: str = "attention"  # per-layer module replaced when a layer keeps no head
    out_proj_inside_attention: bool = False  # DistilBERT's out_lin lives inside its attention module

    def layer_modules(self) -> dict[str, str]:
        """The six target linears of one layer, by role."""
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "ffn_in": self.ffn_in, "ffn_out": self.ffn_out}


BERT = ArchSpec(
    model_types=("bert",),
    base="bert",
    layers="encoder.layer",
    embeddings="embeddings",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    attention="attention.self",
    heads_attr="num_attention_heads",
    head_dim_attr="attention_head_size",
    all_head_attr="all_head_size",
    config_heads="num_attention_heads",
    config_ffn="intermediate_size",
    config_layers="num_hidden_layers",
    config_hidden="hidden_size",
    head_modules=("bert.pooler", "classifier"),  # BERT's classifier reads the pooler's output
    uses_token_type_ids=True,
)

ROBERTA = replace(
    BERT,
    model_types=("roberta", "xlm-roberta", "camembert"),
    base="roberta",
    head_modules=("classifier",),
    uses_token_type_ids=False,
)
ELECTRA = replace(BERT, model_types=("electra",), base="electra", head_modules=("classifier",))

DISTILBERT = ArchSpec(
    model_types=("distilbert",),
    base="distilbert",
    layers="transformer.layer",
    embeddings="embeddings",
    q="attention.q_lin",
    k="attention.k_lin",
    v="attention.v_lin",
    o="attention.out_lin",
    ffn_in="ffn.lin1",
    ffn_out="ffn.lin2",
    attention="attention",
    heads_attr="n_heads",
    head_dim_attr="attention_head_size",
    all_head_attr="dim",
    config_heads="n_heads",
    config_ffn="hidden_dim",
    config_layers="n_layers",
    config_hidden="dim",
    head_modules=("pre_classifier", "classifier"),
    uses_token_type_ids=False,
    out_proj_inside_attention=True,
)

ARCHITECTURES: tuple[ArchSpec, ...] = (BERT, DISTILBERT, ROBERTA, ELECTRA)


def arch_for(model_or_config) -> ArchSpec:
    """The :class:`ArchSpec` for a model (or its config); a clear error if unsupported."""
    cfg = getattr(model_or_config, "config", model_or_config)
    mt = getattr(cfg, "model_type", None)
    for spec in ARCHITECTURES:
        if mt in spec.model_types:
            return spec
    known = sorted(t for s in ARCHITECTURES for t in s.model_types)
    raise UserError(
        f"model type {mt!r} is not supported by compresstune's architecture table (models/arch.py); "
        f"supported types: {', '.join(known)}. Pick a BERT- or DistilBERT-family checkpoint."
    )


def get_module(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = get_module(root, parent_path) if parent_path else root
    setattr(parent, name, new)


class SkippedAttention(nn.Module):
    """Stands in for the attention block of a layer whose heads were all pruned.

    With no heads the context is empty, so the output projection yields only its bias:
    BERT: ``LayerNorm(dropout(o.bias) + x)`` (its BertSelfOutput is kept as ``output``);
    DistilBERT: ``o.bias`` broadcast (the residual and LayerNorm live in the layer).
    Parameter names of the kept parts stay as they were."""

    def __init__(self, output: nn.Module, bert_style: bool):
        super().__init__()
        self.bert_style = bert_style
        if bert_style:
            self.output = output  # BertSelfOutput: dense (0 inputs), LayerNorm, dropout
        else:
            self.out_lin = output

    def forward(self, hidden_states, *args, **kwargs):
        if self.bert_style:
            bias = self.output.dense.bias
            return self.output.LayerNorm(self.output.dropout(bias.expand_as(hidden_states)) + hidden_states), None
        return self.out_lin.bias.expand_as(hidden_states), None


def skip_attention(layer: nn.Module, spec: ArchSpec) -> None:
    """Replace a no-head layer's attention block by :class:`SkippedAttention`."""
    block = get_module(layer, spec.attn_block)
    if isinstance(block, SkippedAttention):
        return
    if spec.out_proj_inside_attention:
        new = SkippedAttention(get_module(block, spec.o.split(".", 1)[1]), bert_style=False)
    else:
        new = SkippedAttention(get_module(layer, spec.o.rsplit(".", 1)[0]), bert_style=True)
    set_module(layer, spec.attn_block, new)


def base_linear(mod: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` inside a wrapper (Learner, adapter, LoRA layer), or the module itself."""
    while not isinstance(mod, nn.Linear):
        for attr in ("base", "proj", "base_layer"):
            if hasattr(mod, attr):
                mod = getattr(mod, attr)
                break
        else:
            raise TypeError(f"{type(mod).__name__} wraps no nn.Linear")
    return mod


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    spec = arch_for(model)
    return get_module(get_module(model, spec.base), spec.layers)


def layer_prefix(model: nn.Module, i: int) -> str:
    """Dotted path of encoder layer ``i`` within the task model."""
    spec = arch_for(model)
    return f"{spec.base}.{spec.layers}.{i}"
