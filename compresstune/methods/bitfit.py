"""``bitfit``: only the bias vectors (LayerNorm biases included) and the head train."""

from __future__ import annotations

from .base import Method, MethodSetup, register
from .groups import bitfit_params, train_only


@register
class BitFit(Method):
    name = "bitfit"
    summary = "every bias (LayerNorm biases included) + head; nothing to merge"
    default_lr = 2e-3

    def prepare(self, model, opts, ctx) -> MethodSetup:
        train_only(model, {"head"}, bitfit_params(model))
        return MethodSetup()
