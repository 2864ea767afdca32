"""The report's plots: the training curve, accuracy against latency at the ship shape, latency against batch."""

from __future__ import annotations

from pathlib import Path

from ..config.results import BenchmarkResult, ExportResult, ShipDecision


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curve(histories: dict[str, list], ylabel: str, path: Path) -> bool:
    pts = {k: h for k, h in histories.items() if h}
    if not pts:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, h in pts.items():
        ax.plot([r.epoch for r in h], [r.dev_main for r in h], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def decision_plots(
    decision: ShipDecision, bench: BenchmarkResult | None, reference: ExportResult, ylabel: str, out_dir: Path
) -> list[str]:
    """accuracy_vs_latency.png (every variant and the uncompressed references at the ship shape; ``reference``:
    the export whose metrics the references stand for) and latency_vs_batch.png (p50 of every timed engine against
    batch size, per sequence length)."""
    if bench is None:
        return []
    plt = _plt()
    shape, refs = decision.shape, bench.references
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, c in enumerate(decision.candidates):
        if c.p50_ms is not None and c.dev is not None:
            ax.scatter(c.p50_ms, c.dev, marker="o" if c.passed else "x", s=40)
            ax.annotate(
                c.variant, (c.p50_ms, c.dev), textcoords="offset points", xytext=(5, 6 - 12 * (i % 2)), fontsize=8
            )
    for label, engine, dev in (
        ("uncompressed PyTorch eager", refs.pytorch_eager, reference.dev_pytorch),
        ("uncompressed fp32 ONNX", refs.onnx_fp32, reference.dev_onnx),
    ):
        p = bench.p50(engine, shape)
        if p is not None and dev.main is not None and (refs.of == "baseline" or "PyTorch" in label):
            ax.scatter(p, dev.main, marker="s", s=40, color="grey")
            ax.annotate(label, (p, dev.main), textcoords="offset points", xytext=(-10, -14), fontsize=8, ha="right")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {shape[0]} x seq {shape[1]} (ms, log)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_latency.png", dpi=110)
    plt.close(fig)
    return ["accuracy_vs_latency.png"] + _latency_vs_batch(bench, out_dir)


def _latency_vs_batch(bench: BenchmarkResult, out_dir: Path) -> list[str]:
    series = {}
    for r in bench.rows:
        series.setdefault((r.engine.key, r.seq), []).append((r.batch, r.p50_ms))
    seqs = sorted({s for (_, s), pts in series.items() if len(pts) > 1})  # lengths timed at 2+ batch sizes
    if not seqs:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(seqs), figsize=(5 * len(seqs), 3.8), squeeze=False)
    for ax, seq in zip(axes[0], seqs):
        for (engine, s), pts in sorted(series.items()):
            if s == seq and len(pts) > 1:
                pts.sort()
                ax.plot([b for b, _ in pts], [p for _, p in pts], marker="o", label=engine)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"seq {seq}")
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "latency_vs_batch.png", dpi=110)
    plt.close(fig)
    return ["latency_vs_batch.png"]
