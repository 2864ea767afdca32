"""The Learner module, attaching it to a model, and merging it back.

A Learner is a rank-r branch in parallel with a frozen ``nn.Linear``::

    y = x W^T + b + scale * (x P1) P2        P1: in x r, P2: r x out, no activation

With no nonlinearity it folds exactly into the base weight: ``W' = W + scale (P1 P2)^T``.
Learners are sized from the live layer (a pruned layer gets a narrower Learner).
Defaults follow ../shared/docs/LEARNERS.md: P1 Kaiming-uniform, P2 zero, scale 1, so
attaching changes no output.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import CheckFailed, UserError
from ..models.arch import SkippedAttention, arch_for, encoder_layers, get_module, layer_prefix, set_module

DEFAULT_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")


class LearnerLinear(nn.Module):
    """``base(x) + scale * (x @ P1) @ P2``; ``base`` is the original ``nn.Linear``."""

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0, init: str = "kaiming_zero"):
        super().__init__()
        if rank < 1:
            raise ValueError("rank must be >= 1")
        self.base = base
        self.rank = rank
        self.scale = scale
        self.init = init
        dev, dt = base.weight.device, base.weight.dtype
        self.P1 = nn.Parameter(torch.empty(base.in_features, rank, device=dev, dtype=dt))
        self.P2 = nn.Parameter(torch.empty(rank, base.out_features, device=dev, dtype=dt))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "kaiming_zero":  # function unchanged at attach
            nn.init.kaiming_uniform_(self.P1.T, a=math.sqrt(5))
            nn.init.zeros_(self.P2)
        elif self.init == "gaussian_zero":
            nn.init.normal_(self.P1, std=1.0 / self.rank)
            nn.init.zeros_(self.P2)
        elif self.init == "kaiming_both":  # changes the function at attach; for ablations
            nn.init.kaiming_uniform_(self.P1.T, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.P2.T, a=math.sqrt(5))
        else:
            raise ValueError(f"unknown Learner init {self.init!r}")

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            # cast once for both branches: autocast would make two low-precision copies of x,
            # and backward would keep both (the base's for a primed W, the branch's for P1)
            x = x.to(torch.get_autocast_dtype(dev))
        branch = (x @ self.P1) @ self.P2
        if self.scale != 1.0:
            branch = branch * self.scale
        return self.base(x) + branch

    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the Learner folded in (computed in fp32 at least), of the base's dtype."""
        dt = self.base.weight.dtype
        acc = torch.promote_types(dt, torch.float32)
        W = self.base.weight.detach().to(acc)
        delta = (self.P1.detach().to(acc) @ self.P2.detach().to(acc)).T * self.scale
        out = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.base.bias is not None,
            device=self.base.weight.device,
            dtype=dt,
        )
        with torch.no_grad():
            out.weight.copy_((W + delta).to(self.base.weight.dtype))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias.detach())
        out.weight.requires_grad_(self.base.weight.requires_grad)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale}"


def target_paths(model: nn.Module, targets=DEFAULT_TARGETS) -> list[str]:
    """Dotted paths of every target linear, checked before anything is changed."""
    spec = arch_for(model)
    roles = spec.layer_modules()
    bad = [t for t in targets if t not in roles]
    if bad:
        raise UserError(f"learner targets {bad} are not known; use any of {', '.join(roles)}.")
    paths = []
    for i, layer in enumerate(encoder_layers(model)):
        skipped = isinstance(get_module(layer, spec.attn_block), SkippedAttention)
        for t in targets:
            if skipped and t in ("q", "k", "v", "o"):
                continue  # every head of this layer was pruned: no attention projection to adapt
            mod = get_module(layer, roles[t])
            if isinstance(mod, LearnerLinear):
                raise UserError(f"{layer_prefix(model, i)}.{roles[t]} already carries a Learner; attach once.")
            if not isinstance(mod, nn.Linear):
                raise UserError(
                    f"{layer_prefix(model, i)}.{roles[t]} is a {type(mod).__name__}, not an nn.Linear; "
                    "a Learner cannot be attached to it."
                )
            paths.append(f"{layer_prefix(model, i)}.{roles[t]}")
    return paths


def attach_learners(
    model: nn.Module, rank: int, targets=DEFAULT_TARGETS, scale: float = 1.0, init: str = "kaiming_zero"
) -> dict:
    """Wrap every target linear with a Learner; returns the description saved with the artifact."""
    paths = target_paths(model, targets)
    for p in paths:
        set_module(model, p, LearnerLinear(get_module(model, p), rank, scale, init))
    return {"rank": rank, "targets": list(targets), "scale": scale, "init": init, "paths": paths}


def learner_modules(model: nn.Module) -> dict[str, LearnerLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LearnerLinear)}


def merge_learners(model: nn.Module) -> int:
    """Replace every LearnerLinear by its merged plain linear; returns how many were merged."""
    mods = learner_modules(model)
    for path, mod in mods.items():
        set_module(model, path, mod.merged_linear())
    return len(mods)


@torch.no_grad()
def check_merge(before: torch.Tensor, after: torch.Tensor, atol: float = 1e-4) -> float:
    diff = float((before.float() - after.float()).abs().max())
    if diff > atol:
        raise CheckFailed(
            f"merge: merged and unmerged logits differ by {diff:.2e} (> {atol}); "
            "the merged model is not the trained one."
        )
    return diff
