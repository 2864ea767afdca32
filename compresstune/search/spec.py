"""The ``search:`` section of a pipeline file: budget, space, fidelity ladder.

The rest of the file is an ordinary pipeline: the full recipe a finalist gets. ``compresstune
pipeline run`` ignores the section; ``compresstune search`` reads both."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config.loader import Problems, apply_overrides, line_map, yaml_load
from ..config.sections import PipelineConfig
from ..errors import ConfigError
from ..options import Section

SPACE_VARIANTS = ("fp32", "optimized", "int8_dynamic", "fp16")


class Budget(Section):
    latency_ms: float | None = Field(None, gt=0, description="p50 latency at `shape`, in milliseconds")
    latency_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="p50 latency at `shape` as a fraction of the uncompressed model's PyTorch eager, timed back "
        "to back with each candidate on this machine (0.2 = five times faster)",
    )
    size_mb: float | None = Field(None, gt=0, description="size of the shipped ONNX file, MiB")
    shape: list[int] = Field([1, 128], description="batch x sequence length the latency budget is for")
    provider: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(2, gt=0, description="ONNX Runtime and PyTorch threads while timing")
    margin: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="a candidate enters training only when it is this share under the budget (timing noise; the "
        "trained model's int8 fallback may keep a MatMul float); the winner is held to the budget itself",
    )
    latency_table: str | None = Field(
        None,
        description="JSON written by `compresstune bench onnx` on the target device for the files "
        "`search --export-candidates DIR` wrote; latencies come from it instead of this machine",
    )

    @field_validator("shape")
    @classmethod
    def _shape(cls, v):
        if len(v) != 2 or min(v) < 1:
            raise ValueError("give [batch, sequence length], both >= 1")
        return v

    @model_validator(mode="after")
    def _some(self):
        if self.latency_ms is None and self.latency_fraction is None and self.size_mb is None:
            raise ValueError("give latency_ms, latency_fraction or size_mb (or several)")
        if self.latency_table and self.latency_fraction is not None:
            raise ValueError(
                "latency_fraction needs the uncompressed PyTorch model timed on the same machine; with a "
                "latency_table from another device give latency_ms"
            )
        return self


class Space(Section):
    layers: list[int] | None = Field(
        None, description="encoder depths to try (needs a distill stage; the teacher's own depth skips it)"
    )
    head_ratio: list[float] = Field([0.0], description="shares of attention heads removed")
    ffn_ratio: list[float] = Field([0.0], description="shares of FFN neurons removed")
    hidden_ratio: list[float] = Field([0.0], description="shares of the hidden size removed")
    variant: list[str] = Field(["int8_dynamic"], description="export variant a candidate ships as")

    @field_validator("head_ratio", "ffn_ratio", "hidden_ratio")
    @classmethod
    def _ratios(cls, v):
        if not v or any(not 0 <= r < 1 for r in v):
            raise ValueError("ratios lie in [0, 1); give at least one")
        return sorted(set(v))

    @field_validator("variant")
    @classmethod
    def _variants(cls, v):
        bad = [x for x in v if x not in SPACE_VARIANTS]
        if not v or bad:
            raise ValueError(f"variants {bad} are not searchable; use {', '.join(SPACE_VARIANTS)}")
        return list(dict.fromkeys(v))

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        if v is not None and (not v or min(v) < 1):
            raise ValueError("depths are >= 1")
        return sorted(set(v)) if v else v


class Ladder(Section):
    rungs: list[dict[str, Any]] = Field(
        [], description="settings (KEY: VALUE, as on the command line) of each cheap rung, cheapest first"
    )
    keep: float = Field(0.5, gt=0, le=1, description="share of a rung's candidates that go on to the next")
    max_candidates: int = Field(8, gt=0, description="candidates that enter the first rung")
    finalists: int = Field(2, gt=0, description="candidates that get the full recipe")


class SearchConfig(Section):
    budget: Budget
    space: Space = Field(default_factory=Space)
    ladder: Ladder = Field(default_factory=Ladder)
    depth_stage: str | None = Field(None, description="the distill stage whose depth `space.layers` sets")
    prune_stage: str | None = Field(None, description="the prune stage whose ratios the space sets")
    time_limit_min: float = Field(120.0, gt=0, description="no new candidate run starts after this")
    timing_iters: int = Field(60, ge=10, description="calls per engine when timing a candidate")
    reuse_from: list[str] = Field(
        [],
        description="run folders whose finished stages candidates may take, or other searches' folders (their runs "
        "and, when timed on this machine, their latency tables)",
    )


class SearchProblem(ConfigError):
    pass


def _stage_of(pcfg: PipelineConfig, given: str | None, method: str, key: str, src: str) -> str | None:
    if given is not None:
        st = pcfg.stages.get(given)
        if st is None or st.type != "compress" or st.method != method:
            raise SearchProblem(src, [f"search.{key}: {given!r} is not a compress stage with method {method}."])
        return given
    found = [n for n, s in pcfg.stages.items() if s.type == "compress" and s.method == method]
    if len(found) > 1:
        raise SearchProblem(src, [f"search.{key}: the pipeline has several {method} stages {found}; name one."])
    return found[0] if found else None


def _check_structure(s: SearchConfig, pcfg: PipelineConfig, src: str) -> SearchConfig:
    s.depth_stage = _stage_of(pcfg, s.depth_stage, "distill", "depth_stage", src)
    s.prune_stage = _stage_of(pcfg, s.prune_stage, "prune", "prune_stage", src)
    problems = []
    if s.space.layers and not s.depth_stage:
        problems.append("search.space.layers: the pipeline has no distill stage to set the depth of; add one.")
    widths = any(v != [0.0] for v in (s.space.head_ratio, s.space.ffn_ratio, s.space.hidden_ratio))
    if widths and not s.prune_stage:
        problems.append("search.space: ratios need a compress stage with method prune in the pipeline; add one.")
    if s.prune_stage:
        p = pcfg.stages[s.prune_stage]
        if p.mode != "uniform" or p.target != "ratio":
            problems.append(
                f"{s.prune_stage}: search needs mode: uniform and target: ratio (latency depends on the widths, "
                "which then follow from the ratios alone)."
            )
    exports = [n for n, st in pcfg.stages.items() if st.type == "export"]
    if not exports or not any(st.type == "report" for st in pcfg.stages.values()):
        problems.append("stages: a searched pipeline ends in export ... report (the finalists ship a bundle).")
    if problems:
        raise SearchProblem(src, problems)
    return s


def load_search(path: str | Path, overrides=()) -> tuple[dict, SearchConfig, PipelineConfig]:
    """(the file's raw pipeline dict with overrides applied, the search section, the validated pipeline).
    ``overrides``: KEY=VALUE; keys under ``search.`` set the search section."""
    path = Path(path)
    src = str(path)
    pcfg = _load_pipeline(path, [o for o in overrides if not o.startswith("search.")])
    text = path.read_text(encoding="utf-8")
    problems = Problems(line_map(text))
    raw = apply_overrides(yaml_load(text) or {}, overrides, problems)
    if problems.items:
        raise SearchProblem(src, problems.items)
    if not isinstance(raw.get("search"), dict):
        raise SearchProblem(src, ["search: missing; add a search section (budget, space, ladder). See README: search."])
    try:
        s = SearchConfig.model_validate(raw["search"])
    except ValidationError as exc:
        msgs = [
            f"{problems.where(('search', *e['loc']))}search.{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors()
        ]
        raise SearchProblem(src, msgs) from None
    return raw, _check_structure(s, pcfg, src), pcfg


def _load_pipeline(path: Path, overrides) -> PipelineConfig:
    from ..config import load_config

    return load_config(path, overrides)


def one_point_examples(dev_size: int) -> float:
    """How many dev examples a 1-point accuracy difference is."""
    return dev_size / 100.0


def advancing(n: int, keep: float) -> int:
    return max(1, math.ceil(n * keep))
