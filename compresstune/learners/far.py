"""FAR (Freeze And Reconfigure, arXiv 2205.01541), a baseline.

Priming: fine-tune a copy of the model for 1% of the training iterations; score each
FFN node (an intermediate neuron: its FFN-in row and bias and its FFN-out column) by the
L1 norm of its weight change; keep the top ``retention`` share of nodes trainable and
freeze the rest. Each FFN is split into a trainable and a frozen sublayer (contiguous
memory; the nodes are permuted so the trainable ones come first, which leaves the
function unchanged), so the frozen part needs no weight gradients. After training the
split is undone: the exported model is plain.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..models import arch_for, base_linear, encoder_layers, get_module, set_module


class SplitOut(nn.Module):
    """FFN-in split by output rows: ``cat(train(x), frozen(x))``."""

    def __init__(self, lin: nn.Linear, k: int):
        super().__init__()
        self.train_part = nn.Linear(lin.in_features, k)
        self.frozen_part = nn.Linear(lin.in_features, lin.out_features - k)
        with torch.no_grad():
            self.train_part.weight.copy_(lin.weight[:k]); self.train_part.bias.copy_(lin.bias[:k])
            self.frozen_part.weight.copy_(lin.weight[k:]); self.frozen_part.bias.copy_(lin.bias[k:])
        self.frozen_part.requires_grad_(False)

    def forward(self, x):
        return torch.cat([self.train_part(x), self.frozen_part(x)], dim=-1)

    def plain(self) -> nn.Linear:
        out = nn.Linear(self.train_part.in_features, self.train_part.out_features + self.frozen_part.out_features)
        with torch.no_grad():
            out.weight.copy_(torch.cat([self.train_part.weight, self.frozen_part.weight]))
            out.bias.copy_(torch.cat([self.train_part.bias, self.frozen_part.bias]))
        return out


class SplitIn(nn.Module):
    """FFN-out split by input columns: ``train(h[:k]) + frozen(h[k:])`` (the bias lives in the trainable part)."""

    def __init__(self, lin: nn.Linear, k: int):
        super().__init__()
        self.k = k
        self.train_part = nn.Linear(k, lin.out_features)
        self.frozen_part = nn.Linear(lin.in_features - k, lin.out_features, bias=False)
        with torch.no_grad():
            self.train_part.weight.copy_(lin.weight[:, :k]); self.train_part.bias.copy_(lin.bias)
            self.frozen_part.weight.copy_(lin.weight[:, k:])
        self.frozen_part.requires_grad_(False)

    def forward(self, h):
        return self.train_part(h[..., : self.k]) + self.frozen_part(h[..., self.k :])

    def plain(self) -> nn.Linear:
        out = nn.Linear(self.train_part.in_features + self.frozen_part.in_features, self.train_part.out_features)
        with torch.no_grad():
            out.weight.copy_(torch.cat([self.train_part.weight, self.frozen_part.weight], dim=1))
            out.bias.copy_(self.train_part.bias)
        return out


def ffn_node_change(before: nn.Module, after: nn.Module) -> list[torch.Tensor]:
    """Per layer, the L1 norm of each FFN node's weight change between two copies of a model."""
    spec = arch_for(before)
    scores = []
    for lb, la in zip(encoder_layers(before), encoder_layers(after)):
        i0, i1 = base_linear(get_module(lb, spec.ffn_in)), base_linear(get_module(la, spec.ffn_in))
        o0, o1 = base_linear(get_module(lb, spec.ffn_out)), base_linear(get_module(la, spec.ffn_out))
        s = (i1.weight - i0.weight).abs().sum(1) + (i1.bias - i0.bias).abs() + (o1.weight - o0.weight).abs().sum(0)
        scores.append(s.detach())
    return scores


@torch.no_grad()
def split_ffns(model: nn.Module, scores: list[torch.Tensor], retention: float) -> int:
    """Permute each FFN's nodes by score (highest first) and split off the top ``retention`` share as trainable."""
    spec = arch_for(model)
    kept = 0
    for layer, s in zip(encoder_layers(model), scores):
        fin, fout = get_module(layer, spec.ffn_in), get_module(layer, spec.ffn_out)
        order = torch.argsort(s, descending=True)
        k = max(1, int(round(retention * len(order))))
        fin.weight.copy_(fin.weight[order]); fin.bias.copy_(fin.bias[order])
        fout.weight.copy_(fout.weight[:, order])
        set_module(layer, spec.ffn_in, SplitOut(fin, k))
        set_module(layer, spec.ffn_out, SplitIn(fout, k))
        kept += k
    return kept


def unsplit_ffns(model: nn.Module) -> None:
    for name, mod in list(model.named_modules()):
        if isinstance(mod, (SplitOut, SplitIn)):
            set_module(model, name, mod.plain())
