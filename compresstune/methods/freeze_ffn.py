"""``freeze_ffn``: everything trains but the FFN weight matrices and the embeddings."""

from __future__ import annotations

from .base import Method, MethodSetup, register
from .groups import param_groups


@register
class FreezeFFN(Method):
    name = "freeze_ffn"
    summary = "all but the FFN weight matrices and the embeddings; nothing to merge"
    default_lr = 1e-4

    def prepare(self, model, opts, ctx) -> MethodSetup:
        for p in model.parameters():
            p.requires_grad_(True)
        for g in ("ffn", "embeddings"):
            for _, p in param_groups(model)[g]:
                p.requires_grad_(False)
        return MethodSetup()
