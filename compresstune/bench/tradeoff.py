"""Accuracy against speed across compressed runs: ``compresstune bench tradeoff RUN...``.

Each run folder must hold a benchmark stage with a ``baseline`` (the uncompressed model timed
back to back with the compressed one) and the export stage it timed. One row per run: the
compression settings, parameters, FLOPs, ONNX size, the exported model's dev metric on ONNX
Runtime, and the speed-up at each grid point; plus a PNG of dev metric against speed-up."""

from __future__ import annotations

import json
from pathlib import Path

from ..config.results import (
    Comparison,
    CompressResult,
    Engine,
    ExportResult,
    StageRecord,
    shape_key,
    stage_records,
    upstream,
)
from ..errors import UserError
from ..measure.markdown import md_table


def _compared_benchmark(run_dir: Path, records: dict[str, StageRecord]) -> StageRecord:
    """The last benchmark stage that timed against a baseline, its upstream stages all done."""
    with_base = [r for r in records.values() if r.type == "benchmark" and r.result is not None and r.result.comparison]
    if not with_base:
        raise UserError(
            f"{run_dir}: no benchmark stage with a `baseline:` has run; add `baseline: <the uncompressed model's "
            "export stage>` to its benchmark stage and run the pipeline."
        )
    brec = with_base[-1]
    chain = [brec.name, *sorted(upstream(records, brec.name))]
    not_done = [n for n in chain if n not in records or records[n].status != "done"]
    if not_done:
        state = records[not_done[0]].status if not_done[0] in records else "missing"
        raise UserError(
            f"{run_dir}: stage {not_done[0]!r} is {state}, so the numbers of {brec.name!r} do not describe the "
            "current model; run the pipeline again to bring it up to date."
        )
    return brec


def _cpu_points(cmp: Comparison) -> dict:
    return {
        shape_key((r.batch, r.seq)): {"p50_ms": r.p50_ms, "baseline_p50_ms": r.baseline_p50_ms, "speedup": r.speedup}
        for r in cmp.rows
        if r.engine == Engine(runtime="ort", provider="cpu")
    }


def _add_compression(row: dict, comp: CompressResult) -> None:
    row["compression"] = _describe(comp)
    row["params"] = comp.after.params["total"]
    row["baseline_params"] = comp.before.params["total"]
    row["gflops_128"] = comp.after.gflops_per_seq.get("128")
    row["compress_dev"] = comp.after.dev


def _add_finetune(row: dict, records: dict[str, StageRecord], export_name: str, baseline: str) -> None:
    """The fine-tuning behind the timed export that is not also behind the baseline's."""
    behind, base = upstream(records, export_name), upstream(records, baseline) | {baseline}
    ft = [r.result for n, r in records.items() if r.type == "finetune" and n in behind and n not in base and r.result]
    if ft:
        row["finetune_method"] = ft[-1].method
        row["finetune_time_s"] = ft[-1].train_time_s


def collect_run(run_dir: Path) -> dict:
    if not (run_dir / "manifest.json").is_file():
        raise UserError(f"{run_dir}: no manifest.json; give run folders (for example exported/sst2-prune).")
    records = stage_records(run_dir)
    brec = _compared_benchmark(run_dir, records)
    up = upstream(records, brec.name)
    cmp: Comparison = brec.result.comparison
    export_name = brec.inputs[0]
    exp: ExportResult = records[export_name].result
    base: ExportResult = records[cmp.baseline].result
    comp = next((r.result for n, r in records.items() if n in up and r.type == "compress"), None)
    metric = next((r.result.metric for n, r in records.items() if n in up and r.type == "finetune"), None)
    row = {
        "run": run_dir.name,
        "metric": metric or (comp.metric if comp else None) or "main",
        "dev": exp.dev_onnx.main,
        "baseline_dev": base.dev_onnx.main,
        "onnx_mb": cmp.onnx_mb,
        "baseline_onnx_mb": cmp.baseline_onnx_mb,
        "export": export_name,
        "benchmark": brec.name,
        "points": _cpu_points(cmp),
    }
    if comp:
        _add_compression(row, comp)
    _add_finetune(row, records, export_name, cmp.baseline)
    return row


def _describe(comp: CompressResult) -> str:
    if comp.prune:
        p = comp.prune
        s = f"prune heads {p.head_ratio:.0%}, FFN {p.ffn_ratio:.0%} ({p.mode}, {p.importance})"
        if comp.distill:
            s += f", healed {comp.distill.steps} steps"
        return s
    return f"distil into teacher layers {comp.keep_layers} ({comp.distill.mode if comp.distill else ''})"


def _tradeoff_row(r: dict, pts: list[str]) -> list[str]:
    cells = [
        r["run"],
        r.get("compression", "-"),
        f"{r['params']:,}" if r.get("params") else "-",
        str(r.get("gflops_128", "-")),
        f"{r['onnx_mb']:.1f}",
        f"{r['dev']:.2f}",
        f"{r['dev'] - r['baseline_dev']:+.2f}",
    ]
    for p in pts:
        q = r["points"].get(p)
        cells += [f"{q['p50_ms']:.2f} (base {q['baseline_p50_ms']:.2f})", f"{q['speedup']:.2f}x"] if q else ["-", "-"]
    return cells


def to_markdown(rows: list[dict]) -> str:
    pts = sorted({k for r in rows for k in r["points"]}, key=lambda k: tuple(int(x) for x in k.split("x")))
    metric = rows[0]["metric"]
    headers = ["run", "compression", "params", "GFLOPs@128", "ONNX MB", f"dev {metric} (ONNX)", "vs baseline"]
    for p in pts:
        headers += [f"p50 {p} (ms)", f"speed-up {p}"]
    return md_table(headers, [_tradeoff_row(r, pts) for r in rows]) + "\n"


def plot(rows: list[dict], path: Path, points: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points or sorted({k for r in rows for k in r["points"]})
    fig, axes = plt.subplots(1, len(pts), figsize=(5.5 * len(pts), 4.2), squeeze=False)
    for ax, p in zip(axes[0], pts):
        have = [r for r in rows if p in r["points"]]
        xs = [r["points"][p]["speedup"] for r in have]
        ys = [r["dev"] for r in have]
        ax.scatter(xs, ys, zorder=3)
        for i, (r, x, y) in enumerate(sorted(zip(have, xs, ys), key=lambda t: (t[2], t[1]))):
            ax.annotate(
                r["run"], (x, y), textcoords="offset points", xytext=(-10, 6 + 9 * (i % 3)), fontsize=7, ha="right"
            )  # staggered
        if have:
            base = sum(r["baseline_dev"] for r in have) / len(have)
            ax.scatter([1.0], [base], marker="*", s=160, color="black", zorder=4, label="uncompressed")
            ax.axhline(base - 1.0, color="grey", ls=":", lw=1, label="-1 point")
        ax.margins(x=0.1, y=0.25)
        ax.set_xlabel(f"ONNX Runtime CPU speed-up at batch x seq {p}")
        ax.set_ylabel(f"dev {rows[0]['metric']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tradeoff(run_dirs: list[Path], out: Path, points: list[str] | None = None) -> list[dict]:
    rows = [collect_run(Path(d)) for d in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    (out / "tradeoff.json").write_text(json.dumps(rows, indent=2))
    (out / "tradeoff.md").write_text(to_markdown(rows))
    plot(rows, out / "tradeoff.png", points)
    return rows
