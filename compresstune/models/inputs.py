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
    """Random token ids (compresstune/feeds.py) as tensors; when ``pad_tail``, later rows are padded."""
    from ..feeds import token_feed

    return {k: torch.from_numpy(v) for k, v in token_feed(names, batch, seq, vocab, seed, pad_tail).items()}
