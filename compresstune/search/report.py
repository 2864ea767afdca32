"""``SEARCH.md``, ``search.png``: every candidate, what it reached and why it stopped, the Pareto front."""

from __future__ import annotations

from pathlib import Path

from ..measure.markdown import md_table
from .spec import selects_on


def _reached(c: dict) -> tuple[int | None, float | None]:
    """(highest rung with a metric, that metric)."""
    done = [(int(k), v) for k, v in (c.get("rungs") or {}).items() if v is not None]
    return max(done) if done else (None, None)


def pareto(cands: list[dict], x: str = "p50_ms") -> list[str]:
    """Ids of candidates no other beats on both latency (lower) and metric (higher), among those with both."""
    pts = [(c[x], _reached(c)[1], c["id"]) for c in cands if c.get(x) is not None and _reached(c)[1] is not None]
    front = []
    for lat, met, cid in pts:
        if not any((l2 <= lat and m2 >= met) and (l2 < lat or m2 > met) for l2, m2, _ in pts):
            front.append(cid)
    return front


def _plot(
    path: Path, cands: list[dict], front: list[str], winner: str | None, final_rung: int, budget, on: str = "dev"
) -> None:
    """Every candidate: trained ones at the metric of the highest rung reached; the others on a strip at the
    bottom (over budget, or not among the largest); the Pareto front; the latency budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    trained = [(c, *_reached(c)) for c in cands if c.get("p50_ms") is not None and _reached(c)[1] is not None]
    mets = [m for _, _, m in trained]
    floor = (min(mets) - 0.1 * (max(mets) - min(mets) + 1)) if mets else 0.0
    for c, rung, met in trained:
        full = rung == final_rung
        color = "C1" if c["id"] == winner else ("C0" if full else "C7")
        ax.scatter(c["p50_ms"], met, marker="o" if full else "x", color=color, zorder=3)
        ax.annotate(c["id"], (c["p50_ms"], met), fontsize=6, xytext=(3, 3), textcoords="offset points")
    rest = [c for c in cands if c.get("p50_ms") is not None and _reached(c)[1] is None]
    if rest:
        over = [c["p50_ms"] for c in rest if not c.get("meets_budget")]
        under = [c["p50_ms"] for c in rest if c.get("meets_budget")]
        ax.scatter(over, [floor] * len(over), marker="|", color="C3", s=80, label="not trained: over budget")
        ax.scatter(
            under,
            [floor] * len(under),
            marker="|",
            color="C7",
            s=80,
            label="not trained: under budget, not among the largest / stopped",
        )
    pts = sorted((c["p50_ms"], met) for c, _, met in trained if c["id"] in front)
    if pts:
        ax.plot(*zip(*pts), color="C2", lw=1, label="Pareto front (metric at the fidelity reached)")
    for lim in {c.get("budget_ms") for c in cands if c.get("budget_ms")}:
        ax.axvline(lim, color="C3", ls="--", lw=1, label=f"latency budget ({lim:.2f} ms)")
    ax.set_xlabel(f"p50 latency (ms) at {budget['shape'][0]} x {budget['shape'][1]}, as timed in the search")
    ax.set_ylabel(f"{on} metric (bottom strip: not trained)")
    ax.set_title("search: o = full recipe, x = cheaper rung only; orange = winner", fontsize=9)
    ax.grid(alpha=0.3)
    # below the axes: inside, it hid candidates' labels wherever it sat
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _selection_line(res: dict) -> str:
    n, metric = res["dev_examples"], res.get("metric", "accuracy")
    if metric == "accuracy":
        size = f"{n} examples: a 1-point difference is {n / 100:g} examples"
    else:
        size = f"{n} examples; the metric is {metric}, so a point is not a fixed example count"
    if not res.get("holdout"):
        return f"Selection used the dev set ({size}), as the pipelines do; no test set was read."
    line = (
        f"Selection used {size.replace(' examples', ' training examples held out', 1)} of every candidate's "
        "training (`task.holdout`), not the dev set; no test set was read."
    )
    if d := res.get("winner_dev"):
        line += (
            f" The winner's bundle on the dev set, read once after the choice: {d['metric']} {d['value']:.2f} "
            f"({d['examples']} examples)."
        )
    return line


def _fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def write_report(sdir: Path, res: dict, log=print) -> None:
    cands = res["candidates"]
    n_rungs = len(res["rungs"])
    budget = res["search"]["budget"]
    ms_budget = budget.get("latency_ms")
    eager = [c["eager_p50_ms"] for c in cands if c.get("eager_p50_ms")]
    if budget.get("latency_fraction") and eager:
        ms_budget = budget["latency_fraction"] * sorted(eager)[len(eager) // 2]
    for c in cands:
        c["budget_ms"] = ms_budget
    front = pareto(cands)
    winner = (res.get("winner") or {}).get("id")
    _plot(sdir / "search.png", cands, front, winner, n_rungs - 1, budget, selects_on(res.get("holdout")))
    rows = []
    for c in sorted(cands, key=lambda c: c.get("p50_ms") or 1e9):
        rung, met = _reached(c)
        why = c.get("error") or c.get("stopped") or c.get("skipped") or ("winner" if c["id"] == winner else "")
        rows.append(
            [
                c["id"] + (" *" if c["id"] in front else ""),
                "-" if c.get("params") is None else c["params"],
                _fmt(c.get("size_mb")),
                _fmt(c.get("p50_ms")),
                _fmt(c.get("fraction_of_eager"), ".3f"),
                " / ".join(_fmt(c.get("rungs", {}).get(str(k))) for k in range(n_rungs)),
                _fmt(met),
                "-" if rung is None else ("full" if rung == n_rungs - 1 else f"rung {rung}"),
                why,
            ]
        )
    spent, total = res["spent_s"], res["elapsed_s"]
    on = selects_on(res.get("holdout"))
    lines = [
        f"# Search: {Path(res['pipeline']).name}",
        "",
        f"Budget: {_budget_line(budget, ms_budget)}. Rungs: "
        + "; ".join(f"{k}: {r if isinstance(r, str) else r or 'as written'}" for k, r in enumerate(res["rungs"]))
        + ".",
        f"Rule: every candidate under budget (at most {res['search']['ladder']['max_candidates']}, largest first) "
        f"gets rung 0; after each rung the best {res['search']['ladder']['keep']:g} share goes on; at most "
        f"{res['search']['ladder']['finalists']} get the full recipe; the winner is the best full-recipe {on} "
        "metric whose shipped bundle meets the budget when timed again on its own.",
        "",
        _selection_line(res),
        "",
        f"Time: {total / 60:.1f} min in all: timing {spent['timing'] / 60:.1f}, recovery (cheap rungs) "
        f"{spent['recovery'] / 60:.1f}, full recipe {spent['final'] / 60:.1f} "
        f"(limit {res['search']['time_limit_min']:g} min for starting runs).",
        "",
        md_table(
            [
                "candidate (* Pareto)",
                "params",
                "size (MB)",
                "p50 (ms)",
                "of eager",
                f"{on} per rung",
                f"{on} reached",
                "fidelity",
                "note",
            ],
            rows,
        ),
        "",
    ]
    lines += _winner_lines(res)
    lines += ["", "![search](search.png)", ""]
    (sdir / "SEARCH.md").write_text("\n".join(lines))
    log(f"[search] report: {sdir / 'SEARCH.md'}")


def _budget_line(b: dict, ms: float | None) -> str:
    parts = []
    if b.get("latency_fraction"):
        parts.append(f"p50 <= {b['latency_fraction']:g} x the uncompressed PyTorch eager (= {_fmt(ms)} ms here)")
    if b.get("latency_ms"):
        parts.append(f"p50 <= {b['latency_ms']:g} ms")
    if b.get("size_mb"):
        parts.append(f"ONNX file <= {b['size_mb']:g} MB")
    return (
        " and ".join(parts)
        + f" at batch {b['shape'][0]} x seq {b['shape'][1]}, {b['provider']}, {b['threads']} threads"
    )


def _winner_lines(res: dict) -> list[str]:
    w = res.get("winner")
    checks = res.get("winner_checks") or []
    if not w:
        cands = res["candidates"]
        if not any(c.get("meets_budget") for c in cands):
            why = (
                "no candidate of the space meets the budget (less the margin): widen the space (fewer layers, "
                "more pruning, int8) or relax the budget"
            )
        elif checks:
            why = "every finalist's bundle missed the budget when timed again: " + "; ".join(
                f"{c['id']}: {c['over_budget']}" for c in checks
            )
        elif any("time limit" in (c.get("stopped") or "") for c in cands):
            why = (
                "the time limit was reached before a finalist finished: raise search.time_limit_min and rerun "
                "the same command (finished runs are kept)"
            )
        else:
            why = "no finalist finished its full recipe (see each candidate's note)"
        return [f"**No winner**: {why}."]
    c = next(x for x in checks if x["id"] == w["id"])
    timed = (
        f"Its bundle timed again on its own: p50 {_fmt(c.get('p50_ms'))} ms "
        f"({_fmt(c.get('fraction_of_eager'), '.3f')} of eager), {c['size_mb']:.2f} MB."
        if c.get("retimed")
        else f"**Its bundle was not re-timed**: the latency is the target's table's figure for the screened file, and "
        f"the shipped file ({c['size_mb']:.2f} MB) can differ from it (the int8 agreement fallback may keep MatMuls "
        "float); time the shipped file on the target (`compresstune bench onnx`)."
    )
    return [
        f"**Winner: {w['id']}**. {timed}",
        f"Run folder (with `deploy/`): `{res['winner_run']}`. Reproduce: `compresstune pipeline run "
        f"{res['winner_pipeline']}`.",
    ]
