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
@bundle_run_options
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def verify(bundle, min_agreement, provider, threads, as_json):
    """Check a deploy bundle on the machine it is on: its stored dev inputs are run here and compared with the
    labels and logits of the machine that built it (label agreement, largest logit difference, both machines).
    Exits 0 when agreement reaches --min-agreement, 3 below it.

    Needs only onnxruntime, tokenizers and numpy: torch and transformers are never imported."""
    from ..deploy.verify import verify_main

    sys.exit(verify_main(bundle, min_agreement, provider, threads, as_json, echo=click.echo))
