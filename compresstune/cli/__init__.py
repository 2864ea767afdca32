"""Command-line interface (a thin shell over the importable API; heavy imports stay inside commands).

``compresstune pipeline ...`` is defined here; ``inspect`` and ``bench`` in their own modules."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import __version__
from .bench import bench
from .common import Group
from .inspect import inspect
from .predict import predict
from .search import search
from .verify import verify
from .web import web

PIPELINE_DIR_ENV = "COMPRESSTUNE_PIPELINES"


@click.group(cls=Group)
@click.version_option(__version__, prog_name="compresstune")
def main():
    """compresstune: compress a BERT-family model, fine-tune it cheaply, ship a verified ONNX model."""


main.add_command(inspect)
main.add_command(bench)
main.add_command(predict)
main.add_command(search)
main.add_command(verify)
main.add_command(web)


@main.group(cls=Group)
def pipeline():
    """Run, validate, list and inspect pipelines."""


@pipeline.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--run-name", help="Run folder name under the output dir (default: the pipeline's name).")
@click.option("--from", "from_stage", metavar="STAGE", help="Rerun this stage and every later one, even if up to date.")
@click.option("--until", "until_stage", metavar="STAGE", help="Stop after this stage.")
@click.option("--force", is_flag=True, help="Rerun every stage, ignoring what is done (and any partial checkpoints).")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    help="Where run folders go (default: the pipeline's output_dir, 'exported').",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option(
    "--reuse-from",
    "reuse_from",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Another run folder (repeatable): stages with the same fingerprint there are copied, not recomputed.",
)
@click.option(
    "--num-processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train on N data-parallel processes on this machine (N GPUs, or N CPU processes with gloo): reruns this "
    "command under `accelerate launch`. The batch size stays the global batch, split across the processes; "
    "only training stages run on all of them. Several machines: see docs/RUNNING.md.",
)
def pipeline_run(
    file, overrides, run_name, from_stage, until_stage, force, output_dir, no_progress, reuse_from, num_processes
):
    """Run the pipeline in FILE; KEY=VALUE overrides settings (for example finetune.lr=3e-5).

    Stages already done with the same settings and inputs are skipped; an interrupted
    training stage resumes from its last checkpoint when the same command is run again."""
    from ..config.preflight import check_pipeline
    from ..pipeline import run_dir_for, run_pipeline
    from ..train.distributed import (
        exit_finished_rank,
        is_main_process,
        launched_world_size,
        relaunch,
        shutdown_processes,
        uses_cpu,
    )

    cfg, checked = check_pipeline(file, overrides, run_name, output_dir)  # every check; all problems at once
    if num_processes > 1 and launched_world_size() == 1:
        ctx = click.get_current_context()
        raise SystemExit(relaunch(num_processes, uses_cpu(cfg.device), _command_args(ctx, skip={"num_processes"})))
    manifest = run_pipeline(
        cfg,
        run_name,
        from_stage,
        until_stage,
        force,
        output_dir,
        log=click.echo,
        progress=not no_progress,
        reuse_from=list(reuse_from),
        checked=checked,
    )
    several = launched_world_size() > 1
    shutdown_processes()  # every rank done (a failed one raised above): leave the process group before exit
    if is_main_process():  # the only process, or the main one of several, reports
        run_dir = run_dir_for(cfg, run_name, output_dir)
        click.echo(f"run folder: {run_dir}")
        for name in ("model.onnx", "REPORT.md"):
            if (run_dir / name).exists():
                click.echo(f"  {name}: {run_dir / name}")
    if several:
        exit_finished_rank()
    return manifest


def _command_args(ctx: click.Context, skip: set[str]) -> list[str]:
    """The command line that gives ``ctx``'s command the same parameters (but those in ``skip``)."""
    opts, args = [], []
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if p.name in skip or v is None or v is False or v == ():
            continue
        if isinstance(p, click.Argument):
            args += [str(x) for x in v] if p.nargs == -1 else [str(v)]
        elif p.is_flag:
            opts.append(p.opts[0])
        else:
            opts += [x for item in (v if p.multiple else [v]) for x in (p.opts[0], str(item))]
    path, c = [], ctx
    while c.parent is not None:  # the subcommands below the program: pipeline run
        path.insert(0, c.info_name)
        c = c.parent
    return [*path, *opts, "--", *args]


@pipeline.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--run-name", help="Check this run folder name (as `pipeline run --run-name`).")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Check this output dir (as `pipeline run`).")
def pipeline_validate(file, overrides, run_name, output_dir):
    """Check FILE (with overrides) without running anything: exit 0, or 2 listing every problem.

    The same checks `pipeline run` makes before its first stage: the config, every row of the task
    data, the model's files and tokenizer, what each stage's settings need of the model, the
    machine (cuda asked for) and the run folder."""
    from ..config.preflight import check_pipeline
    from ..config.yamlfile import read_pipeline_file

    cfg, _ = check_pipeline(file, overrides, run_name, output_dir)
    _, raw = read_pipeline_file(Path(file))
    searched = (isinstance(raw, dict) and "search" in raw) or any(
        o.split("=")[0].split(".")[0] == "search" for o in overrides
    )
    if searched:  # a search section (in the file or set by an override) is read by `compresstune search`: checked so
        from ..search.spec import load_search

        load_search(file, overrides)
    click.echo(f"{file}: ok ({len(cfg.stages)} stages: {', '.join(f'{n} ({c.type})' for n, c in cfg.stages.items())})")


def _pipeline_dirs() -> list[Path]:
    import os

    dirs = []
    if os.environ.get(PIPELINE_DIR_ENV):
        dirs.append(Path(os.environ[PIPELINE_DIR_ENV]))
    dirs.append(Path.cwd() / "pipelines")
    dirs.append(Path(__file__).resolve().parents[2] / "pipelines")  # a source checkout
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
    from ..pipeline import run_status

    run_dir = Path(run) if Path(run).is_dir() else Path(output_dir) / run
    st = run_status(run_dir)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"run {run_dir}")
    for s in st["stages"]:
        t = f"{s['wall_time_s']:.1f}s" if s["wall_time_s"] is not None else ""
        click.echo(
            f"  {s['name']:12s} {s['type'] or '':10s} {s['status']:8s} {s['fingerprint'] or '-':16s} "
            f"{t:>9s}  {s['output'] or ''}"
        )
        if s["error"]:
            click.echo(f"      error: {s['error']}")
        if s.get("reused_from"):
            click.echo(f"      reused from {s['reused_from']} (the time shown was spent there)")
