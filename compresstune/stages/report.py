"""``report``: ``REPORT.md`` and ``report.json`` for the whole run, its plots, and the deployable files published
at the top of the run folder (model.onnx, tokenizer/, labels.json of the last export; deploy/ of the ship stage).
It only reports: the ship stage (stages/ship.py) chose the variant and wrote the bundle."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..config.preflight import SUPERSEDED, superseded_problem
from ..config.results import ExportResult, StageRecord, last_of, stage_records
from ..errors import UserError
from ..machine import profile, versions
from ..manifest import write_json_atomic
from . import report_md as md
from .base import Stage, StageContext, register
from .report_plots import decision_plots, training_curve


def _publish(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``, replacing it atomically. A copy, never a hard link: a file edited or replaced at
    the top of the run folder must not change the stage output it was published from. What stood at ``dst`` (a
    file, a folder, a link: the link itself, never what it points at) is replaced."""
    tmp = dst.with_name(dst.name + ".tmp")
    _remove(tmp)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copy2(src, tmp)
    if dst.is_symlink() or dst.is_dir() or src.is_dir():  # only a file onto a file is replaced in one step
        _remove(dst)
    os.replace(tmp, dst)


def _remove(p: Path) -> None:
    """``p`` gone, whatever it is: a link (not its target), a file or a folder."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@register
class ReportStage(Stage):
    type = "report"
    uses_model_and_task = False

    def run(self, ctx: StageContext) -> dict:
        _aside_folder(ctx)  # checked before any work
        known = stage_records(ctx.run_dir)
        records = {
            ref.name: (known.get(ref.name) or StageRecord(name=ref.name, type=ref.type)).model_copy(
                update={"result": ref.result}
            )
            for ref in ctx.inputs
        }
        ship_rec = last_of(records, "ship")
        decision = ship_rec.result.decision if ship_rec is not None else None
        report = {
            "run": ctx.run_dir.name,
            "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "config_file": ctx.pipeline.source,
            "model": ctx.pipeline.model,
            "task": ctx.pipeline.task.name,
            "evaluated_on": _evaluated_on(ctx),
            "split": _split(ctx),
            "machine": profile(),
            "versions": versions(),
            "stages": {n: _stage_json(r) for n, r in records.items()},
            "ship": decision.model_dump(mode="json") if decision is not None else None,
        }
        text, pngs = self._markdown(report, records, ctx)
        (ctx.out_dir / "REPORT.md").write_text(text)
        write_json_atomic(ctx.out_dir / "report.json", report)
        if ship_rec is None and last_of(records, "export") is not None:
            ctx.log(f"[{ctx.name}] no ship stage: no deploy bundle (put `ship` before `report` to write one)")
        return {"published": self._publish_all(ctx, records, pngs)}

    def _markdown(self, r: dict, records: dict[str, StageRecord], ctx: StageContext) -> tuple[str, list[str]]:
        split = r["split"]
        L = md.head(r) + md.stage_table(records)
        for n, s in records.items():
            if s.type == "finetune":
                L += md.finetune(n, s.result, split, getattr(ctx.pipeline.stages.get(n), "select", "best"))
            elif s.type == "export":
                L += md.export(n, s.result, split)
            elif s.type == "benchmark":
                L += md.benchmark(n, s.result)
            elif s.type == "compress":
                L += md.compress(n, s.result, split)
        L += md.latency_across(records)
        text = "\n".join(L) + "\n"
        metric = next((s.result.metric for s in records.values() if getattr(s.result, "metric", None)), "metric")
        hist = {n: s.result.history for n, s in records.items() if s.type == "finetune"}
        if training_curve(hist, f"{split} {metric}", ctx.out_dir / "training_curve.png"):
            text += "\n![training curve](training_curve.png)\n"
        ship_rec, bench_rec = last_of(records, "ship"), last_of(records, "benchmark")
        if ship_rec is None or ship_rec.result.decision is None:
            return text, []
        decision, bench = ship_rec.result.decision, bench_rec.result if bench_rec else None
        exports = [s.result for s in records.values() if s.type == "export"]
        reference: ExportResult = exports[0] if bench and bench.references.of == "baseline" else exports[-1]
        pngs = decision_plots(decision, bench, reference, f"{split} {metric}", ctx.out_dir)
        text += "\n".join(md.variants(decision, bench, metric, split)) + "\n"
        text += "".join(f"\n![{p[:-4]}]({p})\n" for p in pngs)
        return text, pngs

    def _publish_all(self, ctx: StageContext, records: dict[str, StageRecord], pngs: list[str]) -> list[str]:
        sources = {n: ctx.out_dir / n for n in ("REPORT.md", "report.json", "training_curve.png", *pngs)}
        ship_rec = last_of(records, "ship")
        if ship_rec is not None:
            sources["deploy"] = ctx.run_dir / ship_rec.output / "deploy"
        export_rec = last_of(records, "export")
        if export_rec is not None:
            sources.update({n: ctx.run_dir / export_rec.output / n for n in ("model.onnx", "tokenizer", "labels.json")})
        sources = {n: p for n, p in sources.items() if p.exists()}
        _set_aside_superseded(ctx, list(sources))  # first: a run folder never shows this run's report beside old files
        for name, src in sources.items():
            _publish(src, ctx.run_dir / name)
        return list(sources)


# every name the report publishes at the top of the run folder
PUBLISHED = (
    "REPORT.md",
    "report.json",
    "training_curve.png",
    "accuracy_vs_latency.png",
    "latency_vs_batch.png",
    "deploy",
    "model.onnx",
    "tokenizer",
    "labels.json",
)


def _aside_folder(ctx: StageContext) -> Path:
    """``RUN/superseded``, refused (before the report does any work) unless it is a real folder or absent: a link
    there would move an earlier run's results out of the run folder, and replace what is at its other end."""
    problem = superseded_problem(ctx.run_dir)
    if problem:
        raise UserError(
            f"{problem}; the report sets an earlier run's results aside there, inside the run folder. Move it away "
            "and rerun: the finished stages are kept."
        )
    return ctx.run_dir / SUPERSEDED


def _set_aside_superseded(ctx: StageContext, published: list[str]) -> None:
    """A published name this run did not publish again (a rerun that shipped nothing, no longer exports, or has
    no training curve) is an earlier run's result: it moves to ``superseded/`` (replacing an older one there),
    where it is neither lost nor taken for this run's."""
    aside = _aside_folder(ctx)
    here = [n for n in PUBLISHED if (ctx.run_dir / n).exists() or (ctx.run_dir / n).is_symlink()]
    for name in (n for n in here if n not in published):
        old, dst = ctx.run_dir / name, aside / name
        aside.mkdir(exist_ok=True)
        replaced = dst.exists() or dst.is_symlink()
        _remove(dst)
        os.replace(old, dst)
        again = " (in place of the one set aside before it)" if replaced else ""
        ctx.log(f"[{ctx.name}] {name} at the top of the run folder was an earlier run's result: moved to {dst}{again}")


def _stage_json(r: StageRecord) -> dict:
    return {
        "type": r.type,
        "fingerprint": r.fingerprint,
        "output": r.output,
        "wall_time_s": r.wall_time_s,
        "peak_rss_mb": r.peak_rss_mb,
        "summary": r.result.dump() if r.result is not None else None,
        "reused_from": r.reused_from,
    }


def _split(ctx: StageContext) -> str:
    """What the evaluation split is called: ``held-out`` under ``task.holdout`` (it replaces dev), else ``dev``."""
    return "held-out" if ctx.pipeline.task.holdout else "dev"


def _evaluated_on(ctx: StageContext) -> str:
    h = ctx.pipeline.task.holdout
    return f"{h} training examples held out (task.holdout; the dev set was not used)" if h else "the dev set"
