"""The optimizer training steps with: AdamW, on PyTorch's fused kernel wherever the parameters' device has one.

The fused kernel updates each tensor in one pass; PyTorch's default on CPU goes one tensor at a time in several.
On the packaged MiniLM-L6 the default's step was 26-29% of a 2-core training step; the fused one takes about a
fifth of its time, 6-9% of a step (docs/RESULTS.md, "Fused AdamW"). ``bench speed`` times the same optimizer,
so its step times are training's.
"""

from __future__ import annotations

import torch


def _fused_kernel_for(params) -> bool:
    """Whether PyTorch has a fused AdamW kernel for all ``params`` (floating, on a device it lists). Decided
    here: AdamW checks only at its first step, where a refusal would stop training."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a PyTorch that moved it: the two devices whose kernels are long-standing
        devices = {"cpu", "cuda"}
    return all(p.device.type in devices and p.is_floating_point() for p in params)


def adamw(groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel where the parameters' device has one (CPU and CUDA do), else the
    default. On 2 CPU cores it took the packaged MiniLM-L6's optimizer step from 0.068 s to 0.013 s and its fp32
    training step from 0.263 s to 0.218 s, masked to AVX2 (docs/RESULTS.md, "Fused AdamW")."""
    groups = [{**g, "params": list(g["params"])} for g in groups]  # read twice: a generator would be used up
    fused = _fused_kernel_for([p for g in groups for p in g["params"]])
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
