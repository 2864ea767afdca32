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

PIPELINE_DIR_ENV = "COMPRESSTUNE_PIPELINES"


@click.group(cls=Group)
@click.version_option(__version__, prog_name="compresstune")
def main():
    """compresstune: compress a BERT-family model, fine-tune it cheaply, ship a verified ONNX model."""


main.add_command(inspect)
main.add_command(bench)
main.add_command(predict)


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
def pipeline_run(file, overrides, run_name, from_stage, until_stage, force, output_dir, no_progress, reuse_from):
    """Run the pipeline in FILE; KEY=VALUE overrides settings (for example finetune.lr=3e-5).

    Stages already done with the same settings and inputs are skipped; an interrupted
    training stage resumes from its last checkpoint when the same command is run again."""
    from ..config import load_config
    from ..pipeline import run_dir_for, run_pipeline

    cfg = load_config(file, list(overrides))
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
    )
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
    from ..config import load_config

    cfg = load_config(file, list(overrides))
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
