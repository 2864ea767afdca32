"""Tokenising once, padding per batch, and the batch order of an epoch."""

from __future__ import annotations

import torch

from .task import Split


def encode(tokenizer, split: Split, max_length: int) -> list[dict]:
    """Tokenize once, without padding (padding happens per batch)."""
    cols = list(zip(*split.texts)) if split.texts else [[]]
    enc = tokenizer(*[list(c) for c in cols], truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(split))]


def collate(examples: list[dict], pad_id: int, with_token_types: bool = True) -> dict[str, torch.Tensor]:
    n = max(len(e["input_ids"]) for e in examples)
    out = {
        "input_ids": torch.full((len(examples), n), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), n), dtype=torch.long),
    }
    if with_token_types and "token_type_ids" in examples[0]:
        out["token_type_ids"] = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        L = len(e["input_ids"])
        out["input_ids"][i, :L] = torch.tensor(e["input_ids"])
        out["attention_mask"][i, :L] = 1
        if "token_type_ids" in out:
            out["token_type_ids"][i, :L] = torch.tensor(e["token_type_ids"])
    return out


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True
) -> list[list[int]]:
    """The batches of one epoch, a pure function of (seed, epoch) so a resumed run sees the same order.

    With ``group_by_length``, the shuffled examples are cut into mega-batches of 50
    batches, each sorted by length and split into batches, and the batches shuffled:
    batches hold similar lengths, so dynamic padding wastes little (about 2x faster on
    SST-2 than random batches) while the order stays random."""
    n = len(lengths)
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if not group_by_length:
        return [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    mega = 50 * batch_size
    batches = []
    for c in range(0, n, mega):
        chunk = sorted(perm[c : c + mega], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in order]
