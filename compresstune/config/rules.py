"""Checks across settings that the config alone decides: what one stage needs from the stage it
reads, settings that only make sense together, and values a stage would refuse only after the
stages before it had run (a pruning budget without its number, a distillation whose loss is a
constant, a verification shape equal to the export shape, a metric that does not fit the problem).
Called by the loader once every stage section is valid; each problem names the key and the fix."""

from __future__ import annotations

from collections.abc import Callable

from ..export.onnx import EXPORT_SHAPE
from .sections import PipelineConfig

MODEL_STAGES = ("finetune", "compress", "attach", "merge", "export")  # their output folders hold a model
NEEDS_MODEL_INPUT = ("merge", "export")  # they never start from the pretrained model
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
CORRELATION_METRICS = ("pearson", "spearman")

Add = Callable[[tuple, str], None]


def model_input(cfg: PipelineConfig, name: str) -> str | None:
    """The stage whose output ``name`` reads its model from, or None when it starts from the pretrained model."""
    inputs = cfg.stage_inputs(name)
    return inputs[0] if inputs else None


def _input_is_known(cfg: PipelineConfig, name: str) -> bool:
    """Whether ``name``'s input is a stage that runs before it (the loader reports it otherwise)."""
    src = model_input(cfg, name)
    names = list(cfg.stages)
    return src is None or (src in cfg.stages and names.index(src) < names.index(name))


def check_rules(cfg: PipelineConfig, add: Add, complete: bool = True) -> None:
    """Every cross-setting problem of ``cfg``, passed to ``add(key path, message)``. ``complete``: every
    stage section is valid, so what a stage reads from the stages before it can be checked too."""
    _check_task_metric(cfg, add)
    for name, scfg in cfg.stages.items():
        if scfg.type == "compress":
            _check_compress(name, scfg, add)
        elif scfg.type == "export" and tuple(EXPORT_SHAPE) in {tuple(s) for s in scfg.verify_shapes}:
            b, s = EXPORT_SHAPE
            add(
                (name, "verify_shapes"),
                f"{name}.verify_shapes: [{b}, {s}] is the shape the model is exported at, so checking there proves "
                f"nothing about the dynamic axes; use other shapes, for example [[1, 7], [3, 41]].",
            )
        if complete and _input_is_known(cfg, name):
            _check_input_kind(cfg, name, add)
            if scfg.type == "benchmark" and scfg.variants != "all":
                _check_bench_variants(cfg, name, add)
            if scfg.type == "compress" and (scfg.method == "distill" or scfg.heal_epochs > 0):
                _check_distill_loss(cfg, name, add)


def _check_bench_variants(cfg: PipelineConfig, name: str, add: Add) -> None:
    """The variants a benchmark times are ones its export stage builds (checked now, not after the export)."""
    from ..export.variants import all_variants, resolve_variants

    src = model_input(cfg, name)
    exp = cfg.stages.get(src) if src else None
    if exp is None or exp.type != "export":
        return
    if exp.variants == "auto":
        import torch

        device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    else:
        device = "cpu"
    built = resolve_variants(exp.variants, device)
    missing = [v for v in cfg.stages[name].variants if v not in built]
    if missing:
        unknown = [v for v in missing if v not in all_variants()]
        what = f"unknown variant(s) {unknown} (known: {', '.join(all_variants())})" if unknown else f"{missing}"
        add(
            (name, "variants"),
            f"{name}.variants: {what} are not built by {src} (it builds {', '.join(built)} here); add them to "
            f"{src}.variants or drop them from {name}.variants.",
        )


def _check_input_kind(cfg: PipelineConfig, name: str, add: Add) -> None:
    """A stage reads what its input stage produces: a model, or (a benchmark) an ONNX export."""
    stype = cfg.stages[name].type
    src = model_input(cfg, name)
    where = (name, "input") if cfg.stages[name].input else ("stages",)
    if stype == "benchmark":
        if src is None or cfg.stages[src].type != "export":
            got = f"reads {src!r} ({cfg.stages[src].type})" if src else "has no earlier stage to read"
            add(
                where,
                f"{name}: a benchmark times an exported ONNX model, but it {got}; put an export stage "
                f"before it or set `{name}.input` to one.",
            )
    elif stype == "report":
        earlier = [cfg.stages[n].type for n in cfg.stage_inputs(name)]
        if "benchmark" in earlier and "ship" not in earlier:
            add(
                ("stages",),
                f"{name}: the report no longer chooses the variant nor writes the deploy bundle; put a `ship` stage "
                f"before it (stages: [..., benchmark, ship, {name}]), with `ship: {{bundle: false}}` to only choose.",
            )
    elif stype == "ship":
        earlier = [cfg.stages[n].type for n in cfg.stage_inputs(name)]
        if "export" not in earlier or "benchmark" not in earlier:
            add(
                ("stages",),
                f"{name}: ship chooses among exported variants that a benchmark timed, but "
                f"{'no export' if 'export' not in earlier else 'no benchmark'} comes before it; "
                "put export and benchmark before it in `stages:`.",
            )
    elif stype in MODEL_STAGES:
        if src is not None and cfg.stages[src].type not in MODEL_STAGES:
            add(
                where,
                f"{name}: reads {src!r} ({cfg.stages[src].type}), which produces no model; set "
                f"`{name}.input` to a stage that outputs one (finetune, compress, attach, merge) or to pretrained.",
            )
        elif src is None and stype in NEEDS_MODEL_INPUT:
            add(
                where,
                f"{name}: {stype} needs a model from an earlier stage (finetune, compress, attach, ...); "
                "put one before it in `stages:`.",
            )


def _check_compress(name: str, c, add: Add) -> None:
    if c.method == "prune" and c.target == "params" and not c.target_params:
        add(
            (name, "target"),
            f"{name}.target_params: required with target: params (the total parameter budget, "
            "for example target_params: 15000000); or use target: ratio with head_ratio/ffn_ratio.",
        )
    if c.method == "prune" and c.target == "flops" and not c.target_gflops:
        add(
            (name, "target"),
            f"{name}.target_gflops: required with target: flops (encoder GFLOPs per sequence of "
            "flops_seq tokens, for example target_gflops: 1.5); or use target: ratio.",
        )
    if c.keep_layers is not None and (
        not c.keep_layers or len(set(c.keep_layers)) != len(c.keep_layers) or min(c.keep_layers) < 0
    ):
        add(
            (name, "keep_layers"),
            f"{name}.keep_layers: {c.keep_layers} must name distinct teacher layers, "
            "counted from 0 (for example [0, 2, 4]).",
        )


def _check_distill_loss(cfg: PipelineConfig, name: str, add: Add) -> None:
    """Distillation (or healing after pruning) needs a teacher that fits its mode and a loss that is not constant."""
    c = cfg.stages[name]
    teacher_trained = model_input(cfg, name) is not None
    task_specific = c.distill_mode == "task_specific" if c.method == "distill" else teacher_trained
    if c.method == "distill" and task_specific and not teacher_trained:
        add(
            (name, "distill_mode"),
            f"{name}: distill_mode task_specific distils the teacher's logits, but the "
            f"teacher is the pretrained model with an untrained head. Put a fine-tuned teacher first (`{name}.input: "
            "teacher`) or use distill_mode: task_agnostic.",
        )
        return
    keys = (
        ("logit_weight", "hidden_weight", "attention_weight", "task_weight")
        if task_specific
        else ("hidden_weight", "attention_weight")
    )
    if all(getattr(c, k) == 0 for k in keys):
        what = "distillation" if c.method == "distill" else "healing (heal_epochs > 0)"
        why = "" if task_specific else "; without a fine-tuned teacher only these count"
        alt = "" if c.method == "distill" else ", or set heal_epochs: 0"
        add(
            (name, keys[0]),
            f"{name}: every loss weight of the {'task-specific' if task_specific else 'task-agnostic'} {what} is 0 "
            f"({', '.join(keys)}{why}), so the loss is a constant and nothing can be learned; give one of them a "
            f"positive weight (for example {keys[0]}: 1.0){alt}.",
        )


def _check_task_metric(cfg: PipelineConfig, add: Add) -> None:
    t = cfg.task
    if t is None or t.name != "custom" or t.metric is None:
        return
    if t.problem == "regression" and t.metric in CLASSIFICATION_METRICS:
        add(
            ("task", "metric"),
            f"task.metric: {t.metric} is a classification metric but task.problem is "
            "regression; use pearson or spearman (or problem: classification).",
        )
    elif t.problem == "classification" and t.metric in CORRELATION_METRICS:
        add(
            ("task", "metric"),
            f"task.metric: {t.metric} is a correlation for regression but task.problem is "
            "classification; use accuracy, f1 (two labels) or mcc (or problem: regression).",
        )
    elif t.metric == "f1" and t.labels is not None and len(t.labels) > 2:
        add(("task", "metric"), f3_message(len(t.labels)))


def f3_message(n_labels: int) -> str:
    """f1 is the binary F1 here; a task with more labels reports f1_macro, not f1."""
    return (
        f"task.metric: f1 is the binary F1 score, but the task has {n_labels} labels; use accuracy or mcc "
        "(f1_macro is reported next to them for multi-class tasks)."
    )
