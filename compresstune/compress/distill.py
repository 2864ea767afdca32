"""Distillation into a smaller student.

The student is made from the teacher by keeping chosen encoder layers (for example
every other one) and/or pruning widths. It is trained against the teacher with:

* soft-logit KD: ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (MSE for regression),
  task-specific mode only, where the teacher is fine-tuned on the task;
* hidden-state matching: MSE between mapped hidden states (embeddings to embeddings,
  student layer i to teacher layer ``layer_map[i]``), padding masked out;
* optionally attention-distribution matching: KL between mapped layers' attention
  probabilities, averaged over heads (so pruned heads need not line up);
* in task-specific mode, plus the task loss on the labels (weight ``task_weight``).

Task-agnostic mode (the paper's order): unlabelled text against the pretrained
teacher's hidden states; compress once, then fine-tune per task cheaply with Learners.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.arch import arch_for, encoder_layers, get_module


def keep_layers_student(teacher: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of ``teacher`` with only the encoder layers in ``keep`` (in that order)."""
    spec = arch_for(teacher)
    n = len(encoder_layers(teacher))
    bad = [i for i in keep if not 0 <= i < n]
    if bad or not keep:
        raise ValueError(f"keep_layers {keep}: the teacher has layers 0..{n - 1}")
    student = copy.deepcopy(teacher)
    base = get_module(student, spec.base)
    layers = get_module(base, spec.layers)
    parent_path, _, name = spec.layers.rpartition(".")
    parent = get_module(base, parent_path) if parent_path else base
    setattr(parent, name, nn.ModuleList([layers[i] for i in keep]))
    setattr(student.config, spec.config_layers, len(keep))
    return student


def every_other(n_layers: int, n_keep: int) -> list[int]:
    """``n_keep`` layers spread evenly, always ending with the last (6 -> 3: [1, 3, 5])."""
    step = n_layers / n_keep
    return [int(round((i + 1) * step)) - 1 for i in range(n_keep)]


class DistillLoss:
    """``loss_fn(student, batch, labels)`` for the shared training loop."""

    def __init__(
        self,
        teacher: nn.Module,
        layer_map: list[int],
        temperature: float = 2.0,
        logit_weight: float = 1.0,
        hidden_weight: float = 1.0,
        attention_weight: float = 0.0,
        task_weight: float = 0.0,
        regression: bool = False,
    ):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.layer_map = layer_map
        self.T = temperature
        self.w_logit, self.w_hidden, self.w_attn, self.w_task = (
            logit_weight,
            hidden_weight,
            attention_weight,
            task_weight,
        )
        self.regression = regression

    def __call__(self, student: nn.Module, batch: dict, labels: torch.Tensor) -> torch.Tensor:
        want_attn = self.w_attn > 0
        with torch.no_grad():
            t = self.teacher(**batch, output_hidden_states=True, output_attentions=want_attn)
        s = student(
            **batch, output_hidden_states=True, output_attentions=want_attn, labels=labels if self.w_task else None
        )
        loss = torch.zeros((), device=labels.device)
        if self.w_logit:
            if self.regression:
                loss = loss + self.w_logit * F.mse_loss(s.logits.float(), t.logits.float())
            else:
                loss = loss + self.w_logit * self.T**2 * F.kl_div(
                    F.log_softmax(s.logits.float() / self.T, -1),
                    F.log_softmax(t.logits.float() / self.T, -1),
                    log_target=True,
                    reduction="batchmean",
                )
        if self.w_hidden:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in enumerate(self.layer_map)]
            h = 0.0
            for si, ti in pairs:
                d = (s.hidden_states[si].float() - t.hidden_states[ti].float()) ** 2 * mask
                h = h + d.sum() / (mask.sum() * d.shape[-1])
            loss = loss + self.w_hidden * h / len(pairs)
        if want_attn:
            a = 0.0
            for i, j in enumerate(self.layer_map):
                sa, ta = s.attentions[i], t.attentions[j]
                if sa is None or ta is None or sa.shape[1] == 0:
                    continue
                sa, ta = sa.float().mean(1), ta.float().mean(1)  # average over heads
                a = a + (ta * (torch.log(ta + 1e-9) - torch.log(sa + 1e-9))).sum(-1).mean()
            loss = loss + self.w_attn * a / max(1, len(self.layer_map))
        if self.w_task:
            loss = loss + self.w_task * s.loss
        return loss
