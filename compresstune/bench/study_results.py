"""A fine-tuning study's results presented: ``results.md`` (one row per method, then each method
relative to full fine-tuning) and ``convergence.png`` (dev metric against training time, and the
training loss per epoch)."""

from __future__ import annotations

from pathlib import Path

from ..measure.markdown import md_table


def _f(ms, nd=2):
    m, s = ms if isinstance(ms, (list, tuple)) else (ms, None)
    if m is None:
        return "-"
    return f"{m:.{nd}f}" + (f" ± {s:.{nd}f}" if s else "")


def _partial_t99(r: dict) -> str:
    """Time to 99% when only some seeds got there: each seed's time, '-' for a seed that never did."""
    per = r.get("time_to_99_per_seed_s")
    n = len(r["per_seed_best"])
    if not r["reached_99"] or per is None:
        return f"reached by {r['reached_99']}/{n} seeds"
    return f"reached by {r['reached_99']}/{n} seeds: " + ", ".join("-" if t is None else f"{t:.0f}" for t in per)


_STUDY_HEADERS = [
    "method",
    "lr",
    "trained params",
    "best dev",
    "final dev",
    "train time (s)",
    "s/epoch",
    "time to 99% of full (s)",
    "peak RSS, host (MB)",
    "RSS increase, host (MB)",
    "merge max diff",
    "ONNX dev (PyTorch)",
]


def _study_row(label: str, r: dict, gpu: bool = False) -> list[str]:
    t99 = _f(r["time_to_99_s"], 0) if r["time_to_99_s"][0] is not None else _partial_t99(r)
    exp = f"{r['export']['dev_onnx']:.2f} ({r['export']['dev_pytorch']:.2f})" if r["export"] else "-"
    merge = "-" if r["merge_max_abs_diff"] is None else f"{r['merge_max_abs_diff']:.1e}"
    return [
        label,
        f"{r['lr']:g}",
        f"{r['trainable_params']:,}",
        _f(r["best"]),
        _f(r["final"]),
        _f(r["train_time_s"], 0),
        _f(r["epoch_time_s"], 1),
        t99,
        _f(r["peak_rss_mb"], 0),
        _f(r["peak_rss_increase_mb"], 0),
        *([_f(r["cuda_peak_allocated_mb"], 0) if r.get("cuda_peak_allocated_mb") else "-"] if gpu else []),
        merge,
        exp,
    ]


def _relative_to_full(res: dict, full: dict) -> list[str]:
    rows = []
    for label, r in res["rows"].items():
        d = r["best"][0] - full["best"][0]
        tt = r["train_time_s"][0] / full["train_time_s"][0] - 1
        mm = (
            r["peak_rss_increase_mb"][0] / full["peak_rss_increase_mb"][0] - 1
            if full["peak_rss_increase_mb"][0]
            else float("nan")
        )
        rows.append([label, f"{d:+.2f}", f"{100 * tt:+.1f}%", f"{100 * mm:+.1f}%"])
    headers = ["method", "Δ best dev (points)", "time", "peak RSS increase"]
    return ["", "Relative to full fine-tuning (means):", "", md_table(headers, rows)]


def to_markdown(res: dict) -> str:
    full = res["rows"].get("full")
    L = [
        f"Task {res['task']} ({res['train_examples']} train examples), model {res['model']}, {res['epochs']} epochs, "
        f"batch {res['batch_size']}, seeds {res['seeds']}; metric {res['metric']} (mean ± std over seeds)."
    ]
    if res.get("methods_pending"):
        L.append(f"Not run yet: {', '.join(res['methods_pending'])}.")
    gpu = any(r.get("cuda_peak_allocated_mb") for r in res["rows"].values())  # a CUDA run: torch's peak beside RSS
    headers = _STUDY_HEADERS[:10] + ["GPU peak allocated (MB)"] * gpu + _STUDY_HEADERS[10:]
    L += ["", md_table(headers, [_study_row(label, r, gpu) for label, r in res["rows"].items()])]
    if full:
        L += _relative_to_full(res, full)
    return "\n".join(L) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (label, r) in enumerate(res["rows"].items()):
        c = r["curves"][0]
        if not c:
            continue
        # ten colours, then the same colours dashed: an 11th method must not share full FT's line
        style = {"color": f"C{i % 10}", "ls": ("-", "--", ":")[(i // 10) % 3]}
        a1.plot([p[0] for p in c], [p[2] for p in c], marker=".", label=label, **style)
        for extra in r["curves"][1:]:
            a1.plot([p[0] for p in extra], [p[2] for p in extra], alpha=0.3, **style)
        a2.plot([p[1] for p in c], [p[3] for p in c], marker=".", label=label, **style)
    if res.get("full_best_mean"):
        a1.axhline(0.99 * res["full_best_mean"], color="gray", ls="--", lw=1, label="99% of full FT")
    a1.set_xlabel("training time (s, evaluation excluded)")
    a1.set_ylabel(f"dev {res['metric']}")
    a2.set_xlabel("epoch")
    a2.set_ylabel("train loss (since epoch start)")
    a1.grid(alpha=0.3)
    a2.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle(f"{res['task']}: fine-tuning methods on {res['model']} (first seed solid, other seeds faint)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
