"""What each stage type hands on: a typed result per stage type, next to its settings (sections.py).

The runner validates a stage's return value against its type's result and writes it as the stage's
``summary.json`` (and the manifest's record); every consumer (later stages, the report, the ship rule, the
search, the bench commands) reads it back through :func:`result_of` / :func:`stage_records` as that type. No
module reads another stage's summary by string keys. Results allow extra keys (a stage may record more than
its consumers read), and fields added later have defaults, so summaries of older runs still load. The
benchmark's result and its engines live in bench_results.py; the base class in result_base.py."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .bench_results import (  # noqa: F401 - part of this module's API
    BenchmarkResult,
    Comparison,
    ComparisonRow,
    Engine,
    LatencyRow,
    Point,
    References,
    VariantTiming,
    shape_key,
)
from .result_base import Result

# --- training stages --------------------------------------------------------------------------------------


class Metrics(BaseModel):
    """One model's metrics on the evaluation split: ``main`` (the task's metric) decides; the others beside it."""

    model_config = ConfigDict(extra="allow")

    main: float | None = None

    def others(self) -> dict[str, float]:
        """The task's other metrics (accuracy, f1, mcc, ...), by name."""
        return dict(self.model_extra or {})


class EvalPoint(BaseModel):
    """One periodic evaluation during training."""

    model_config = ConfigDict(extra="allow")

    step: int | None = None
    epoch: float = 0.0
    train_time_s: float = 0.0
    dev_main: float | None = None  # the main metric on the evaluation split
    train_loss: float | None = None


class TrainResult(Result):
    """``finetune``: the method, the metric of the weights it outputs, and how it trained."""

    method: str
    metric: str
    dev_metric: float | None = None  # the output weights' metric (best or last, as `select` says)
    best_dev_metric: float | None = None
    best_step: int | None = None
    final_dev_metric: float | None = None
    steps: int = 0
    epochs: float = 0.0
    train_time_s: float = 0.0
    train_examples: int = 0
    dev_examples: int = 0
    total_params: int = 0
    trainable_params: int = 0
    resumed_from_step: int | None = None
    history: list[EvalPoint] = Field(default_factory=list)

    def evaluated_metric(self) -> float | None:
        return self.dev_metric


class ModelFacts(BaseModel):
    model_config = ConfigDict(extra="allow")

    params: dict[str, int]
    gflops_per_seq: dict[str, float] = Field(default_factory=dict)  # keyed by sequence length, as JSON writes it
    layers: int
    dev: float | None = None


class PruneRecord(BaseModel):
    """What structured pruning did: the ratios, how importance was scored, the widths before and after."""

    model_config = ConfigDict(extra="allow")

    head_ratio: float = 0.0
    ffn_ratio: float = 0.0
    mode: str | None = None
    importance: str | None = None
    layer_shapes_before: list[dict] = Field(default_factory=list)  # per layer: heads, head_dim, ffn
    layer_shapes_after: list[dict] = Field(default_factory=list)


class DistillRecord(BaseModel):
    """Distillation (or a pruned model's healing against its teacher): how, how long, how well."""

    model_config = ConfigDict(extra="allow")

    mode: str | None = None
    steps: int | None = None
    history: list[EvalPoint] = Field(default_factory=list)


class CompressResult(Result):
    """``compress``: the model before and after, and what pruning and distillation did."""

    method: str
    metric: str | None = None
    before: ModelFacts
    after: ModelFacts
    size_mb: float | None = None
    prune: PruneRecord | None = None
    distill: DistillRecord | None = None
    keep_layers: list[int] | None = None  # distillation: the teacher layers the student started from

    def evaluated_metric(self) -> float | None:
        return self.after.dev


class AttachResult(Result):
    rank: int
    targets: list[str]
    learner_params: int
    linears: int
    total_params: int


class MergeResult(Result):
    how: str
    max_abs_diff: float | None = None
    atol: float | None = None
    params_before: int | None = None
    params_after: int | None = None
    plain_hf: bool = True


# --- export -----------------------------------------------------------------------------------------------


class Paired(BaseModel):
    """A variant against PyTorch on the same evaluation examples: the examples only one of them gets right and
    McNemar's exact p."""

    model_config = ConfigDict(extra="allow")

    examples: int
    only_pytorch_right: int
    only_variant_right: int
    p_value: float


class VariantScore(BaseModel):
    """A variant's metrics on the evaluation split; ``main`` is the one that decides."""

    model_config = ConfigDict(extra="allow")

    main: float
    by_batching: dict[str, float] | None = None  # dynamic int8: batch 1 and Predictor's batching; the worse decides
    decided_by: str | None = None
    paired_vs_pytorch: Paired | None = None


class VariantCheck(BaseModel):
    """One export variant as built and verified."""

    model_config = ConfigDict(extra="allow")

    passed: bool = False
    dev: VariantScore | None = None
    gap_points: float | None = None
    tolerance: float | None = None
    logit_tolerance: float | None = None
    error: str | None = None
    max_abs_diff: dict[str, float] | None = None
    size_mb: float | None = None
    file: str | None = None
    verified_on: str = "cpu"
    details: dict = Field(default_factory=dict)  # what the variant's builder recorded (its own keys)

    @property
    def reduce_range(self) -> bool | None:
        """int8: whether the weights use 7 bits (None: not an int8 variant, or built before it was recorded)."""
        return self.details.get("reduce_range")


class ExportResult(Result):
    """``export``: the fp32 ONNX file checked against PyTorch, and every variant built from it."""

    onnx: str = "model.onnx"
    opset: int | None = None
    size_mb: float | None = None
    max_abs_diff: dict[str, float] = Field(default_factory=dict)
    atol: float | None = None
    metric: str | None = None
    dev_pytorch: Metrics = Field(default_factory=Metrics)
    dev_onnx: Metrics = Field(default_factory=Metrics)
    dev_gap_points: float | None = None
    model_dir: str | None = None  # the exported checkpoint, relative to the run folder
    variants: dict[str, VariantCheck] = Field(default_factory=lambda: {"fp32": VariantCheck(passed=True)})

    def evaluated_metric(self) -> float | None:
        return self.dev_onnx.main


# --- ship and report --------------------------------------------------------------------------------------


class Candidate(BaseModel):
    """A variant as the ship rule saw it: verified (and where), its metric, size and latency at the ship shape."""

    model_config = ConfigDict(extra="allow")

    variant: str
    passed: bool
    provider: str | None = None
    verified_on: str = "cpu"
    dev: float | None = None
    gap_points: float | None = None
    tolerance: float | None = None
    size_mb: float | None = None
    error: str | None = None
    paired: Paired | None = None
    by_batching: dict[str, float] | None = None
    p50_ms: float | None = None


class ShipDecision(BaseModel):
    model_config = ConfigDict(extra="allow")

    rule: str
    shape: list[int]
    chosen: str | None = None
    provider: str | None = None
    why: str
    candidates: list[Candidate] = Field(default_factory=list)
    bundle: dict | None = None

    def shipped(self) -> Candidate | None:
        return next((c for c in self.candidates if c.variant == self.chosen), None)


class ShipResult(Result):
    """``ship``: the variant chosen by the stated rule and the deploy bundle written for it."""

    decision: ShipDecision | None = None

    def evaluated_metric(self) -> float | None:
        c = self.decision.shipped() if self.decision else None
        return c.dev if c else None


class ReportResult(Result):
    """``report``: the files published at the top of the run folder."""

    published: list[str] = Field(default_factory=list)
    ship: ShipDecision | None = None  # runs made before the ship stage existed chose in the report stage

    def evaluated_metric(self) -> float | None:
        c = self.ship.shipped() if self.ship else None
        return c.dev if c else None


RESULT_TYPES: dict[str, type[Result]] = {
    "finetune": TrainResult,
    "compress": CompressResult,
    "attach": AttachResult,
    "merge": MergeResult,
    "export": ExportResult,
    "benchmark": BenchmarkResult,
    "ship": ShipResult,
    "report": ReportResult,
}


def result_type(stage_type: str) -> type[Result]:
    return RESULT_TYPES.get(stage_type, Result)


def result_of(stage_type: str, summary: dict | Result | None) -> Result:
    """A stage's summary as its type's result (a result passes through)."""
    if isinstance(summary, Result):
        return summary
    if not summary:  # ``{}`` ship (nothing to choose from) in older reports
        summary = {}
    if stage_type == "report" and summary.get("ship") == {}:
        summary = {**summary, "ship": None}
    return result_type(stage_type).model_validate(summary)


class StageRecord(BaseModel):
    """A stage as the run's manifest records it, with its typed result."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    type: str
    status: str | None = None
    fingerprint: str | None = None
    output: str | None = None
    inputs: list[str] = Field(default_factory=list)
    wall_time_s: float | None = None
    peak_rss_mb: float | None = None
    reused_from: str | None = None
    result: Result | None = None  # None until the stage is done


def stage_records(run_dir: Path) -> dict[str, StageRecord]:
    """Every stage of the run in ``run_dir`` (manifest order), with typed results: the one way to read what
    another run's stages produced."""
    from ..manifest import Manifest

    out = {}
    for name, rec in Manifest.load(run_dir).stages.items():
        done = rec.get("status") == "done" and rec.get("summary") is not None
        out[name] = StageRecord(
            name=name,
            type=rec.get("type", ""),
            status=rec.get("status"),
            fingerprint=rec.get("fingerprint"),
            output=rec.get("output"),
            inputs=list(rec.get("inputs") or []),
            wall_time_s=rec.get("wall_time_s"),
            peak_rss_mb=rec.get("peak_rss_mb"),
            reused_from=rec.get("reused_from"),
            result=result_of(rec.get("type", ""), rec["summary"]) if done else None,
        )
    return out


def last_of(records, stage_type: str):
    """The last stage of ``stage_type`` (stage order) among ``records``: a name -> record dict, or a list of
    anything with a ``type`` (a stage's inputs)."""
    found = [r for r in (records.values() if isinstance(records, dict) else records) if r.type == stage_type]
    return found[-1] if found else None


def upstream(records: dict[str, StageRecord], name: str) -> set[str]:
    """Every stage whose output ``name`` was computed from (its inputs, their inputs, ...), as recorded."""
    out, todo = set(), [name]
    while todo:
        n = todo.pop()
        for i in records[n].inputs if n in records else []:
            if i not in out:
                out.add(i)
                todo.append(i)
    return out
