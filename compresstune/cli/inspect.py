"""``compresstune inspect ...``: look inside models."""

from __future__ import annotations

import json

import click

from .common import Group


@click.group(cls=Group)
def inspect():
    """Look inside models."""


@inspect.command("params")
@click.option(
    "--model",
    "model_ref",
    required=True,
    help="Alias, folder, hub id, artifact folder, or config:TYPE "
    "(random weights from TYPE's default config, e.g. config:distilbert).",
)
@click.option(
    "--method",
    default="learner",
    show_default=True,
    help="A registered fine-tuning method "
    "(full, learner, bitfit, freeze_ffn, adapters_seq, adapters_par, far, lora, ...).",
)
@click.option("--rank", type=int, default=64, show_default=True, help="Learner/LoRA rank.")
@click.option("--adapter-size", type=int, default=256, show_default=True)
@click.option("--far-retention", type=float, default=0.1, show_default=True)
@click.option("--num-labels", type=int, default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_params(model_ref, method, rank, adapter_size, far_retention, num_labels, as_json):
    """Total, trainable and per-group parameter counts of a fine-tuning METHOD on MODEL."""
    from ..bench.params import build_model, param_report
    from ..methods import all_methods

    if method not in all_methods():
        raise click.BadParameter(
            f"{method!r} is not a fine-tuning method; known: {', '.join(all_methods())}.", param_hint="--method"
        )

    rep = param_report(
        build_model(model_ref, num_labels), method, rank=rank, adapter_size=adapter_size, far_retention=far_retention
    )
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    click.echo(
        f"{model_ref} / {method}: total {rep['total_params']:,} "
        f"(base {rep['base_params']:,}, added {rep['added_params']:,}); "
        f"trainable {rep['trainable_params']:,} ({100 * rep['trainable_share']:.2f}%)"
    )
    click.echo(f"  {'group':12s} {'total':>12s} {'trainable':>12s}")
    for g, c in rep["groups"].items():
        click.echo(f"  {g:12s} {c['total']:12,d} {c['trainable']:12,d}")
