"""``compresstune search``."""

from __future__ import annotations

import click

from .common import out_dir


@click.command("search")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    help="Where the search folder goes (default: the pipeline's output_dir); the folder is named after the pipeline.",
)
@click.option(
    "--export-candidates",
    type=click.Path(file_okay=False),
    callback=out_dir,
    default=None,
    help="Only build every candidate's ONNX file into this folder (KEY.onnx) and stop, for timing on a "
    "target device with `compresstune bench onnx`; then set search.budget.latency_table.",
)
@click.option("--progress", is_flag=True, help="Progress bars for the candidate runs.")
def search(file, overrides, output_dir, export_candidates, progress):
    """Find the most accurate model under the budget of FILE's `search:` section.

    OVERRIDES are KEY=VALUE, as for `pipeline run` (`search.budget.latency_fraction=0.1` sets the search).
    Rerunning the same command resumes: timed candidates and finished runs are kept."""
    from ..search import run_search

    res = run_search(file, list(overrides), output_dir, export_candidates, log=click.echo, progress=progress)
    if export_candidates is None and not res.get("winner"):
        raise SystemExit(1)
