"""Bottleneck adapters (baselines): sequential (Houlsby et al. 2019) and parallel (He et al. 2022).

Two per layer, bottleneck 256 by default (the paper's setting, about 5.34M trained
parameters on DistilBERT). They have a nonlinearity, so they cannot be merged: an
adapter model is exported with its adapters in the graph.

* sequential: after the attention output projection and after the FFN output
  projection, before the residual add and LayerNorm: ``h = h + up(act(down(h)))``.
* parallel: beside the attention block and beside the FFN block, reading the block's
  input and adding to its output projection: ``out = proj(..) + up(act(down(x_in)))``.
"""

from __future__ import annotations

import torch.nn as nn
from pydantic import Field

from ..models.arch import arch_for, encoder_layers, get_module, set_module
from ..options import Section
from .base import Method, MethodSetup, register


class Bottleneck(nn.Module):
    def __init__(self, d_in: int, d_out: int, size: int):
        super().__init__()
        self.down = nn.Linear(d_in, size)
        self.act = nn.GELU()
        self.up = nn.Linear(size, d_out)
        nn.init.zeros_(self.up.weight)  # starts as the identity function of the layer
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(self.act(self.down(x)))


class SequentialAdapter(nn.Module):
    """Wraps a projection: ``y = proj(x); y + adapter(y)``."""

    def __init__(self, proj: nn.Linear, size: int):
        super().__init__()
        self.proj = proj
        self.adapter = Bottleneck(proj.out_features, proj.out_features, size)

    def forward(self, x):
        y = self.proj(x)
        return y + self.adapter(y)


class _Tap(nn.Module):
    """Wraps a block's first projection and remembers the block input for a parallel adapter."""

    def __init__(self, proj: nn.Linear, store: dict):
        super().__init__()
        self.proj = proj
        self._store = store

    def forward(self, x):
        self._store["x"] = x
        return self.proj(x)


class ParallelAdapter(nn.Module):
    """Wraps a block's output projection and adds ``adapter(block input)``."""

    def __init__(self, proj: nn.Linear, d_in: int, size: int, store: dict):
        super().__init__()
        self.proj = proj
        self.adapter = Bottleneck(d_in, proj.out_features, size)
        self._store = store

    def forward(self, x):
        return self.proj(x) + self.adapter(self._store["x"])


def add_adapters(model: nn.Module, kind: str, size: int = 256) -> dict:
    spec = arch_for(model)
    for layer in encoder_layers(model):
        if kind == "sequential":
            for role in (spec.o, spec.ffn_out):
                set_module(layer, role, SequentialAdapter(get_module(layer, role), size))
        elif kind == "parallel":
            for first, last in ((spec.q, spec.o), (spec.ffn_in, spec.ffn_out)):
                store: dict = {}
                p_first = get_module(layer, first)
                set_module(layer, first, _Tap(p_first, store))
                set_module(layer, last, ParallelAdapter(get_module(layer, last), p_first.in_features, size, store))
        else:
            raise ValueError(f"unknown adapter kind {kind!r}")
    return {"kind": kind, "size": size}


class AdapterOptions(Section):
    adapter_size: int = Field(256, gt=0, le=65536, description="adapters: bottleneck width")


class Adapters(Method):
    """``adapters_seq`` / ``adapters_par``: adapters + every LayerNorm + head train."""

    Options = AdapterOptions
    structure_key = "adapters"
    default_lr = 1e-3
    summary = "adapters + every LayerNorm + head; cannot merge (nonlinear): exported with the adapters"

    def __init__(self, kind: str):
        self.kind = kind
        self.name = "adapters_seq" if kind == "sequential" else "adapters_par"

    def prepare(self, model, opts, ctx) -> MethodSetup:
        from .groups import train_only  # groups imports this module

        info = add_adapters(model, self.kind, opts.adapter_size)
        train_only(model, {"adapters", "layernorm", "head"})
        return MethodSetup(structure={"adapters": info})

    def reapply(self, model, entry):
        add_adapters(model, entry["kind"], entry["size"])
        return model

    def merge(self, model, entry):
        return model, "adapters have a nonlinearity and cannot be merged; the model keeps them", True


register(Adapters("sequential"))
register(Adapters("parallel"))
