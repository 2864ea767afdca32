"""Latency benchmark protocol, shared by the benchmark stage and ``compresstune bench``.

For each engine and each (batch, seq) point: fixed thread count, ``warmup`` untimed
runs (ORT's first runs are slow), then at least ``iters`` timed runs and at least
``min_time_s`` seconds; we report p50/p90/p99/mean latency and throughput
(sequences/s at the median). Inputs are full-length random token ids (no padding)."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..machine import profile


def machine_info() -> dict:
    """The machine a timing belongs to (machine.py): CPU model and instruction-set class, cores, platform, GPU.
    Two machines with the same CPU name but a different instruction-set class are different machines here."""
    p = profile()
    info = {k: p[k] for k in ("cpu", "isa", "logical_cores", "platform")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def time_fn(fn, warmup: int, iters: int, min_time_s: float, sync=None) -> dict:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t) * 1000.0)
        if len(times) >= 10 * iters and time.perf_counter() - start >= min_time_s:
            break
    a = np.array(times)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "runs": len(times),
    }
