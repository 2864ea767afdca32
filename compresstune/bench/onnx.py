"""``compresstune bench onnx FILE...``: any ONNX models timed side by side, back to back.

The benchmark stage's protocol (measure/compare.py: interleaved rounds, rotating order,
p50/p90/p99 over all calls, speed-ups as medians of per-round ratios against the first file),
plus each file's size, cold load time and the peak RSS of a fresh process that runs it. Only
onnxruntime and numpy are needed (no torch), so it runs on a target device without a training
stack; its JSON (``--out``) records the machine and is what a latency budget can be read from."""

from __future__ import annotations

import time
from pathlib import Path

from ..deploy.edge import vocab_of
from ..deploy.predictor import make_session
from ..errors import UserError
from ..feeds import session_feed
from ..machine import describe, profile
from ..measure.compare import footprint_table, interleaved, ort_timed_runner, process_footprint, speedup
from ..measure.markdown import md_table


def _machine() -> dict:
    """The machine profile (machine.py): CPU model, instruction-set class, cores, ONNX Runtime providers."""
    return profile()


def bench_onnx(
    files: list[str],
    points: list[tuple[int, int]],
    threads: int = 2,
    provider: str = "cpu",
    iters: int = 100,
    rounds: int = 4,
    warmup: int = 3,
    footprint: bool = True,
    log=print,
) -> dict:
    """Time ``files`` back to back at every (batch, seq) point; speed-ups are against the first file."""
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            what = "is not a file (a folder or a device)" if p.exists() else "does not exist"
            raise UserError(f"bench onnx: {p} {what}; give paths of .onnx files.")
    names = [p.name if [q.name for q in paths].count(p.name) == 1 else str(p) for p in paths]
    sessions = {n: make_session(p, provider, threads) for n, p in zip(names, paths)}
    vocabs = {n: vocab_of(p) for n, p in zip(names, paths)}  # a trimmed bundle takes fewer ids than BERT's 30k
    rows = []
    for b, s in points:
        runners = {}
        for n, sess in sessions.items():
            feed = session_feed(sess, b, s, vocab=vocabs[n], pad_tail=False)  # full-length inputs
            try:
                sess.run(None, feed)  # once, so a shape the model cannot take is a message, not a traceback
            except Exception as exc:  # noqa: BLE001 - onnxruntime's Fail / InvalidArgument / RuntimeException
                raise UserError(
                    f"bench onnx: {n} cannot run at batch {b} x seq {s} ({str(exc).splitlines()[0][:200]}); "
                    "a sequence longer than the model's position embeddings (512 for BERT-base-like models) or a "
                    "fixed-shape model is the usual cause. Use shapes the model takes."
                ) from None
            runners[n] = (ort_timed_runner(sess, feed, provider), None)  # I/O binding on CUDA
        stats = interleaved(runners, warmup, iters, rounds)
        for n, r in stats.items():
            rows.append(
                {"file": n, "batch": b, "seq": s, **r, "speedup_vs_first": round(speedup(stats, n, names[0]), 3)}
            )
        log(f"  batch {b:3d} x seq {s:4d}: " + ", ".join(f"{n} {r['p50_ms']:.2f} ms" for n, r in stats.items()))
    files_info = {
        n: {
            "path": str(p),
            "size_mb": round(p.stat().st_size / 2**20, 2),
            "footprint": process_footprint(p, points, provider, threads, vocabs[n]) if footprint else None,
        }
        for n, p in zip(names, paths)
    }
    import onnxruntime as ort

    return {
        "machine": _machine(),
        "provider": provider,
        "threads": threads,
        "iters": iters,
        "rounds": rounds,
        "onnxruntime": ort.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files_info,
        "rows": rows,
    }


def to_markdown(res: dict) -> str:
    m = res["machine"]
    head = (
        f"ONNX Runtime {res['onnxruntime']} on {res['provider']}, {res['threads']} threads, {describe(m)}; "
        f"{res['rounds']} interleaved rounds, {res['iters']} calls per file and "
        "point; speed-up = median over rounds of (first file p50 / this p50)."
    )
    rows = [
        [
            r["file"],
            f"{r['batch']} x {r['seq']}",
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            r["runs"],
            f"{r['speedup_vs_first']:.2f}x",
        ]
        for r in res["rows"]
    ]
    fp_headers, fp_cells = footprint_table([f["footprint"] for f in res["files"].values()])
    files = [[n, f["size_mb"], *cells] for (n, f), cells in zip(res["files"].items(), fp_cells)]
    return (
        "\n".join(
            [
                head,
                "",
                md_table(["file", "batch x seq", "p50 (ms)", "p90", "p99", "calls", "speed-up"], rows),
                "",
                md_table(["file", "size (MB)", *fp_headers], files),
            ]
        )
        + "\n"
    )
