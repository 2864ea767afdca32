"""Training memory as tensors, measured: what a training step keeps alive.

Peak RSS of a CPU process mixes the training state with allocator caches, oneDNN
primitive caches and library code, which hides what a fine-tuning method saves. This
measures the tensors themselves during real training steps:

* parameters (all), gradients (those that train), optimizer state (AdamW moments,
  read from the optimizer after the step),
* activations saved for the backward pass, summed over unique storages through
  ``torch.autograd.graph.saved_tensors_hooks``, at the step where they peak.

The peak is ``params + grads + optimizer state + max saved activations``. On a GPU
this is what ``torch.cuda.max_memory_allocated`` approximates; here it is exact for the
tensors autograd and the optimizer hold.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes() if t.device.type != "meta" else 0


class SavedActivations:
    """Context manager: bytes of unique storages autograd saves for backward."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def _pack(self, t):
        try:
            self.seen[t.untyped_storage().data_ptr()] = _nbytes(t)
        except RuntimeError:
            pass
        return t

    def __enter__(self):
        self.seen.clear()
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        return False

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())


def training_memory(model: nn.Module, batches, optimizer_params, bf16: bool, loss_fn=None, phase_hook=None) -> dict:
    """Run one AdamW step per batch (the largest ones are the ones that matter) and return the peak, in MB."""
    params = list(optimizer_params)
    opt = torch.optim.AdamW(params, lr=1e-12)  # a real step, with a rate too small to matter
    model.train()
    peak_act = 0
    grads = 0
    for step, (batch, labels) in enumerate(batches):
        if phase_hook is not None:
            phase_hook(step, 0.0)
        with SavedActivations() as sa, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, batch, labels) if loss_fn else model(**batch, labels=labels).loss
        peak_act = max(peak_act, sa.bytes)
        loss.backward()
        grads = max(grads, sum(_nbytes(p.grad) for p in params if p.grad is not None))
        opt.step()
        opt.zero_grad(set_to_none=True)
    state = sum(_nbytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    par = sum(_nbytes(p) for p in model.parameters())
    mb = 2**20
    return {
        "params_mb": round(par / mb, 1),
        "grads_mb": round(grads / mb, 1),
        "optimizer_state_mb": round(state / mb, 1),
        "activations_mb": round(peak_act / mb, 1),
        "peak_tensor_mb": round((par + grads + state + peak_act) / mb, 1),
    }
