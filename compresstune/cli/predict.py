"""``compresstune predict BUNDLE TEXT... | --file FILE``: the deploy bundle's predictor (no torch)."""

from __future__ import annotations

import sys

import click

from .common import bundle_run_options


@click.command("predict")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("texts", nargs=-1)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="One input per line (a sentence pair tab-separated), or .jsonl with the bundle's text fields; - for stdin.",
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@bundle_run_options
def predict(bundle, texts, file, batch_size, provider, threads):
    """Label TEXTs (or a --file) with a deploy bundle; prints one JSON line per input (label and score, or value).

    Needs only onnxruntime, tokenizers and numpy: torch and transformers are never imported."""
    from ..deploy.files import predict_main

    sys.exit(predict_main(bundle, texts, file, batch_size, provider, threads))
