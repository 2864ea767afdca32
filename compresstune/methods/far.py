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

import copy
import math
import re

import torch
import torch.nn as nn
from pydantic import Field

from ..models.arch import arch_for, base_linear, encoder_layers, get_module, set_module
from ..options import Section
from .base import Method, MethodSetup, register


class SplitOut(nn.Module):
    """FFN-in split by output rows: ``cat(train(x), frozen(x))``."""

    def __init__(self, lin: nn.Linear, k: int):
        super().__init__()
        self.train_part = nn.Linear(lin.in_features, k)
        self.frozen_part = nn.Linear(lin.in_features, lin.out_features - k)
        with torch.no_grad():
            self.train_part.weight.copy_(lin.weight[:k])
            self.train_part.bias.copy_(lin.bias[:k])
            self.frozen_part.weight.copy_(lin.weight[k:])
            self.frozen_part.bias.copy_(lin.bias[k:])
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
            self.train_part.weight.copy_(lin.weight[:, :k])
            self.train_part.bias.copy_(lin.bias)
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
        order = torch.argsort(s, descending=True, stable=True)  # ties in a defined order
        k = max(1, int(round(retention * len(order))))
        fin.weight.copy_(fin.weight[order])
        fin.bias.copy_(fin.bias[order])
        fout.weight.copy_(fout.weight[:, order])
        set_module(layer, spec.ffn_in, SplitOut(fin, k))
        set_module(layer, spec.ffn_out, SplitIn(fout, k))
        kept += k
    return kept


def unsplit_ffns(model: nn.Module) -> None:
    for name, mod in list(model.named_modules()):
        if isinstance(mod, (SplitOut, SplitIn)):
            set_module(model, name, mod.plain())


class FarOptions(Section):
    far_retention: float = Field(0.1, gt=0, le=1, description="far: share of FFN nodes kept trainable")
    far_priming_fraction: float = Field(
        0.01, gt=0, lt=1, description="far: share of the training steps used to score FFN nodes"
    )


def steps_for_fraction(total_steps: int, fraction: float) -> int:
    return max(1, math.ceil(total_steps * fraction))


@register
class Far(Method):
    """FAR: score FFN nodes on a short full fine-tuning run of a copy, then train only the top
    ``far_retention`` share of them (plus everything outside the FFNs); the split is undone after."""

    name = "far"
    Options = FarOptions
    default_lr = 1e-4
    summary = "all but the frozen FFN nodes (scored on a short priming run); the split is undone after training"

    def prepare(self, model, opts, ctx) -> MethodSetup:
        if ctx.counting_only:  # which nodes stay trainable does not change the counts
            spec = arch_for(model)
            scores = [
                torch.arange(base_linear(get_module(layer, spec.ffn_in)).out_features, 0, -1).float()
                for layer in encoder_layers(model)
            ]
            for p in model.parameters():
                p.requires_grad_(True)
            split_ffns(model, scores, opts.far_retention)
            return MethodSetup()
        return self._prime_and_split(model, opts, ctx)

    def _prime_and_split(self, model, opts, ctx) -> MethodSetup:
        from ..train.loop import train

        t = ctx.train_options
        steps_per_epoch = math.ceil(len(ctx.task.train) / t.batch_size)
        total = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
        n_prime = steps_for_fraction(total, opts.far_priming_fraction)
        probe = copy.deepcopy(model)
        for p in probe.parameters():
            p.requires_grad_(True)
        ctx.log(
            f"FAR priming: {n_prime} of {total} steps on a copy, then keep the top {opts.far_retention:.0%} "
            "FFN nodes trainable"
        )
        prime = t.model_copy(
            update={
                "max_steps": n_prime,
                "select": "last",
                "eval_every_steps": None,
                "epochs": n_prime / steps_per_epoch,
            }
        )
        res = train(
            probe,
            ctx.task,
            ctx.tokenizer,
            prime,
            ctx.scratch_dir / "far_priming",
            max_length=ctx.max_length,
            device=ctx.device,
            log=ctx.log,
            progress=False,
        )
        scores = ffn_node_change(model, probe.to("cpu"))
        del probe
        for p in model.parameters():
            p.requires_grad_(True)
        kept = split_ffns(model, scores, opts.far_retention)
        return MethodSetup(
            summary={"far_priming_steps": n_prime, "far_priming_time_s": res.train_time_s, "far_nodes_trainable": kept},
            extra_train_time_s=res.train_time_s,
        )

    def after_training(self, model) -> None:
        unsplit_ffns(model)  # back to plain linears for export

    def parse_label(self, label: str) -> dict | None:
        m = re.fullmatch(r"far(\d+)", label)
        return {"far_retention": int(m.group(1)) / 100} if m else None

    def label_help(self) -> str:
        return "farN (e.g. far10: 10% of FFN nodes trainable)"
