"""The ship rule: which verified, timed variant ships, and why, in words.

Rules (``ship.rule``), always among the variants that passed verification (metric within their tolerance of
PyTorch, checked on the provider they were timed on) and were timed at the target shape (``ship.shape``):
``fastest`` (lowest p50 at the target shape; the default), ``smallest`` (fewest bytes on disk),
``most_accurate`` (highest metric, then fastest)."""

from __future__ import annotations

from ..config.results import BenchmarkResult, Candidate, ExportResult, ShipDecision


def candidates(export: ExportResult, bench: BenchmarkResult | None, shape: tuple[int, int]) -> list[Candidate]:
    """Every variant of the export with its verification, size and latency at ``shape``."""
    provider = bench.provider if bench is not None else "cpu"  # the provider whose timings decide
    out = []
    for name, v in export.variants.items():
        timing = bench.variants.get(name) if bench is not None else None
        point = timing.at(shape) if timing is not None else None
        elsewhere = point is not None and v.verified_on != provider  # e.g. timed on CUDA, checked on the CPU
        out.append(
            Candidate(
                variant=name,
                passed=v.passed and not elsewhere,
                provider=provider if point else None,
                verified_on=v.verified_on,
                dev=v.dev.main if v.dev else None,
                gap_points=v.gap_points,
                tolerance=v.tolerance,
                size_mb=v.size_mb,
                error=f"verified on {v.verified_on}, timed on {provider}" if elsewhere else v.error,
                paired=v.dev.paired_vs_pytorch if v.dev else None,
                by_batching=v.dev.by_batching if v.dev else None,
                p50_ms=point.p50_ms if point else None,
            )
        )
    return out


def choose(cands: list[Candidate], rule: str, shape) -> ShipDecision:
    """The shipped variant and the reason, in words; ``chosen`` is None when nothing qualifies."""
    ok = [c for c in cands if c.passed and c.p50_ms is not None and c.dev is not None and c.size_mb is not None]
    if not ok:
        why = (
            f"no variant both passed verification (with a measured metric and size) and was timed at "
            f"{shape[0]} x {shape[1]}"
        )
        return ShipDecision(rule=rule, shape=list(shape), chosen=None, why=why, candidates=cands)
    key = {
        "fastest": lambda c: (c.p50_ms, c.size_mb),
        "smallest": lambda c: (c.size_mb, c.p50_ms),
        "most_accurate": lambda c: (-c.dev, c.p50_ms),
    }[rule]
    best = min(ok, key=key)
    failed = [c.variant for c in cands if not c.passed]
    where = f" on the {best.provider} provider" if best.provider else ""
    what = {
        "fastest": lambda: (
            f"the lowest p50 at batch {shape[0]} x seq {shape[1]}{where} ({best.p50_ms:.2f} ms; {best.size_mb} MB)"
        ),
        "smallest": lambda: (
            f"the smallest file ({best.size_mb} MB; p50 {best.p50_ms:.2f} ms at {shape[0]} x {shape[1]})"
        ),
        "most_accurate": lambda: f"the highest metric ({best.dev:.2f}; {best.p50_ms:.2f} ms, {best.size_mb} MB)",
    }[rule]()
    why = (
        f"rule `{rule}`: among the {len(ok)} variants whose metric is within tolerance of PyTorch, "
        f"{best.variant} has {what}" + (f"; not eligible (failed verification): {', '.join(failed)}" if failed else "")
    )
    return ShipDecision(
        rule=rule, shape=list(shape), chosen=best.variant, provider=best.provider, why=why, candidates=cands
    )


def paired_text(p) -> str:
    """'3 right only for PyTorch, 1 only for this model (McNemar exact p = 0.62)'."""
    if not p:
        return "-"
    return (
        f"{p.only_pytorch_right} right only for PyTorch, {p.only_variant_right} only for this model "
        f"(McNemar exact p = {p.p_value:.2g})"
    )
