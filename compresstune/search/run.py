"""``compresstune search``: time every candidate, climb the fidelity ladder, check the winner again."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from ..config.checks import portable_dict
from ..config.results import last_of, stage_records
from ..errors import CompresstuneError
from ..manifest import write_json_atomic
from ..models.arch import encoder_layers
from ..models.resolve import load_pretrained_for_task, resolve_model_path
from ..pipeline.atomic import run_lock
from ..stages.base import load_task_data
from .candidates import TEACHER_DEPTH, Candidate, candidate_config, enumerate_space, write_pipeline
from .halving import Clock, Ladder
from .latency import LatencyTable, within_budget
from .report import write_report
from .spec import load_search, selection_holdout


def search_dir_for(pcfg, output_dir: str | None) -> Path:
    """The search's folder: where `pipeline run` would put a run of the searched file."""
    from ..config.preflight import run_dir_of

    return run_dir_of(pcfg, None, output_dir)


def run_search(
    path,
    overrides=(),
    output_dir: str | None = None,
    export_candidates: str | None = None,
    log=print,
    progress: bool = False,
) -> dict:
    spec, pcfg = load_search(path, overrides)
    sdir = search_dir_for(pcfg, output_dir)
    sdir.mkdir(parents=True, exist_ok=True)
    with run_lock(sdir):
        state_path = sdir / "state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        clock = Clock(
            spent={"timing": 0.0, "recovery": 0.0, "final": 0.0, **state.get("spent", {})},
            before=state.get("elapsed_s", 0.0),
        )
        task = load_task_data(pcfg)
        holdout = selection_holdout(spec, pcfg)
        problem = "regression" if task.is_regression else "single_label_classification"
        reference = load_pretrained_for_task(
            resolve_model_path(pcfg.model, pcfg.base_dir), task.num_labels, problem
        ).eval()
        n_layers = len(encoder_layers(reference))
        export_cfg = next(st for st in reversed(pcfg.stages.values()) if st.type == "export")
        keep = Path(export_candidates) if export_candidates else None
        table = _latency_table(sdir, spec, reference, keep, log)
        cands = enumerate_space(spec, n_layers)
        if deeper := [d for d in spec.space.layers if n_layers < d < TEACHER_DEPTH]:
            log(f"[search] search.space.layers {deeper}: deeper than the model's {n_layers} layers, left out")
        log(f"[search] {pcfg.name}: {len(cands)} candidates; budget {_budget_text(spec.budget)}")
        measured = _time_all(cands, table, export_cfg, clock, log)
        if keep is not None:
            log(
                f"[search] candidate files in {keep}/ (FILE_KEY.onnx: `file_key` in {sdir / 'latency.json'}); "
                f"time them on the target with `compresstune bench onnx {keep}/*.onnx --shapes "
                f"{'x'.join(map(str, spec.budget.shape))} --out FILE` and set search.budget.latency_table: FILE"
            )
            return {"latency": measured}
        entrants, skipped = _entrants(cands, measured, spec)
        log(f"[search] {len(entrants)} under budget enter rung 0: {', '.join(c.id for c in entrants) or 'none'}")
        state_checks = state.get("checks", {})

        def save_state(results: dict) -> None:
            new = {"spent": clock.spent, "elapsed_s": round(clock.total(), 1), "results": results}
            write_json_atomic(state_path, {**new, "checks": state_checks})

        ladder = Ladder(
            sdir, pcfg, spec, n_layers, clock, log, progress, earlier=state.get("results"), on_change=save_state
        )
        for c in entrants:
            ladder.results[c.id] = {"rungs": {}}
        finished = ladder.run(entrants)
        winner, checks = _pick(finished, ladder, table, state.get("checks", {}), log)
        clock.add("timing", sum(c.get("time_s", 0.0) for c in checks if not c.get("cached")))
        state_checks.update({c["id"]: c for c in checks})
        result = _result(spec, pcfg, cands, measured, skipped, ladder, winner, checks, task, holdout, clock)
        if winner:
            result["winner_run"] = str(ladder.runs / ladder.run_name(winner, len(ladder.rungs()) - 1))
            result["winner_pipeline"] = str(_winner_yaml(pcfg, spec, winner, n_layers, sdir, Path(path)))
            if result["holdout"]:
                result["winner_dev"] = _score_on_dev(Path(result["winner_run"]), pcfg, log)
        save_state(ladder.results)
        write_json_atomic(sdir / "search.json", result)
        write_report(sdir, result, log)
        return result


def _result(spec, pcfg, cands, measured, skipped, ladder, winner, checks, task, holdout, clock) -> dict:
    """search.json: the settings, every candidate with its timing and rungs, the winner and its checks."""
    return {
        "search": spec.model_dump(),
        "pipeline": str(pcfg.source),
        "candidates": [
            {**c.to_dict(), **measured[c.id], **ladder.results.get(c.id, {}), "skipped": skipped.get(c.id)}
            for c in cands
        ],
        "rungs": [r if r is not None else "full recipe" for r in ladder.rungs()],
        "winner": winner.to_dict() if winner else None,
        "winner_checks": checks,
        "dev_examples": len(task.dev) if not holdout else holdout,
        "holdout": holdout,
        "metric": task.metric,
        "spent_s": clock.spent,
        "elapsed_s": round(clock.total(), 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _score_on_dev(run: Path, pcfg, log) -> dict:
    """The winner's shipped bundle on the dev set, read once, after a choice made on held-out training
    examples (the dev set stayed out of every candidate's run)."""
    from ..data.load import load_task
    from ..data.metrics import compute_metrics
    from ..deploy.predictor import bundle_predictions

    task = load_task(pcfg.task.model_copy(update={"holdout": None}), pcfg.seed)
    preds = bundle_predictions(shipped_bundle(run), task.dev.inputs(), task.is_regression)
    metric = compute_metrics(task, preds, task.dev.labels)["main"]
    log(f"[search] winner's bundle on the dev set (read once, after the choice): {task.metric} {metric:.2f}")
    return {"metric": task.metric, "value": metric, "examples": len(task.dev)}


def _latency_table(sdir: Path, spec, reference, keep: Path | None, log) -> LatencyTable:
    table = LatencyTable(sdir / "latency.json", spec.budget, spec.timing_iters, log, keep_dir=keep, reference=reference)
    for r in spec.reuse_from:  # another search's folder: its timings on this machine count here too
        if n := table.adopt(Path(r) / "latency.json"):
            log(f"[search] {n} latencies from {r}/latency.json (same machine)")
    return table


def _budget_text(b) -> str:
    parts = []
    if b.latency_fraction is not None:
        parts.append(f"p50 <= {b.latency_fraction:g} x the uncompressed PyTorch eager")
    if b.latency_ms is not None:
        parts.append(f"p50 <= {b.latency_ms:g} ms")
    if b.size_mb is not None:
        parts.append(f"model file <= {b.size_mb:g} MB")
    where = f" at {b.shape[0]}x{b.shape[1]} on {b.provider}, {b.threads} threads"
    return " and ".join(parts) + (where if b.latency_ms is not None or b.latency_fraction is not None else "")


def _time_all(cands, table, export_cfg, clock, log) -> dict[str, dict]:
    out = {}
    for c in cands:
        t0 = time.perf_counter()
        try:
            e = table.measure(c, export_cfg)
        except CompresstuneError:
            raise  # a setting (the target's table, the budget) that every candidate would fail on
        except Exception as exc:  # noqa: BLE001 -- one shape that cannot be built or exported: the others go on
            clock.add("timing", time.perf_counter() - t0)
            why = f"could not be built and timed ({exc.__class__.__name__}: {exc})"
            log(f"[search] {c.id}: {why}")
            out[c.id] = {"size_mb": None, "params": None, "p50_ms": None, "meets_budget": False, "over_budget": why}
            continue
        clock.add("timing", time.perf_counter() - t0)
        ok, why = within_budget(e, table.budget, table.budget.margin)
        out[c.id] = {**{k: v for k, v in e.items() if k != "layer_shapes"}, "meets_budget": ok, "over_budget": why}
        lat = f"p50 {e['p50_ms']:.2f} ms" if e.get("p50_ms") is not None else "no latency"
        frac = f" ({e['fraction_of_eager']:.3f} of eager)" if "fraction_of_eager" in e else ""
        log(
            f"[search] {c.id}: {lat}{frac}, {e['size_mb']:.1f} MB{' (cached)' if e['cached'] else ''}"
            f"{'' if ok else ' -- over budget: ' + why}"
        )
    return out


def _entrants(cands, measured, spec) -> tuple[list[Candidate], dict[str, str]]:
    """Candidates under budget, the largest (parameters) first, at most ``max_candidates``; why the others
    were left out."""
    under = sorted(
        (c for c in cands if measured[c.id]["meets_budget"]),
        key=lambda c: (-measured[c.id]["params"], measured[c.id]["p50_ms"] or 0.0, c.id),
    )
    skipped = {
        c.id: f"over budget: {measured[c.id]['over_budget']}" for c in cands if not measured[c.id]["meets_budget"]
    }
    n = spec.ladder.max_candidates
    for c in under[n:]:
        skipped[c.id] = f"under budget, but not among the {n} largest (search.ladder.max_candidates)"
    return under[:n], skipped


def shipped_bundle(run: Path) -> Path:
    """The deploy bundle a candidate run shipped: its ship stage's ``deploy/`` (runs made before the ship stage
    existed: the one published at the top of the run folder)."""
    ship = last_of(stage_records(run), "ship")
    folder = run / ship.output / "deploy" if ship is not None and ship.output else None
    return folder if folder is not None and folder.is_dir() else run / "deploy"


def _pick(finished, ladder, table, cached: dict, log) -> tuple[Candidate | None, list[dict]]:
    """The best finalist whose shipped bundle meets the budget when timed again on its own. A check already
    made on the same bundle file for the same budget (an earlier invocation's, in state.json) is not redone:
    a finished search reruns to the same winner."""
    from ..deploy.layout import model_path
    from .latency import check_key, retime_bundle

    checks = []
    for cand in finished:
        run = ladder.runs / ladder.run_name(cand, len(ladder.rungs()) - 1)
        bundle = model_path(shipped_bundle(run))
        key = check_key(bundle, table.budget)
        old = cached.get(cand.id)
        if old is not None and key is not None and old.get("key") == key:
            check = {**old, "cached": True}
        else:
            check = {**retime_bundle(bundle, table), "key": key}
        checks.append({**check, "id": cand.id})
        if check["meets_budget"]:
            return cand, checks
        log(f"[search] {cand.id}: its bundle misses the budget when timed again ({check['over_budget']})")
    return None, checks


def _winner_yaml(pcfg, spec, winner: Candidate, n_layers: int, sdir: Path, src: Path) -> Path:
    cfg = dataclasses.replace(candidate_config(pcfg, spec, winner, n_layers), name=f"{pcfg.name}-winner")
    out = portable_dict(cfg, sdir)
    head = (
        f"The winner of `compresstune search {src}` ({winner.id}): its full recipe.\n"
        f"  compresstune pipeline run {sdir / 'winner.yaml'}"
    )
    return write_pipeline(out, sdir / "winner.yaml", head)
