"""Inference over a dev set: logits in input order, predictions and the task metric."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..data.batching import collate
from ..data.metrics import compute_metrics
from ..data.task import TaskData
from ..models.inputs import model_inputs


@torch.no_grad()
def predict(
    model: nn.Module, encoded: list[dict], pad_id: int, batch_size: int = 128, device: str = "cpu"
) -> np.ndarray:
    """Raw logits for every example, in order (fp32, eval mode)."""
    was_training = model.training
    model.eval()
    names = model_inputs(model)
    outs = []
    # sort by length so batches pad little; restore the order afterwards
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = collate([encoded[i] for i in idx], pad_id, "token_type_ids" in names)
        batch = {k: v.to(device) for k, v in batch.items() if k in names}
        outs.append(model(**batch).logits.float().cpu())
    model.train(was_training)
    logits = torch.cat(outs).numpy() if outs else np.zeros((0, 1), dtype=np.float32)
    res = np.empty_like(logits)
    res[np.array(order, dtype=int)] = logits
    return res


def logits_to_preds(task: TaskData, logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if task.is_regression else logits.argmax(-1)


def evaluate(model, task: TaskData, dev_encoded, pad_id, batch_size=128, device="cpu") -> dict:
    logits = predict(model, dev_encoded, pad_id, batch_size, device)
    return compute_metrics(task, logits_to_preds(task, logits), task.dev.labels)
