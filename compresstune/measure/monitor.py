"""Wall time and peak memory of a block of work.

CPU: the process's resident set size (RSS), sampled every 20 ms by a background
thread; we report the peak RSS during the block and the increase over the RSS at its
start. CUDA: ``torch.cuda.max_memory_allocated`` over the block."""

from __future__ import annotations

import threading
import time

import psutil
import torch


class ResourceMonitor:
    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.start_rss = self.peak_rss = 0
        self.wall_s = 0.0
        self.cuda_peak = None

    def _sample(self):
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self.peak_rss:
                self.peak_rss = rss
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self.start_rss = self.peak_rss = self._proc.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
        if torch.cuda.is_available():
            self.cuda_peak = torch.cuda.max_memory_allocated()
        return False

    def summary(self) -> dict:
        out = {
            "wall_time_s": round(self.wall_s, 3),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "peak_rss_increase_mb": round((self.peak_rss - self.start_rss) / 2**20, 1),
        }
        if self.cuda_peak is not None:
            out["cuda_peak_allocated_mb"] = round(self.cuda_peak / 2**20, 1)
        return out
