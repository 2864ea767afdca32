"""``full``: every parameter trains (the accuracy reference)."""

from __future__ import annotations

from .base import Method, MethodSetup, register


@register
class Full(Method):
    name = "full"
    summary = "everything trains; nothing to merge"
    default_lr = 1e-4

    def prepare(self, model, opts, ctx) -> MethodSetup:
        for p in model.parameters():
            p.requires_grad_(True)
        return MethodSetup()
