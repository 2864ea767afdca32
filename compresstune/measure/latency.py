"""Latency benchmark protocol, shared by the benchmark stage and ``compresstune bench``.

For each engine and each (batch, seq) point: fixed thread count, ``warmup`` untimed
runs (ORT's first runs are slow), then at least ``iters`` timed runs and at least
``min_time_s`` seconds; we report p50/p90/p99/mean latency and throughput
(sequences/s at the median). Inputs are full-length random token ids (no padding)."""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "platform": platform.platform()}
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


def bench_grid(make_runner, engines, batch_sizes, seq_lengths, warmup, iters, min_time_s, log=print) -> list[dict]:
    """``make_runner(engine, batch, seq) -> (fn, sync)``; one row per engine x grid point."""
    rows = []
    for engine in engines:
        for b in batch_sizes:
            for s in seq_lengths:
                fn, sync = make_runner(engine, b, s)
                r = time_fn(fn, warmup, iters, min_time_s, sync)
                r.update(engine=engine, batch=b, seq=s, throughput_seq_s=b * 1000.0 / r["p50_ms"])
                log(
                    f"  {engine:12s} batch {b:3d} x seq {s:4d}: p50 {r['p50_ms']:8.2f} ms  p90 {r['p90_ms']:8.2f}  "
                    f"p99 {r['p99_ms']:8.2f}  {r['throughput_seq_s']:8.1f} seq/s"
                )
                rows.append(r)
    return rows
