"""The benchmark stage's typed result: engines (what was timed), latency rows, per-variant points with their
speed-ups, the references and the back-to-back comparison against the baseline. Part of config/results.py.

Engines are a typed :class:`Engine` (runtime, provider, variant, role); their JSON form is the short key used in
tables and plots (``ort-cpu:int8_dynamic``, ``baseline:torch-cpu``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from .result_base import Result

# --- engines ----------------------------------------------------------------------------------------------


class Engine(BaseModel):
    """One thing the benchmark times: ONNX Runtime or PyTorch eager, on a provider, a variant of the export, of
    this model or of the uncompressed baseline."""

    model_config = ConfigDict(frozen=True)

    runtime: Literal["ort", "torch"]
    provider: str
    variant: str = "fp32"
    role: Literal["model", "baseline"] = "model"

    @property
    def key(self) -> str:
        pre = "baseline:" if self.role == "baseline" else ""
        return f"{pre}{self.runtime}-{self.provider}" + ("" if self.variant == "fp32" else f":{self.variant}")

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, key: str | Engine | dict) -> Engine:
        if isinstance(key, (Engine, dict)):
            return cls.model_validate(key)
        role, rest = ("baseline", key[len("baseline:") :]) if key.startswith("baseline:") else ("model", key)
        head, _, variant = rest.partition(":")
        runtime, _, provider = head.partition("-")
        return cls(runtime=runtime, provider=provider, variant=variant or "fp32", role=role)


EngineKey = Annotated[Engine, BeforeValidator(Engine.parse), PlainSerializer(lambda e: e.key, return_type=str)]


def shape_key(shape) -> str:
    """'1x128' for (1, 128): how a (batch, seq) point is keyed in results."""
    return f"{shape[0]}x{shape[1]}"


# --- benchmark --------------------------------------------------------------------------------------------


class LatencyRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    engine: EngineKey
    batch: int
    seq: int
    p50_ms: float
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput_seq_s: float | None = None


class Point(BaseModel):
    """A variant's latency at one (batch, seq), with its speed-ups against the references."""

    model_config = ConfigDict(extra="allow")

    p50_ms: float
    p90_ms: float | None = None
    p99_ms: float | None = None
    speedup_vs_pytorch_eager: float | None = None
    speedup_vs_onnx_fp32: float | None = None


class VariantTiming(BaseModel):
    model_config = ConfigDict(extra="allow")

    engine: EngineKey
    provider: str
    file: str | None = None
    size_mb: float | None = None
    footprint: dict | None = None
    points: dict[str, Point] = Field(default_factory=dict)

    def at(self, shape) -> Point | None:
        return self.points.get(shape_key(shape))


class References(BaseModel):
    """What speed-ups are against: PyTorch eager and fp32 ONNX of the baseline (or of this model)."""

    pytorch_eager: EngineKey | None = None
    onnx_fp32: EngineKey | None = None
    of: str = "this model"


class ComparisonRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    engine: EngineKey
    batch: int
    seq: int
    p50_ms: float
    baseline_p50_ms: float
    speedup: float


class Comparison(BaseModel):
    model_config = ConfigDict(extra="allow")

    baseline: str
    baseline_onnx: str
    rounds: int
    rows: list[ComparisonRow]
    onnx_mb: float
    baseline_onnx_mb: float


class BenchmarkResult(Result):
    """``benchmark``: every engine's latency rows, the per-variant table on the provider that decides, and the
    back-to-back comparison against the baseline."""

    onnx: str | None = None
    providers: list[str] = Field(default_factory=lambda: ["cpu"])
    active_providers: dict[str, list[str]] = Field(default_factory=dict)
    threads: int | None = None
    iters: int | None = None
    rounds: int | None = None
    rows: list[LatencyRow] = Field(default_factory=list)
    machine: dict = Field(default_factory=dict)
    versions: dict = Field(default_factory=dict)
    provider: str = "cpu"  # the provider whose timings decide the ship rule
    references: References = Field(default_factory=References)
    variants: dict[str, VariantTiming] = Field(default_factory=dict)
    variants_other_providers: dict[str, dict[str, VariantTiming]] = Field(default_factory=dict)
    comparison: Comparison | None = None

    def p50(self, engine: Engine | None, shape) -> float | None:
        """The p50 of ``engine`` at ``shape`` (batch, seq), if it was timed there."""
        for r in self.rows:
            if engine is not None and r.engine == engine and (r.batch, r.seq) == tuple(shape):
                return r.p50_ms
        return None
