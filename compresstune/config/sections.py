"""Typed pipeline sections: the task, and one settings class per stage type.

Each stage type's settings are a pydantic model with defaults and help text. The
``finetune`` section is assembled from the training options and every registered
fine-tuning method's own options (methods/), so a new method's settings are known here
without editing this file."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from ..methods import all_methods, registry_version
from ..methods.learner import AttachOptions
from ..options import Section
from ..train.options import TrainOptions
from .ship_sections import ReportConfig, ShipConfig
from .stage_base import Batch, Choices, SeqLen, StageConfig  # noqa: F401 - part of this module's API
from .task_config import TaskConfig  # noqa: E402,F401 - part of this module's API


def _method_fields() -> dict[str, tuple]:
    """Every registered method's own options, as fields of the finetune section. A field two
    methods share (LoRA and Learners both have ``rank``) must mean the same in both."""
    fields: dict[str, tuple] = {}
    for m in all_methods().values():
        for name, f in m.Options.model_fields.items():
            if name in fields and fields[name][1].get_default(call_default_factory=True) != f.get_default(
                call_default_factory=True
            ):
                raise TypeError(f"method {m.name}: option {name!r} clashes with another method's default")
            fields.setdefault(name, (f.annotation, copy.copy(f)))
    return fields


def method_option_fields() -> dict[str, set[str]]:
    """Per method, the names of its own options (they enter the fingerprint when it is chosen)."""
    out = {}
    for m in all_methods().values():
        out[m.name] = {
            n
            for n, f in m.Options.model_fields.items()
            if not (isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("fingerprint") is False)
        }
    return out


_FINETUNE_CACHE: dict[int, type] = {}


def finetune_config_class() -> type[StageConfig]:
    """The finetune section's class for the methods registered now (rebuilt when that changes)."""
    version = registry_version()
    if version not in _FINETUNE_CACHE:
        names = tuple(all_methods())
        method_field = Field("full", description="fine-tuning method: " + ", ".join(names) + " (see docs/METHODS.md)")
        _FINETUNE_CACHE.clear()
        _FINETUNE_CACHE[version] = create_model(
            "FinetuneConfig",
            __base__=(TrainOptions, StageConfig),
            __module__=__name__,
            type=(Literal["finetune"], "finetune"),
            method=(Literal[names], method_field),
            **_method_fields(),
        )
    return _FINETUNE_CACHE[version]


class CompressConfig(TrainOptions, StageConfig):
    @model_validator(mode="after")
    def _hidden_heal(self):
        if self.method == "prune" and self.hidden_ratio > 0 and self.heal_epochs > 0 and self.hidden_weight > 0:
            raise ValueError(
                "hidden_ratio > 0 changes the hidden size, so healing cannot match hidden states (no projection is "
                "added); set hidden_weight: 0 to heal on the teacher's logits (a fine-tuned teacher as input) or "
                "attention distributions (attention_weight > 0) alone"
            )
        return self

    type: Literal["compress"] = "compress"
    method: Literal["prune", "distill"] = Field(
        "prune", description="structured pruning, or distillation into a student"
    )
    # pruning
    head_ratio: float = Field(0.5, ge=0, lt=1, description="prune: share of attention heads removed")
    ffn_ratio: float = Field(0.5, ge=0, lt=1, description="prune: share of FFN neurons removed")
    mode: Literal["uniform", "global"] = Field(
        "uniform", description="prune: same widths in every layer, or ranked across layers"
    )
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="prune: L2 weight magnitude or first-order Taylor on calibration data"
    )
    target: Literal["ratio", "params", "flops"] = Field(
        "ratio", description="prune: use head_ratio/ffn_ratio, or find one ratio meeting target_params/target_gflops"
    )
    target_params: int | None = Field(None, gt=0, le=10**13, description="prune: total parameter budget")
    target_gflops: float | None = Field(
        None, gt=0, le=1e6, description="prune: encoder GFLOPs per sequence of flops_seq tokens"
    )
    flops_seq: int = Field(128, gt=0, le=4096)
    hidden_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="prune: share of the hidden size (the residual stream: embeddings, every "
        "layer's input and output, LayerNorms) to remove too, rounded so the head count still divides it; 0 = keep it",
    )
    calibration: Literal["task", "text"] = Field(
        "task", description="Taylor/distill data: the task's labelled train set, or unlabelled text"
    )
    calibration_examples: int = Field(256, gt=0, le=10**6, description="prune: examples for Taylor scores")
    text_file: str | None = Field(
        None,
        description="unlabelled text, one example per line (default: the task's training sentences without labels)",
    )
    heal_epochs: float = Field(
        0.0, ge=0, le=1000, description="prune: a short distillation against the unpruned model afterwards (0 = none)"
    )
    # distillation
    keep_layers: list[Annotated[int, Field(ge=0, le=1000)]] | None = Field(
        None, description="distill: teacher layers the student keeps (default: student_layers spread evenly)"
    )
    student_layers: int = Field(
        3, gt=0, le=1000, description="distill: number of student layers when keep_layers is not given"
    )
    distill_mode: Literal["task_agnostic", "task_specific"] = Field(
        "task_agnostic",
        description="unlabelled text vs the pretrained teacher's hidden states, or the fine-tuned teacher's logits",
    )
    temperature: float = Field(2.0, gt=0, le=100)
    logit_weight: float = Field(1.0, ge=0, le=1000, description="distill: soft-logit KD weight (task_specific only)")
    hidden_weight: float = Field(1.0, ge=0, le=1000, description="distill: hidden-state MSE weight")
    attention_weight: float = Field(
        0.0, ge=0, le=1000, description="distill: attention-distribution KL weight (0 = off)"
    )
    task_weight: float = Field(
        0.0, ge=0, le=1000, description="distill: weight of the task loss on labels (task_specific only)"
    )


class AttachConfig(AttachOptions, StageConfig):
    type: Literal["attach"] = "attach"


class MergeConfig(StageConfig):
    type: Literal["merge"] = "merge"
    atol: float = Field(1e-4, gt=0, le=1, description="max abs logit difference merged vs unmerged on a dev batch")
    check_examples: int = Field(64, gt=0, le=10**5, description="dev examples in the check batch")


class VariantTolerances(Section):
    """Largest dev-metric difference (points) from PyTorch that a variant may have and still ship, and its largest
    logit difference at the verification shapes (the fp32 export's is `export.atol`)."""

    optimized: float = Field(0.1, ge=0, le=100, description="the fused fp32 graph")
    fp16: float = Field(0.3, ge=0, le=100)
    int8: float = Field(1.0, ge=0, le=100, description="int8_dynamic and int8_static")
    logits_optimized: float = Field(
        1e-3, gt=0, le=100, description="largest |logit difference| from PyTorch at the verification shapes"
    )
    logits_fp16: float = Field(5e-2, gt=0, le=100, description="the same for fp16")
    logits_int8: float = Field(
        1.0, gt=0, le=100, description="the same for int8 (random-token inputs; a broken graph is off by more)"
    )


class ExportConfig(StageConfig):
    type: Literal["export"] = "export"
    opset: int = Field(17, ge=14, le=21)
    atol: float = Field(1e-4, gt=0, le=1, description="max abs logit difference ONNX vs PyTorch")
    verify_shapes: Choices[tuple[Batch, SeqLen]] = Field(
        default_factory=lambda: [(1, 7), (3, 41)], description="(batch, seq) shapes checked; never the export shape"
    )
    metric_tolerance: float = Field(
        0.1, ge=0, le=100, description="max dev-metric difference ONNX vs PyTorch, in points"
    )
    variants: Choices[str] | Literal["auto"] = Field(
        "auto",
        description="variants built from the fp32 export and verified (export/variants.py registers them); auto: "
        "cpu -> fp32, optimized, int8_dynamic, int8_static; cuda -> fp32, optimized, fp16",
    )

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, v):
        from ..export.variants import all_variants

        unknown = [x for x in (v if isinstance(v, list) else []) if x not in all_variants()]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(all_variants())}")
        return v

    per_channel: bool = Field(True, description="int8: per-channel weight scales (per-tensor when false)")
    quantize_embeddings: bool | Literal["auto"] = Field(
        "auto",
        description="int8_dynamic: the embedding tables too (about half of a small BERT's weights). auto: int8 "
        "embeddings unless keeping them float gives more label agreement with PyTorch on the selection slice",
    )
    reduce_range: bool | Literal["auto"] = Field(
        True,
        description="int8: 7-bit weights, so that ONNX Runtime's u8s8 kernels cannot saturate on x86 CPUs without "
        "VNNI: the same file gives the build machine's results on every x86 CPU class (8-bit weights "
        "built on a VNNI CPU flipped 0.7-1.0% of SST-2 dev labels on an AVX2 one; 7 bits cost no measurable "
        "accuracy). false: 8-bit weights, for a bundle that runs only on CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, "
        "AMX) or Arm; auto: as the exporting CPU decides (7 bits where it lacks VNNI), for a bundle run where built",
    )
    min_agreement: float = Field(
        0.99,
        ge=0,
        le=1,
        description="int8_dynamic: least share of the selection slice's labels equal to PyTorch's (at batch 1 "
        "and 32); below it the most sensitive MatMuls, then layers, stay float (0 = off)",
    )
    selection_examples: int = Field(
        512,
        gt=0,
        le=10**5,
        description="training examples (a fixed slice) on which the int8 fallbacks choose what stays float; the "
        "dev set is scored once, afterwards",
    )
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="int8_static")
    calibration_examples: int = Field(256, gt=0, le=10**6, description="int8_static: training examples for calibration")
    static_fallback: bool = Field(
        True,
        description="int8_static: keep the most sensitive layers in float until the metric on the selection slice "
        "is within tolerance of PyTorch's there",
    )
    tolerances: VariantTolerances = Field(default_factory=VariantTolerances)


class BenchmarkConfig(StageConfig):
    type: Literal["benchmark"] = "benchmark"
    providers: Choices[Literal["cpu", "cuda"]] | Literal["auto"] = Field(
        "auto", description="'auto' = cpu, plus cuda when a GPU is present"
    )
    threads: int = Field(2, gt=0, le=1024, description="ONNX Runtime intra-op threads and torch threads on CPU")
    batch_sizes: Choices[Batch] = Field(default_factory=lambda: [1, 32])
    seq_lengths: Choices[SeqLen] = Field(default_factory=lambda: [64, 128])
    shapes: Choices[tuple[Batch, SeqLen]] | None = Field(
        None, description="(batch, seq) points to time instead of the batch_sizes x seq_lengths grid"
    )
    warmup: int = Field(3, ge=1, le=10**4, description="untimed calls per engine per round")
    iters: int = Field(
        100,
        ge=3,
        le=10**6,
        description="timed calls per engine and point, over all rounds (100: p99 is not just the maximum)",
    )
    min_time_s: float = Field(
        0.0, ge=0, le=3600, description="at least this long per engine and point, over all rounds"
    )
    pytorch: bool = Field(
        True, description="also time PyTorch eager (this model's, and the baseline's) on the same points"
    )
    baseline: str | None = Field(
        None,
        description="an earlier export stage (e.g. the uncompressed model's): its fp32 ONNX model and its PyTorch "
        "model are timed in this stage, interleaved with this model's variants, so speed-ups are measured back to back",
    )
    rounds: int = Field(
        4, ge=1, le=1000, description="interleaved rounds per point, the engine order rotating between rounds"
    )
    variants: Choices[str] | Literal["all"] = Field("all", description="which verified export variants to time")
    footprint: bool = Field(True, description="per variant: cold load time and peak RSS of a fresh process running it")

    def points(self) -> list[tuple[int, int]]:
        return (
            [tuple(p) for p in self.shapes]
            if self.shapes
            else [(b, s) for b in self.batch_sizes for s in self.seq_lengths]
        )


def stage_types() -> dict[str, type[StageConfig]]:
    """Stage type name -> its settings class."""
    return {
        "finetune": finetune_config_class(),
        "attach": AttachConfig,
        "compress": CompressConfig,
        "merge": MergeConfig,
        "export": ExportConfig,
        "benchmark": BenchmarkConfig,
        "ship": ShipConfig,
        "report": ReportConfig,
    }


# `search` is read by `compresstune search` only (search/spec.py)
TOP_LEVEL = {"name", "description", "model", "task", "seed", "device", "output_dir", "stages", "search"}


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
    lines: dict = field(default_factory=dict, repr=False, compare=False)  # key path -> line in the file, for messages

    def to_dict(self) -> dict:
        """The resolved config, as saved with the run (and accepted by :func:`load_config`)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "task": self.task.model_dump(),
            "seed": self.seed,
            "device": self.device,
            "output_dir": self.output_dir,
            "stages": list(self.stages),
        }
        for n, c in self.stages.items():
            out[n] = c.model_dump()
        return out

    def stage_inputs(self, name: str) -> list[str]:
        names = list(self.stages)
        cfg = self.stages[name]
        if cfg.type in ("ship", "report"):  # they read every earlier stage
            return names[: names.index(name)]
        if cfg.input == "pretrained":
            return []
        extra = [cfg.baseline] if getattr(cfg, "baseline", None) else []
        if cfg.input:
            return [cfg.input] + extra
        i = names.index(name)
        return ([names[i - 1]] if i > 0 else []) + extra
