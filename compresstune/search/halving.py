"""The fidelity ladder: successive halving over ordinary, cached pipeline runs.

Rule: every candidate under budget (at most ``max_candidates``, the largest by parameter count
first) gets the first cheap rung; after each rung the best ``keep`` share (at least one) by dev
metric goes on; the last rung is the full recipe as the file writes it, for at most ``finalists``.
Each candidate at each rung is a pipeline run in ``runs/`` (``ID.rK`` for cheap rungs, ``ID`` for the
full recipe) that may take finished stages from every other run there (a teacher or a distilled
student of the same depth and rung is trained once), so an interrupted search, or a second search
over an overlapping space, redoes nothing that finished."""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config
from ..config.checks import portable_dict
from ..config.results import last_of, stage_records
from ..config.sections import PipelineConfig
from ..errors import CompresstuneError
from ..manifest import Manifest
from ..pipeline import run_pipeline
from .candidates import Candidate, candidate_config, write_pipeline
from .spec import SearchConfig, advancing, selection_holdout, selects_on


@dataclass
class Clock:
    """Seconds spent per phase, over every invocation of this search (kept in state.json)."""

    spent: dict = field(default_factory=lambda: {"timing": 0.0, "recovery": 0.0, "final": 0.0})
    started: float = field(default_factory=time.perf_counter)
    before: float = 0.0  # spent by earlier invocations

    def total(self) -> float:
        return self.before + time.perf_counter() - self.started

    def add(self, phase: str, seconds: float) -> None:
        self.spent[phase] = self.spent[phase] + seconds


def rung_metric(run_dir: Path, until: str | None, stages: list[str]) -> float | None:
    """The metric the run reached on the evaluation split: at a cheap rung, that of the last stage up to
    ``until`` that measures one (a merge does not); after the full recipe, the shipped variant's (ONNX Runtime,
    verified)."""
    if not (run_dir / "manifest.json").is_file():
        return None
    records = stage_records(run_dir)
    if until is None:
        ship = last_of(records, "ship") or last_of(records, "report")  # older runs chose in the report stage
        return ship.result.evaluated_metric() if ship is not None and ship.result is not None else None
    for name in reversed(stages[: stages.index(until) + 1]):
        rec = records.get(name)
        if rec is None or rec.result is None:
            return None
        metric = rec.result.evaluated_metric()
        if metric is not None:
            return metric
    return None


def _finished(run_dir: Path, stages: list[str], until: str | None) -> bool:
    """Every stage of ``stages`` up to ``until`` (all when None) is done (a rerun of it only reads the
    manifest); a run killed between two stages is not finished."""
    if not (run_dir / "manifest.json").is_file():
        return False
    recs = Manifest.load(run_dir).stages
    wanted = stages if until is None else stages[: stages.index(until) + 1]
    return all((recs.get(n) or {}).get("status") == "done" for n in wanted)


def last_training_stage(cfg: PipelineConfig) -> str:
    """The stage just before the candidate's export (the last export: an earlier one may be the uncompressed
    reference's): where a cheap rung stops."""
    names = list(cfg.stages)
    last_export = max(i for i, n in enumerate(names) if cfg.stages[n].type == "export")
    return names[last_export - 1]


class Ladder:
    def __init__(
        self,
        sdir: Path,
        pcfg: PipelineConfig,
        spec: SearchConfig,
        teacher_layers: int,
        clock: Clock,
        log=print,
        progress: bool = False,
        earlier: dict | None = None,
        on_change=None,
    ):
        self.sdir, self.pcfg, self.spec, self.n, self.clock = sdir, pcfg, spec, teacher_layers, clock
        self.log, self.progress = log, progress
        self.earlier = earlier or {}  # an earlier invocation's results (state.json): its failures are not retried
        self.on_change = on_change or (lambda results: None)  # after every candidate run (run.py: state.json)
        self.runs = sdir / "runs"
        self.results: dict[str, dict] = {}  # candidate id -> {"rungs": {k: metric}, ...}

    def rungs(self) -> list[dict | None]:
        return [*self.spec.ladder.rungs, None]

    def run(self, entrants: list[Candidate]) -> list[Candidate]:
        """Run the ladder; returns the candidates that finished the full recipe, best first."""
        current = entrants
        rungs = self.rungs()
        for k, rung in enumerate(rungs):
            final = rung is None
            if final:
                n_fin = self.spec.ladder.finalists
                for cand in current[n_fin:]:
                    self.results[cand.id]["stopped"] = (
                        f"rung {k}: not among the {n_fin} finalists (search.ladder.finalists)"
                    )
                current = current[:n_fin]
            scored = []
            for cand in current:
                metric = self._run_one(cand, k, rung)
                if metric is not None:
                    scored.append((metric, cand))
            scored.sort(key=lambda mc: -mc[0])
            if final:
                return [c for _, c in scored]
            n_next = advancing(len(scored), self.spec.ladder.keep)
            for _, cand in scored[n_next:]:
                self.results[cand.id]["stopped"] = f"rung {k}: not in the best {n_next} of {len(scored)}"
            current = [c for _, c in scored[:n_next]]
        raise AssertionError("unreachable: the last rung, None (the full recipe), always returns")

    def run_name(self, cand: Candidate, k: int) -> str:
        return cand.id if k == len(self.rungs()) - 1 else f"{cand.id}.r{k}"

    def _run_one(self, cand: Candidate, k: int, rung: dict | None) -> float | None:
        res = self.results.setdefault(cand.id, {"rungs": {}})
        name = self.run_name(cand, k)
        before = self.earlier.get(cand.id) or {}
        if str(k) in before.get("rungs", {}) and before["rungs"][str(k)] is None and before.get("error"):
            res["rungs"][str(k)], res["error"] = None, before["error"]
            self.log(
                f"[search] {name}: failed in an earlier invocation ({before['error'][:200]}); not retried "
                f"(remove its entry from {self.sdir / 'state.json'} to retry it)"
            )
            return None
        cfg = dataclasses.replace(candidate_config(self.pcfg, self.spec, cand, self.n, rung), name=name)
        stages = list(cfg.stages)
        until = None if rung is None else last_training_stage(cfg)
        over = self.clock.total() > self.spec.time_limit_min * 60
        if over and not _finished(self.runs / name, stages, until):
            res["stopped"] = f"rung {k}: not started, the time limit ({self.spec.time_limit_min:g} min) was reached"
            self.log(f"[search] {name}: not started (time limit)")
            return None
        path = write_pipeline(
            portable_dict(cfg, self.sdir / "pipelines"),
            self.sdir / "pipelines" / f"{name}.yaml",
            f"search candidate {cand.id}, rung {k}{' (full recipe)' if rung is None else ''}",
        )
        reuse = [p for p in sorted(self.runs.glob("*")) if p.name != name]
        for r in map(Path, self.spec.reuse_from):  # a run folder, or another search's folder (its runs)
            reuse += sorted((r / "runs").glob("*")) if (r / "runs").is_dir() else [r]
        reuse = [p for p in reuse if (p / "manifest.json").is_file()]  # absent, or killed before its first record
        t0 = time.perf_counter()
        self.log(f"[search] {name}: rung {k}{' (full recipe)' if rung is None else ''}")
        try:
            cfg = load_config(path)  # the file written is what runs, checked as every pipeline file is
            run_pipeline(
                cfg,
                run_name=name,
                until_stage=until,
                output_dir=str(self.runs),
                log=self._indent,
                progress=self.progress,
                reuse_from=reuse or None,
            )
        except Exception as exc:  # noqa: BLE001 -- this candidate failed (a check, a verification, or a crash of
            # one shape, OOM included): recorded as its result, and the others go on; a resume does not retry it
            why = str(exc) if isinstance(exc, CompresstuneError) else f"{exc.__class__.__name__}: {exc}"
            res["rungs"][str(k)] = None
            res["error"] = f"rung {k}: {why}"
            self.log(f"[search] {name}: failed: {why}")
            if not isinstance(exc, CompresstuneError):
                self.log("".join(traceback.format_exception(exc)[-6:]).rstrip())
            return None
        finally:
            self.clock.add("final" if rung is None else "recovery", time.perf_counter() - t0)
            self.on_change(self.results)
        metric = rung_metric(self.runs / name, until, stages)
        res["rungs"][str(k)] = metric
        res["run"] = str(self.runs / name)
        on = selects_on(selection_holdout(self.spec, self.pcfg))
        self.log(f"[search] {name}: {on} {'-' if metric is None else f'{metric:.2f}'}")
        return metric

    def _indent(self, msg: str) -> None:
        self.log("    " + msg)
