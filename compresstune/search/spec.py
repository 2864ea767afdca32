"""The ``search:`` section of a pipeline file: budget, space, fidelity ladder.

The rest of the file is an ordinary pipeline: the full recipe a finalist gets. ``compresstune
pipeline run`` ignores the section; ``compresstune search`` reads both."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config.loader import Problems, apply_overrides, line_map, validate_section, yaml_load
from ..config.sections import PipelineConfig
from ..errors import ConfigError
from ..export.variants import searchable_variants
from ..options import Section
from .candidates import TEACHER_DEPTH, Candidate, candidate_config


class Budget(Section):
    latency_ms: float | None = Field(None, gt=0, le=1e7, description="p50 latency at `shape`, in milliseconds")
    latency_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="p50 latency at `shape` as a fraction of the uncompressed model's PyTorch eager, timed back "
        "to back with each candidate on this machine (0.2 = five times faster)",
    )
    size_mb: float | None = Field(None, gt=0, le=1e7, description="size of the shipped ONNX file, MiB")
    shape: list[Annotated[int, Field(gt=0, le=65536)]] = Field(
        [1, 128], description="batch x sequence length the latency budget is for"
    )
    provider: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(2, gt=0, le=1024, description="ONNX Runtime and PyTorch threads while timing")
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
                "latency_fraction needs the uncompressed PyTorch model timed on this machine; with a latency_table "
                "from another device give latency_ms and set search.budget.latency_fraction=null"
            )
        return self


class Space(Section):
    layers: list[int] | None = Field(
        None,
        description="encoder depths to try (needs a distill stage; a depth of the teacher's own skips it); a "
        "dimension left out keeps the recipe's own value",
    )
    head_ratio: list[float] | None = Field(None, description="shares of attention heads removed")
    ffn_ratio: list[float] | None = Field(None, description="shares of FFN neurons removed")
    hidden_ratio: list[float] | None = Field(None, description="shares of the hidden size removed")
    variant: list[str] = Field(["int8_dynamic"], description="export variant a candidate ships as")

    @field_validator("head_ratio", "ffn_ratio", "hidden_ratio")
    @classmethod
    def _ratios(cls, v):
        if v is not None and (not v or any(not 0 <= r < 1 for r in v)):
            raise ValueError("ratios lie in [0, 1); give at least one")
        return sorted(set(v)) if v is not None else v

    @field_validator("variant")
    @classmethod
    def _variants(cls, v):
        allowed = searchable_variants()
        bad = [x for x in v if x not in allowed]
        if not v or bad:
            raise ValueError(f"variants {bad} are not searchable; use {', '.join(allowed)}")
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
    max_candidates: int = Field(8, gt=0, le=10**4, description="candidates that enter the first rung")
    finalists: int = Field(2, gt=0, le=10**4, description="candidates that get the full recipe")


class SearchConfig(Section):
    budget: Budget
    space: Space = Field(default_factory=Space)
    ladder: Ladder = Field(default_factory=Ladder)
    depth_stage: str | None = Field(None, description="the distill stage whose depth `space.layers` sets")
    prune_stage: str | None = Field(None, description="the prune stage whose ratios the space sets")
    time_limit_min: float = Field(120.0, gt=0, le=10**6, description="no new candidate run starts after this")
    timing_iters: int = Field(60, ge=10, le=10**6, description="calls per engine when timing a candidate")
    reuse_from: list[str] = Field(
        [],
        description="run folders whose finished stages candidates may take, or other searches' folders (their runs "
        "and, when timed on this machine, their latency tables)",
    )
    holdout: int | None = Field(
        None,
        gt=0,
        le=10**9,
        description="select on this many training examples held out of every candidate's training (task.holdout) "
        "instead of the dev set; the winner's bundle is scored on the dev set once, after the choice",
    )


def selection_holdout(spec: SearchConfig, pcfg: PipelineConfig) -> int | None:
    """How many held-out training examples the search selects on (``search.holdout``, or the pipeline's own
    ``task.holdout``); None: the dev set selects."""
    return spec.holdout or pcfg.task.holdout


def selects_on(holdout: int | None) -> str:
    """The selection set as the search's log, report and plot name it."""
    return "held-out" if holdout else "dev"


class SearchProblem(ConfigError):
    pass


def _stage_of(pcfg: PipelineConfig, given: str | None, method: str, key: str, src: str) -> str | None:
    if given is not None:
        st = pcfg.stages.get(given)
        if st is None or st.type != "compress" or st.method != method:
            raise SearchProblem(src, [f"search.{key}: {given!r} is not a compress stage with method {method}."])
        return given
    found = [n for n, sc in pcfg.stages.items() if sc.type == "compress" and sc.method == method]
    if len(found) > 1:
        raise SearchProblem(src, [f"search.{key}: the pipeline has several {method} stages {found}; name one."])
    return found[0] if found else None


def _fill_space(spec: SearchConfig, pcfg: PipelineConfig) -> None:
    """Dimensions the space leaves out keep the recipe's own values (no stage is dropped by omission)."""
    sp = spec.space
    if sp.layers is None:
        d = pcfg.stages[spec.depth_stage] if spec.depth_stage else None
        sp.layers = [len(d.keep_layers) if d.keep_layers else d.student_layers] if d else [TEACHER_DEPTH]
    p = pcfg.stages[spec.prune_stage] if spec.prune_stage else None
    for name in ("head_ratio", "ffn_ratio", "hidden_ratio"):
        if getattr(sp, name) is None:
            setattr(sp, name, [getattr(p, name)] if p else [0.0])


def _check_structure(spec: SearchConfig, pcfg: PipelineConfig, src: str) -> SearchConfig:
    spec.depth_stage = _stage_of(pcfg, spec.depth_stage, "distill", "depth_stage", src)
    spec.prune_stage = _stage_of(pcfg, spec.prune_stage, "prune", "prune_stage", src)
    problems = []
    if spec.space.layers and not spec.depth_stage:
        problems.append("search.space.layers: the pipeline has no distill stage to set the depth of; add one.")
    given = [v for v in (spec.space.head_ratio, spec.space.ffn_ratio, spec.space.hidden_ratio) if v is not None]
    if any(v != [0.0] for v in given) and not spec.prune_stage:
        problems.append("search.space: ratios need a compress stage with method prune in the pipeline; add one.")
    if spec.prune_stage:
        p = pcfg.stages[spec.prune_stage]
        if p.mode != "uniform" or p.target != "ratio":
            problems.append(
                f"{spec.prune_stage}: search needs mode: uniform and target: ratio (latency depends on the widths, "
                "which then follow from the ratios alone)."
            )
    types = [st.type for st in pcfg.stages.values()]
    if "export" not in types or "benchmark" not in types or "ship" not in types:
        problems.append(
            "stages: a searched pipeline ends in export, benchmark and ship (a finalist ships the bundle the "
            "ship stage writes, of the variant the benchmark timed)."
        )
    problems += _budget_length_problems(spec, pcfg)
    if problems:
        raise SearchProblem(src, problems)
    _fill_space(spec, pcfg)
    return spec


def _budget_length_problems(spec: SearchConfig, pcfg: PipelineConfig) -> list[str]:
    """The budget's sequence length fits the model's position embeddings (config.json)."""
    from ..models.resolve import load_model_config, resolve_model_path

    try:
        positions = int(
            getattr(load_model_config(resolve_model_path(pcfg.model, pcfg.base_dir)), "max_position_embeddings", 0) or 0
        )
    except Exception:  # noqa: BLE001 - the pipeline's own checks report an unreadable model
        return []
    seq = spec.budget.shape[1]
    if positions and seq > positions:
        return [
            f"search.budget.shape: sequence length {seq} is longer than the model's {positions} position embeddings; "
            f"use at most {positions} (the latency would be timed on inputs the model cannot take)."
        ]
    return []


def check_rungs(spec: SearchConfig, pcfg: PipelineConfig, src: str) -> None:
    """Each rung's settings on a candidate that keeps every stage, validated now as the loader validates a file
    (a typo would otherwise surface in the first candidate's run)."""
    from ..config.checks import portable_dict
    from ..config.loader import config_from_dict

    cand = Candidate(min(spec.space.layers), 0.25, 0.25, 0.0, spec.space.variant[0])
    problems = []
    for k, rung in enumerate(spec.ladder.rungs):
        bad = [key for key in rung if len(key.split(".")) < 2 or key.split(".")[0] not in pcfg.stages]
        if bad:
            problems.append(
                f"search.ladder.rungs[{k}]: {bad} do not name a stage's setting (stage.key); "
                f"the stages are {', '.join(pcfg.stages)}."
            )
            continue
        try:
            out = candidate_config(pcfg, spec, cand, TEACHER_DEPTH, rung)
            config_from_dict(portable_dict(out, pcfg.base_dir), source=src, base_dir=pcfg.base_dir, check_files=False)
        except ValidationError as exc:
            problems += [
                f"search.ladder.rungs[{k}]: {'.'.join(map(str, e['loc'])) or 'setting'}: {e['msg']}"
                for e in exc.errors()
            ]
        except ConfigError as exc:
            problems += [f"search.ladder.rungs[{k}]: {p}" for p in exc.problems]
    if problems:
        raise SearchProblem(src, problems)


def load_search(path: str | Path, overrides=()) -> tuple[SearchConfig, PipelineConfig]:
    """(the search section, the validated pipeline).
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
        what = "missing" if raw.get("search") is None else f"not a mapping of settings (got {raw['search']!r:.40})"
        raise SearchProblem(src, [f"search: {what}; add a search section (budget, space, ladder). See docs/SEARCH.md."])
    spec = validate_section(SearchConfig, raw["search"], ("search",), problems)  # the pipeline's messages
    if spec is None:
        raise SearchProblem(src, problems.items)
    spec = _check_structure(spec, pcfg, src)
    check_rungs(spec, pcfg, src)
    return spec, pcfg


def _load_pipeline(path: Path, overrides) -> PipelineConfig:
    from ..config import load_config

    return load_config(path, overrides)


def advancing(n: int, keep: float) -> int:
    """How many of ``n`` go on to the next rung: the ``keep`` share rounded up, at least one (rounded to 9
    places first, so 100 x 0.07 is 7, not the 8 that float arithmetic would give)."""
    return max(1, math.ceil(round(n * keep, 9)))
