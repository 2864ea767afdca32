"""REPORT.md's sections, each written from a stage's typed result (config/results.py)."""

from __future__ import annotations

from ..config.results import (
    BenchmarkResult,
    Comparison,
    CompressResult,
    ExportResult,
    ShipDecision,
    StageRecord,
    TrainResult,
)
from ..machine import describe
from ..measure.compare import footprint_table
from ..measure.markdown import md_table
from .ship_rule import paired_text


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def head(r: dict) -> list[str]:
    return [
        f"# compresstune report: {r['run']}",
        "",
        f"Pipeline `{r['config_file']}`, model `{r['model']}`, task `{r['task']}`. Generated {r['generated_at']}.",
        f"Every metric below is on {r['evaluated_on']}.",
        f"Machine: {describe(r['machine'])}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
    ]


def stage_table(records: dict[str, StageRecord]) -> list[str]:
    """Wall time and host memory per stage; on a GPU run also the GPU memory torch allocated at its peak (peak RSS
    is host memory only)."""
    gpu = {n: ((s.result and s.result.resources) or {}).get("cuda_peak_allocated_mb") for n, s in records.items()}
    on_gpu = any(v is not None for v in gpu.values())
    rows = []
    for n, s in records.items():
        reused = f" (reused from {s.reused_from})" if s.reused_from else ""
        gpu_cell = [fmt(gpu[n], 0)] if on_gpu else []
        rows.append([n, s.type, fmt(s.wall_time_s, 1) + reused, fmt(s.peak_rss_mb, 0), *gpu_cell, f"`{s.fingerprint}`"])
    gpu_head = ["GPU peak allocated (MB)"] if on_gpu else []
    headers = ["stage", "type", "wall time (s)", "peak RSS, host (MB)", *gpu_head, "fingerprint"]
    return ["", "## Stages", "", md_table(headers, rows)]


def finetune(n: str, sm: TrainResult, split: str, select: str) -> list[str]:
    if sm.resumed_from_step:
        excluded = f" (evaluation excluded; resumed once from step {sm.resumed_from_step})"
    else:
        excluded = " (evaluation excluded)"
    return [
        "",
        f"## Training: {n}",
        "",
        f"Method `{sm.method}`; {sm.train_examples} train / {sm.dev_examples} {split} examples; "
        f"{sm.steps} steps ({sm.epochs} epochs) in {fmt(sm.train_time_s, 1)} s{excluded}.",
        f"Parameters: {sm.total_params:,} total, {sm.trainable_params:,} trained.",
        f"{split.capitalize()} {sm.metric}: best of {len(sm.history)} {split} evaluations {fmt(sm.best_dev_metric)} "
        f"(step {sm.best_step}), final {fmt(sm.final_dev_metric)}; the stage outputs the {select} weights.",
    ]


def export(n: str, sm: ExportResult, split: str) -> list[str]:
    diffs = ", ".join(f"{k}: {v:.2e}" for k, v in sm.max_abs_diff.items())
    onnx = sm.dev_onnx.others()
    rows = [[k, fmt(v), fmt(onnx.get(k))] for k, v in sm.dev_pytorch.others().items()]
    return [
        "",
        f"## Export: {n}",
        "",
        f"ONNX opset {sm.opset}, {sm.size_mb} MB. Max |logit difference| vs PyTorch: {diffs} (tolerance {sm.atol}).",
        "",
        md_table([f"{split} metric", "PyTorch", "ONNX Runtime"], rows),
    ]


def benchmark(n: str, sm: BenchmarkResult) -> list[str]:
    rows = [
        [
            row.engine.key,
            row.batch,
            row.seq,
            f"{row.p50_ms:.2f}",
            fmt(row.p90_ms),
            fmt(row.p99_ms),
            fmt(row.throughput_seq_s, 1),
        ]
        for row in sm.rows
    ]
    L = [
        "",
        f"## Benchmark: {n}",
        "",
        f"{sm.threads} threads; providers {sm.active_providers}. Latency in ms over full-length random inputs; "
        "each p50 / p90 / p99 is over all timed calls of all rounds.",
        "",
        md_table(["engine", "batch", "seq", "p50", "p90", "p99", "seq/s"], rows),
    ]
    return L + comparison(sm.comparison) if sm.comparison else L


def comparison(cmp: Comparison) -> list[str]:
    rows = [
        [
            row.engine.key,
            f"{row.batch} x {row.seq}",
            f"{row.p50_ms:.2f}",
            f"{row.baseline_p50_ms:.2f}",
            f"{row.speedup:.2f}x",
        ]
        for row in cmp.rows
    ]
    headers = ["engine", "batch x seq", "this p50 (ms)", "baseline p50 (ms)", "speed-up"]
    return [
        "",
        f"Back to back against `{cmp.baseline}` ({cmp.baseline_onnx}, {cmp.baseline_onnx_mb} MB vs this "
        f"model's {cmp.onnx_mb} MB): {cmp.rounds} rounds per point, each timing both back to back (order "
        "alternating); each p50 is over all calls of all rounds, the speed-up the median of the per-round ratios.",
        "",
        md_table(headers, rows),
    ]


def compress(n: str, sm: CompressResult, split: str) -> list[str]:
    b, a = sm.before, sm.after
    rows = [
        ["parameters", f"{b.params['total']:,}", f"{a.params['total']:,}"],
        ["embeddings", f"{b.params['embeddings']:,}", f"{a.params['embeddings']:,}"],
        ["encoder", f"{b.params['encoder']:,}", f"{a.params['encoder']:,}"],
        ["encoder layers", b.layers, a.layers],
    ]
    for seq in b.gflops_per_seq:
        rows.append([f"encoder GFLOPs / sequence of {seq}", b.gflops_per_seq[seq], a.gflops_per_seq.get(seq)])
    rows.append([f"{split} {sm.metric}", fmt(b.dev), fmt(a.dev)])
    rows.append(["weights on disk (MB)", "", sm.size_mb])
    L = ["", f"## Compression: {n} ({sm.method})", "", md_table(["", "before", "after"], rows)]
    if sm.prune:
        shapes = ", ".join(f"({x['heads']}, {x['ffn']})" for x in sm.prune.layer_shapes_after)
        L += ["", "Per-layer (heads, FFN) after pruning: " + shapes]
    return L


def latency_across(records: dict[str, StageRecord]) -> list[str]:
    """ONNX Runtime p50s of every benchmark stage against the first one's (when there are two or more)."""
    benches = [(n, s.result) for n, s in records.items() if s.type == "benchmark"]
    if len(benches) < 2:
        return []
    base_name, base = benches[0]
    ref = {(row.engine, row.batch, row.seq): row.p50_ms for row in base.rows}
    rows = []
    for name, sm in benches:
        for row in sm.rows:
            if row.engine.runtime != "ort":
                continue
            k = (row.engine, row.batch, row.seq)
            sp = f"{ref[k] / row.p50_ms:.2f}x" if k in ref else "-"
            rows.append([name, row.engine.key, f"{row.batch} x {row.seq}", f"{row.p50_ms:.2f}", sp])
    return [
        "",
        f"## Latency against {base_name}",
        "",
        "ONNX Runtime p50 (ms) per grid point; speed-up = baseline p50 / this p50. The stages ran at "
        "different times, so machine drift enters these ratios; a benchmark stage with `baseline:` measures "
        "back to back (above).",
        "",
        md_table(["benchmark", "engine", "batch x seq", "p50 (ms)", "speed-up"], rows),
    ]


def variants(decision: ShipDecision, bench: BenchmarkResult | None, metric: str, split: str) -> list[str]:
    """The shipped variant among all, with verification, size, footprint and latency against the references."""
    rows = []
    timings = [bench.variants.get(c.variant) if bench is not None else None for c in decision.candidates]
    fp_headers, fp_cells = footprint_table([t.footprint if t is not None else None for t in timings])
    for c, t, fp in zip(decision.candidates, timings, fp_cells):
        lat = "; ".join(
            f"{k}: {p.p50_ms:.2f} ms ({fmt(p.speedup_vs_pytorch_eager)}x eager, {fmt(p.speedup_vs_onnx_fp32)}x fp32)"
            for k, p in (t.points.items() if t is not None else [])
        )
        verdict = "ok" if c.passed else f"FAILED ({c.error or f'gap {c.gap_points} > {c.tolerance}'})"
        rows.append(
            [
                c.variant + (" **(shipped)**" if c.variant == decision.chosen else ""),
                "-" if c.dev is None else f"{c.dev:.2f}" + _batchings(c.by_batching),
                paired_text(c.paired),
                verdict,
                c.size_mb,
                *fp,
                lat or "not timed",
            ]
        )
    headers = [
        "variant",
        f"{split} {metric}",
        "vs PyTorch, same examples",
        "verification",
        "size (MB)",
        *fp_headers,
        "p50 per batch x seq (speed-up vs the uncompressed model's PyTorch eager, fp32 ONNX)",
    ]
    refs = bench.references if bench is not None else None
    return [
        "",
        "## Variants and the shipped model",
        "",
        f"Speed-ups are against {refs.of if refs else 'this model'}: PyTorch eager (`{refs and refs.pytorch_eager}`) "
        f"and fp32 ONNX (`{refs and refs.onnx_fp32}`), timed back to back in the same rounds. A speed-up is the "
        "median over the rounds of each round's p50 ratio (paired, so drift between rounds cancels); it can differ "
        "from the ratio of the p50s above, which pool all rounds' calls.",
        "",
        md_table(headers, rows),
        "",
        f"Shipped: **{decision.chosen}**. {decision.why}.",
    ]


def _batchings(by: dict | None) -> str:
    return (
        " (" + ", ".join(f"{k.replace('_', ' ')}: {v:.2f}" for k, v in by.items()) + "; the lower counts)" if by else ""
    )
