"""The optimizer training steps with: AdamW, on PyTorch's fused kernel wherever the parameters' device has one.

The fused kernel updates each tensor in one pass; PyTorch's default on CPU goes one tensor at a time in several.
On the packaged MiniLM-L6 the default's step was 26-32% of a 2-core fp32 training step and the fused one took
an eighth to a quarter of its time: training steps 1.2-1.44x faster (AVX-512, and AVX2 masked and real;
docs/RESULTS.md, "Fused AdamW" and the real AVX2 section). ``bench speed`` times the same optimizer, so its step
times are training's.
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
    default (the module docstring says what it gains)."""
    groups = [{**g, "params": list(g["params"])} for g in groups]  # read twice: a generator would be used up
    fused = _fused_kernel_for([p for g in groups for p in g["params"]])
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
