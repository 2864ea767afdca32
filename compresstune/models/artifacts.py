"""The one on-disk model format every stage reads and writes.

A model artifact is a folder:

* ``config.json`` + ``model.safetensors``: the Hugging Face config and weights,
* tokenizer files,
* ``compresstune.json``: task metadata (labels, metric), the per-layer shapes (heads,
  head size, FFN width) needed to rebuild a pruned model whose widths differ from
  the config, and the library versions that wrote it.

An artifact whose shapes match its config is a plain Hugging Face checkpoint:
``AutoModelForSequenceClassification.from_pretrained(folder)`` loads it with no
compresstune code. Whole models are never pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from ..machine import versions
from .arch import SkippedAttention, arch_for, base_linear, encoder_layers, get_module, set_module, skip_attention

META_FILE = "compresstune.json"
FORMAT_VERSION = 1


def layer_shapes(model: nn.Module) -> list[dict]:
    """Live per-layer widths: attention heads (0 when the layer's attention is skipped), head size, FFN width."""
    spec = arch_for(model)
    cfg_head_dim = getattr(model.config, spec.config_hidden) // getattr(model.config, spec.config_heads)
    out = []
    for layer in encoder_layers(model):
        ffn = base_linear(get_module(layer, spec.ffn_in))
        if isinstance(get_module(layer, spec.attn_block), SkippedAttention):
            out.append({"heads": 0, "head_dim": cfg_head_dim, "ffn": int(ffn.out_features)})
            continue
        att = get_module(layer, spec.attention)
        q = base_linear(get_module(layer, spec.q))
        head_dim = int(getattr(att, spec.head_dim_attr)) if spec.head_dim_attr else cfg_head_dim
        out.append({"heads": q.out_features // head_dim, "head_dim": head_dim, "ffn": int(ffn.out_features)})
    return out


def shapes_are_uniform_with_config(model: nn.Module, shapes: list[dict]) -> bool:
    spec = arch_for(model)
    cfg = model.config
    heads = getattr(cfg, spec.config_heads)
    hidden = getattr(cfg, spec.config_hidden)
    return all(
        s["heads"] == heads and s["head_dim"] * heads == hidden and s["ffn"] == getattr(cfg, spec.config_ffn)
        for s in shapes
    )


def fix_attention_attributes(model: nn.Module) -> None:
    """Make each attention module's head-count attributes match its live weights (torch-pruning leaves them stale)."""
    spec = arch_for(model)
    for layer in encoder_layers(model):
        if isinstance(get_module(layer, spec.attn_block), SkippedAttention):
            continue
        att = get_module(layer, spec.attention)
        q = base_linear(get_module(layer, spec.q))
        head_dim = int(getattr(att, spec.head_dim_attr))
        setattr(att, spec.heads_attr, q.out_features // head_dim)
        if spec.all_head_attr and spec.all_head_attr != "dim":
            setattr(att, spec.all_head_attr, q.out_features)
        if q.out_features == 0:
            skip_attention(layer, spec)


def apply_layer_shapes(model: nn.Module, shapes: list[dict]) -> None:
    """Resize a freshly built model's layers to recorded widths (values are overwritten by the load)."""
    spec = arch_for(model)
    for layer, s in zip(encoder_layers(model), shapes):
        inner = s["heads"] * s["head_dim"]
        for role in ("q", "k", "v"):
            old = get_module(layer, getattr(spec, role))
            set_module(layer, getattr(spec, role), nn.Linear(old.in_features, inner))
        old = get_module(layer, spec.o)
        set_module(layer, spec.o, nn.Linear(inner, old.out_features))
        old = get_module(layer, spec.ffn_in)
        set_module(layer, spec.ffn_in, nn.Linear(old.in_features, s["ffn"]))
        old = get_module(layer, spec.ffn_out)
        set_module(layer, spec.ffn_out, nn.Linear(s["ffn"], old.out_features))
        att = get_module(layer, spec.attention)
        if spec.head_dim_attr:
            setattr(att, spec.head_dim_attr, s["head_dim"])
    fix_attention_attributes(model)


def save_model(
    model: nn.Module,
    tokenizer,
    out_dir: str | Path,
    task_meta: dict,
    extra: dict | None = None,
    structure: dict | None = None,
) -> Path:
    """Write ``model`` (weights as safetensors), its tokenizer and metadata to ``out_dir``.

    ``structure`` records Learners/adapters/LoRA the model carries (see methods/)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if type(model).__name__.endswith("ForSequenceClassification"):
        # the head this checkpoint has, not the base model's: `pipeline()` and `optimum-cli export onnx` infer the
        # task from it
        model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    shapes = layer_shapes(model)
    meta = {
        "format_version": FORMAT_VERSION,
        "task": task_meta,
        "layer_shapes": shapes,
        "structure": structure or {},
        "plain_hf": shapes_are_uniform_with_config(model, shapes) and not structure,
        "versions": versions(),
        **(extra or {}),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return out_dir


def read_meta(folder: str | Path) -> dict:
    p = Path(folder) / META_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def load_model(folder: str | Path, rebuild=None):
    """(model, tokenizer, meta) from an artifact folder; rebuilds non-uniform layer widths.

    ``rebuild(model, structure) -> model`` re-applies what a fine-tuning method added (Learners,
    adapters, LoRA) before the weights load; :func:`compresstune.methods.load_artifact` passes
    the method registry's. Without it, an artifact that records such a structure is refused."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    meta = read_meta(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if meta.get("plain_hf", True):
        model = AutoModelForSequenceClassification.from_pretrained(folder, use_kernels=False)  # as models.resolve
    else:
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_config(config)
        apply_layer_shapes(model, meta["layer_shapes"])
        structure = meta.get("structure") or {}
        if structure and rebuild is None:
            raise ValueError(
                f"{folder} carries {', '.join(structure)}: load it with compresstune.methods.load_artifact"
            )
        model = rebuild(model, structure) if structure else model
        state = load_file(str(folder / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise RuntimeError(
                f"{folder}: weights do not match the recorded shapes "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
    model.eval()
    return model, tokenizer, meta
