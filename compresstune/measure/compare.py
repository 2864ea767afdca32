"""Several engines timed back to back: the protocol behind the benchmark stage and ``bench onnx``.

Per (batch, seq) point, ``rounds`` rounds; in each round every engine runs ``warmup`` untimed
calls, then ``iters // rounds`` timed calls (at least 3 and at least ``min_time_s / rounds``
seconds), the engine order rotating from round to round. A machine whose speed drifts slows
every engine alike. Reported per engine: p50/p90/p99/mean over all timed calls (and how many
there were: with 100 calls p99 interpolates between the two slowest, it is not simply the
maximum), the p50 of each round, and speed-ups against a reference engine as the median over
rounds of the per-round ratio reference p50 / engine p50.

Also: a model file's load time (session creation in a fresh process, cold) and the peak RSS of
a process that loads it and runs it at every shape (:func:`process_footprint`)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from ..feeds import session_providers


def _timed_calls(fn: Callable, n: int, min_s: float, sync=None) -> list[float]:
    times, start = [], time.perf_counter()
    while len(times) < n or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t) * 1000.0)
    return times


def interleaved(
    runners: dict[str, tuple[Callable, Callable | None]],
    warmup: int = 3,
    iters: int = 100,
    rounds: int = 4,
    min_time_s: float = 0.0,
) -> dict[str, dict]:
    """Time every runner (name -> (fn, sync or None)) back to back; returns name -> statistics."""
    names = list(runners)
    per_round = max(3, -(-iters // rounds))
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds_p50: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            fn, sync = runners[n]
            for _ in range(warmup):
                fn()
            if sync:  # queued warm-up kernels must not land in the first timed call
                sync()
            t = _timed_calls(fn, per_round, min_time_s / rounds, sync)
            times[n] += t
            rounds_p50[n].append(float(np.percentile(t, 50)))
    out = {}
    for n in names:
        a = np.array(times[n])
        out[n] = {
            "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()),
            "runs": len(a),
            "rounds_p50_ms": rounds_p50[n],
        }
    return out


def ort_timed_runner(sess, feed: dict, provider: str = "cpu") -> Callable:
    """A call of ``sess`` on ``feed`` to time. On CUDA the inputs and outputs stay on the GPU (I/O binding), so
    its timing, like PyTorch's on CUDA, excludes host-device copies (the run is synchronous); on the CPU it is
    a plain ``run``. Every timing of an ONNX Runtime session (benchmark stage, ``bench onnx``, the search) uses it."""
    names = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in names}  # the inputs this model takes
    if provider != "cuda":
        return lambda: sess.run(None, feed)
    import onnxruntime as ort

    binding = sess.io_binding()
    keep = []
    for k, v in feed.items():
        val = ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0)
        keep.append(val)
        binding.bind_ortvalue_input(k, val)
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda")

    def fn():
        sess.run_with_iobinding(binding)

    fn.keep = keep  # the bound device buffers must outlive the runner
    return fn


def speedup(stats: dict[str, dict], engine: str, reference: str) -> float:
    """Median over rounds of reference p50 / engine p50."""
    return statistics.median(r / e for r, e in zip(stats[reference]["rounds_p50_ms"], stats[engine]["rounds_p50_ms"]))


_PROBE = r"""
import json, resource, sys, time
import numpy as np
from compresstune.feeds import cuda_device_used_mb, preload_cuda_libraries, session_feed  # numpy only
t0 = time.perf_counter()
import onnxruntime as ort
path, threads, shapes = sys.argv[1], int(sys.argv[3]), json.loads(sys.argv[4])
providers = [p if isinstance(p, str) else tuple(p) for p in json.loads(sys.argv[2])]
ep = providers[0] if isinstance(providers[0], str) else providers[0][0]
preload_cuda_libraries(ort, ep)  # no torch here to have loaded CUDA
gpu0 = cuda_device_used_mb() if ep == "CUDAExecutionProvider" else None  # context made, nothing of ours on it
so = ort.SessionOptions()
so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
t1 = time.perf_counter()
sess = ort.InferenceSession(path, sess_options=so, providers=providers)
t2 = time.perf_counter()
if sess.get_providers()[0] != ep:
    sys.exit(f"{ep} did not activate in a fresh process (active: {sess.get_providers()})")
for b, s in shapes:
    sess.run(None, session_feed(sess, b, s, int(sys.argv[5]), pad_tail=False))
kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # counts the forking parent's pages: VmHWM does not
try:
    kb = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
except (OSError, StopIteration):
    pass
out = {"load_s": t2 - t1, "import_s": t1 - t0, "peak_rss_mb": kb / 1024}
gpu1 = cuda_device_used_mb() if gpu0 is not None else None
if gpu1 is not None:
    out["gpu_mb"] = gpu1 - gpu0  # device-wide: the benchmark's own process waits meanwhile
print(json.dumps(out))
"""


def process_footprint(path, shapes, provider: str = "cpu", threads: int = 2, vocab: int | None = None) -> dict:
    """Load ``path`` in a fresh process (cold session creation time) and run it once at every shape (token ids
    below ``vocab`` when given); returns load_s, import_s and the process's peak RSS (host memory) in MB, and on
    CUDA gpu_mb, the GPU memory the session took over its CUDA context (:func:`feeds.cuda_device_used_mb`)."""
    providers = session_providers({"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[provider])
    args = [str(path), json.dumps(providers), str(threads), json.dumps(list(shapes)), str(vocab or 2000)]
    r = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1][:300] if (r.stderr or r.stdout) else "failed"}
    return {k: round(v, 3) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def footprint_table(footprints: list[dict | None]) -> tuple[list[str], list[list]]:
    """Headers and one row of cells per footprint (None: not measured) for a report table: cold load, host peak
    RSS, and the GPU memory column only when some footprint was taken on CUDA."""
    fps = [fp or {} for fp in footprints]
    gpu = any("gpu_mb" in fp for fp in fps)
    headers = ["cold load (s)", "peak RSS, host (MB)"] + (["GPU memory (MB)"] if gpu else [])
    keys = ["load_s", "peak_rss_mb"] + (["gpu_mb"] if gpu else [])
    return headers, [[fp.get(k, "-") for k in keys] for fp in fps]
