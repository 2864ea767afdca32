"""``ship``: the variant chosen by a stated rule (stages/ship_rule.py), its deploy bundle, the verification set
that `compresstune verify` runs elsewhere, vocabulary trimming and edge packaging. The bundle lands in the
stage's ``deploy/`` folder; the report publishes it as ``exported/RUN/deploy/``."""

from __future__ import annotations

import json
from pathlib import Path

from ..config.results import BenchmarkResult, ExportResult, ShipDecision, last_of
from ..errors import UserError
from ..machine import describe, profile
from .base import InputRef, Stage, StageContext, register
from .ship_rule import candidates, choose, paired_text


@register
class ShipStage(Stage):
    type = "ship"
    uses_model_and_task = False  # it reads what export and benchmark recorded (the task only for its bundle)

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.cfg
        export_ref, bench_ref = last_of(ctx.inputs, "export"), last_of(ctx.inputs, "benchmark")
        if export_ref is None:
            raise UserError(f"{ctx.name}: ship needs an export stage before it; put `export` in `stages:`.")
        bench = bench_ref.result if bench_ref is not None else None
        decision = choose(candidates(export_ref.result, bench, cfg.shape), cfg.rule, cfg.shape)
        if decision.chosen and cfg.bundle:
            decision.bundle = _bundle(ctx, export_ref, bench, decision)
        ctx.log(f"[{ctx.name}] shipped: {decision.chosen} ({decision.why})")
        shipped = decision.shipped()
        if shipped is not None and shipped.paired is not None:
            ctx.log(f"[{ctx.name}] {decision.chosen} against PyTorch, same examples: {paired_text(shipped.paired)}")
        return {"decision": decision}


def bundle_config(export_ref: InputRef, decision: ShipDecision, run_dir: Path) -> tuple[dict, Path, Path, Path | None]:
    """(bundle config, ONNX file, tokenizer folder, the exported checkpoint's folder) of the chosen variant."""
    from ..export.variants import variant_file
    from ..models.artifacts import read_meta

    export: ExportResult = export_ref.result
    v = export.variants[decision.chosen]
    labels = json.loads((export_ref.dir / "labels.json").read_text())
    metric = {"name": export.metric, "dev": v.dev.main, "dev_pytorch": export.dev_pytorch.main}
    if v.dev.by_batching is not None:
        metric["by_batching"] = v.dev.by_batching
    if v.dev.paired_vs_pytorch is not None:
        metric["paired_vs_pytorch"] = v.dev.paired_vs_pytorch.model_dump()
    cfg = {
        **labels,
        "variant": decision.chosen,
        "metric": metric,
        "selection": {"rule": decision.rule, "shape": decision.shape, "why": decision.why},
    }
    source = run_dir / export.model_dir if export.model_dir else None
    meta = read_meta(source) if source else {}
    if meta.get("layer_shapes") and not meta.get("plain_hf", True):
        # a pruned model's widths differ per layer, which the transformers config cannot say: recorded beside it
        cfg["layer_shapes"] = meta["layer_shapes"]
    return cfg, variant_file(export_ref.dir, decision.chosen), export_ref.dir / "tokenizer", source


def int8_settings(export: ExportResult, chosen: str) -> dict:
    """How the shipped variant was quantised where that depends on the target CPU (``reduce_range``)."""
    reduce_range = export.variants[chosen].reduce_range
    return {"int8_reduce_range": reduce_range} if reduce_range is not None else {}


def verified_on_line(variant: str, built: dict) -> str:
    """'int8_dynamic verified on: x86-64 AVX-512 VNNI (AMD EPYC, ...), onnxruntime 1.32.0, CPU provider', with
    what that means for other CPUs when the variant is int8."""
    host = f"{built.get('cpu') or 'unknown CPU'}, {built.get('logical_cores')} logical cores"
    where = built.get("gpu") or built["isa"]
    line = (
        f"{variant} verified on: {where}, onnxruntime {built['onnxruntime']}, {built['provider'].upper()} "
        f"provider ({host}{', ' + built['isa'] if built.get('gpu') else ''})."
    )
    if "int8_reduce_range" in built:
        line += (
            " int8 weights use 7 bits (`reduce_range`), so ONNX Runtime's int8 kernels cannot saturate on x86 CPUs "
            "without VNNI."
            if built["int8_reduce_range"]
            else " int8 weights use 8 bits (`reduce_range` off): exact on CPUs with VNNI; on x86 CPUs without VNNI "
            "ONNX Runtime's int8 kernels can saturate, so check the bundle there with `compresstune verify` first."
        )
    return line


def card_latency(bench: BenchmarkResult | None, variant: str) -> list[dict]:
    timing = bench.variants.get(variant) if bench is not None else None
    if timing is None:
        return []
    rows = []
    for key, p in timing.points.items():
        b, s = key.split("x")
        rows.append({"engine": timing.engine.key, "batch": int(b), "seq": int(s), **p.model_dump(exclude_none=True)})
    return rows


def _bundle(ctx: StageContext, export_ref: InputRef, bench: BenchmarkResult | None, decision: ShipDecision) -> dict:
    from ..deploy.bundle import bundle_sizes, normalize_config, write_bundle
    from ..deploy.card import model_card
    from ..deploy.edge import mobile_note, mobile_usability
    from ..deploy.verify import machine_record, write_verification_set
    from .card_facts import card_meta

    cfg, path, tok_dir, source = bundle_config(export_ref, decision, ctx.run_dir)
    names = ctx.task.label_names
    if names and not ctx.task.is_regression and len(names) == len(cfg.get("label_names") or names):
        cfg["label_names"] = list(names)  # the task's names (GLUE: negative/positive, ...), also for older runs
    if ctx.pipeline.task.holdout:  # the metric was measured on held-out training examples, not on dev
        cfg["metric"]["split"] = f"held-out ({ctx.pipeline.task.holdout} training examples, task.holdout)"
    built = machine_record(decision.provider or "cpu")
    cfg["built_on"] = {**built, **int8_settings(export_ref.result, decision.chosen)}
    mobile = mobile_usability(path)  # ORT's estimate of what NNAPI / CoreML could run, for the card
    note = mobile_note(mobile)
    card = model_card(
        {
            **normalize_config(cfg),
            "problem_type": "regression" if cfg.get("is_regression") else "single_label_classification",
        },
        description=None,
        data=_data_line(ctx),
        latency=card_latency(bench, decision.chosen),
        machine=describe(profile()),
        verified_on="\n\n".join(x for x in (verified_on_line(decision.chosen, cfg["built_on"]), note) if x),
        how_made=f"compresstune pipeline `{Path(ctx.pipeline.source or 'pipeline.yaml').name}` "
        f"(stages: {', '.join(ctx.pipeline.stages)}); "
        f"variant {decision.chosen} chosen by {decision.why}.",
        bundle_name="deploy",
        meta=card_meta(ctx),
    )
    rep = write_bundle(ctx.out_dir / "deploy", path, tok_dir, cfg, card, source_dir=source)
    rep["mobile_usability"] = mobile
    if ctx.cfg.trim_vocab:
        rep["vocab"] = _trim(ctx)
    rep["verification"] = write_verification_set(  # on the provider it ships for: its labels and logits
        ctx.out_dir / "deploy", ctx.task.dev.inputs(), seed=ctx.pipeline.seed, provider=decision.provider or "cpu"
    )
    ctx.log(
        f"[{ctx.name}] verification set: {rep['verification']['examples']} inputs with this machine's labels and "
        "logits in deploy/verify.json (`compresstune verify deploy` checks the bundle on another machine)"
    )
    rep.update(bundle_sizes(ctx.out_dir / "deploy"))  # the files as shipped (edge/ is extra, not counted)
    if ctx.cfg.edge or ctx.cfg.fixed_shape:
        model = ctx.out_dir / "deploy" / rep["config"]["files"]["model"]
        rep["edge"] = edge_packaging(ctx.out_dir / "deploy", model, ctx.cfg)
    rep["dir"] = "deploy"
    return rep


def _trim(ctx: StageContext) -> dict:
    v = trim_bundle(ctx.out_dir / "deploy", ctx.task, ctx.cfg.trim_min_agreement, ctx.log)
    if v["trimmed"]:
        with open(ctx.out_dir / "deploy" / "README.md", "a", encoding="utf-8") as f:
            f.write(
                f"\nVocabulary trimmed to the {v['vocab_after']} word pieces of the training text (from "
                f"{v['vocab_before']}): metric {v['dev_metric']:.2f}, labels agree "
                f"{v['check']['label_agreement']:.2%} with the untrimmed model; words never seen in "
                "training split into shorter pieces or [UNK].\n"
            )
    return v


def _data_line(ctx: StageContext) -> str:
    t = ctx.pipeline.task
    if t.holdout:
        return (
            f"{t.name}: trained on its training set less {t.holdout} examples held out at random (task.holdout), "
            "evaluated on those held-out examples; the dev set was not used."
        )
    return f"{t.name}: trained on its training set, evaluated on its dev set."


def edge_packaging(bundle_dir: Path, onnx_path: Path, cfg) -> dict:
    """ORT-format model + the operator config a minimal ONNX Runtime build needs; optionally a fixed-shape copy."""
    from ..deploy.edge import fixed_shape, to_ort_format

    out = {}
    try:
        out["ort_format"] = to_ort_format(onnx_path, bundle_dir / "edge")
    except Exception as exc:  # noqa: BLE001 - edge packaging is extra: report why it is missing
        out["ort_format"] = {"error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
    if cfg.fixed_shape:
        b, s = cfg.fixed_shape
        try:
            out["fixed_shape"] = fixed_shape(onnx_path, bundle_dir / "edge" / f"model.{b}x{s}.onnx", b, s)
        except Exception as exc:  # noqa: BLE001
            out["fixed_shape"] = {"error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
    return out


def bundle_metric(bundle_dir: Path, task) -> float:
    """The main metric of a deploy bundle on the evaluation split (``task.dev``), through the torch-free
    Predictor."""
    from ..data.metrics import compute_metrics
    from ..deploy.predictor import bundle_predictions

    preds = bundle_predictions(bundle_dir, task.dev.inputs(), task.is_regression)
    return compute_metrics(task, preds, list(task.dev.labels))["main"]


def _record_trimmed_metric(bundle: Path, metric: float) -> None:
    """The trimmed bundle's own metric becomes the bundle's metric; the untrimmed one is kept beside it."""
    from ..deploy.bundle import rewrite_config
    from ..deploy.layout import load_config

    cfg = load_config(bundle)
    before = cfg.get("metric") or {}
    cfg["metric"] = {
        **{k: before[k] for k in ("name", "dev_pytorch", "split") if k in before},
        "dev": metric,
        "measured": "the trimmed bundle, through Predictor (batches of 32)",
        "before_trim": before,
    }
    rewrite_config(bundle, cfg)


def trim_bundle(bundle_dir: Path, task, min_agreement: float, log) -> dict:
    """``report.trim_vocab``: the bundle's vocabulary cut to the word pieces of the task's training text plus
    the special tokens (deploy/vocab.py), then verified: training-text tokenization and scores unchanged, dev
    labels agreeing with the untrimmed bundle on at least ``min_agreement``, and the dev metric of the trimmed
    bundle measured. A failed check keeps the untrimmed bundle and records why."""
    import shutil

    from ..deploy.vocab import trim_vocab
    from ..errors import CheckFailed, UserError
    from ..manifest import replace_dir

    tmp = bundle_dir.with_name(bundle_dir.name + ".trim")
    shutil.rmtree(tmp, ignore_errors=True)
    dev = task.dev.inputs()
    try:
        res = trim_vocab(bundle_dir, task.train.inputs(), tmp, check_texts=dev, min_agreement=min_agreement)
    except (CheckFailed, UserError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"  vocabulary not trimmed: {exc}")
        return {"trimmed": False, "error": str(exc)}
    res["dev_metric"] = bundle_metric(tmp, task)
    _record_trimmed_metric(tmp, res["dev_metric"])
    replace_dir(tmp, bundle_dir)  # the untrimmed bundle set aside until the trimmed one is in place
    chk = res.get("check", {})
    log(
        f"  vocabulary trimmed {res['vocab_before']} -> {res['vocab_after']} tokens, bundle "
        f"{res['bytes_before'] / 2**20:.2f} -> {res['bytes_after'] / 2**20:.2f} MB; labels agree "
        f"{chk.get('label_agreement', 0):.2%} with the untrimmed bundle, [UNK] rate {chk.get('unk_rate', 0):.3%}, "
        f"metric {res['dev_metric']:.2f}"
    )
    return {"trimmed": True, **res}
