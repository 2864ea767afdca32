"""``compresstune verify BUNDLE``: the bundle's verification set run on this machine (no torch)."""

from __future__ import annotations

import sys

import click

from .common import bundle_run_options


@click.command("verify")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option(
    "--min-agreement",
    type=float,
    default=0.99,
    show_default=True,
    help="least share of the verification inputs whose label must equal the build machine's",
)
@click.option(
    "--max-median-diff",
    type=float,
    default=0.01,
    show_default=True,
    help="largest allowed median, over the verification inputs, of an input's largest logit difference",
)
@bundle_run_options
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def verify(bundle, min_agreement, max_median_diff, provider, threads, as_json):
    """Check a deploy bundle on the machine it is on: its stored dev inputs are run here and compared with the
    labels and logits of the machine that built it (label agreement, logit differences, both machines).
    Exits 0 when agreement reaches --min-agreement and the median logit difference is within --max-median-diff,
    3 otherwise.

    Needs only onnxruntime, tokenizers and numpy: torch and transformers are never imported."""
    from ..deploy.verify import Tolerance, verify_main

    tol = Tolerance(min_agreement, max_median_diff)
    sys.exit(verify_main(bundle, tol, provider, threads, as_json, echo=click.echo))
