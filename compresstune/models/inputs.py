"""The inputs a model takes: their names per architecture, and random example inputs."""

from __future__ import annotations

import torch
import torch.nn as nn

from .arch import arch_for


def model_inputs(model: nn.Module) -> tuple[str, ...]:
    """The input names this model's forward accepts (DistilBERT has no token_type_ids)."""
    spec = arch_for(model)
    return (
        ("input_ids", "attention_mask", "token_type_ids")
        if spec.uses_token_type_ids
        else ("input_ids", "attention_mask")
    )


def dummy_inputs(
    names, batch: int, seq: int, vocab: int, seed: int = 0, pad_tail: bool = True
) -> dict[str, torch.Tensor]:
    """Random token ids; when ``pad_tail``, later rows are padded so masking is exercised."""
    g = torch.Generator().manual_seed(seed)
    lo = min(1000, vocab // 2)  # a trimmed vocabulary may have fewer than 1000 tokens
    ids = torch.randint(lo, min(vocab, 30000), (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_tail and seq > 2:
        for b in range(1, batch):
            keep = max(2, seq - (b * seq) // (batch + 1))
            mask[b, keep:] = 0
            ids[b, keep:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        tt = torch.zeros(batch, seq, dtype=torch.long)
        tt[:, seq // 2 :] = 1
        out["token_type_ids"] = tt * mask
    return {k: out[k] for k in names}
