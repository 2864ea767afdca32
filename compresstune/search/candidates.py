"""Candidates: one point of the search space, and the ordinary pipeline file that trains it.

A candidate is a depth, three pruning ratios and an export variant. Its pipeline is the searched
file with the depth and ratios set (the distill stage dropped when the depth is the teacher's, the
prune stage dropped when every ratio is 0; later stages then read what those stages read), the
variant exported and shipped at the budget's shape, and a rung's settings on top."""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..config.sections import PipelineConfig

if TYPE_CHECKING:  # spec.py validates rungs with this module: only the type is needed here
    from .spec import SearchConfig

TEACHER_DEPTH = 10**6  # "the teacher's own depth" before the model is loaded (clipped to it then)


@dataclass(frozen=True)
class Candidate:
    layers: int
    head_ratio: float
    ffn_ratio: float
    hidden_ratio: float
    variant: str

    @property
    def id(self) -> str:
        r = "-".join(
            f"{k}{_pct(v)}" for k, v in (("h", self.head_ratio), ("f", self.ffn_ratio), ("x", self.hidden_ratio))
        )
        return f"L{self.layers}-{r}-{self.variant.replace('_', '')}"

    @property
    def prunes(self) -> bool:
        return self.head_ratio > 0 or self.ffn_ratio > 0 or self.hidden_ratio > 0

    def to_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}


def _pct(v: float) -> str:
    """A ratio as a percentage for ids: 0.5 -> "50", 0.125 -> "12p5" (distinct ratios, distinct ids)."""
    pct = round(v * 100, 4)
    return f"{int(pct):02d}" if pct == int(pct) else f"{pct:g}".replace(".", "p")


def enumerate_space(spec: SearchConfig, teacher_layers: int) -> list[Candidate]:
    """Every point of the space; depths are those of ``space.layers`` up to the teacher's."""
    depths = sorted({teacher_layers if d == TEACHER_DEPTH else d for d in spec.space.layers})
    return [
        Candidate(d, h, f, x, v)
        for d, h, f, x, v in itertools.product(
            depths, spec.space.head_ratio, spec.space.ffn_ratio, spec.space.hidden_ratio, spec.space.variant
        )
        if d <= teacher_layers
    ]


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` (keys may be dotted: ``tolerances.int8``) applied, nested dicts merged."""
    out = dict(base)
    for dotted, value in changes.items():
        key, _, rest = dotted.partition(".")
        if rest:
            out[key] = _merged(out.get(key) if isinstance(out.get(key), dict) else {}, {rest: value})
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def updated(section, changes: dict):
    """``section`` (a typed settings block) with ``changes`` (``key`` or ``nested.key``: value) applied and
    validated as the loader validates them."""
    return type(section).model_validate(_merged(section.model_dump(), changes)) if changes else section


def _model_input(stages: dict, name: str) -> str | None:
    """The stage ``name`` reads (its ``input``, else the one before it); None: the pipeline's model."""
    inp = stages[name].input
    if inp:
        return None if inp == "pretrained" else inp
    names = list(stages)
    i = names.index(name)
    return names[i - 1] if i > 0 else None


def _drop_stage(stages: dict, name: str) -> dict:
    """``stages`` without ``name``; stages that read it read what it read."""
    src = _model_input(stages, name) or "pretrained"
    out = {}
    for other, c in stages.items():
        if other != name:
            out[other] = updated(c, {"input": src}) if _model_input(stages, other) == name else c
    return out


def _stage_of_type(pcfg: PipelineConfig, t: str) -> str | None:
    """The last stage of type ``t`` (an earlier export may be the uncompressed reference's)."""
    return next((n for n, st in reversed(pcfg.stages.items()) if st.type == t), None)


def rung_changes(rung: dict | None) -> dict[str, dict]:
    """A rung's ``stage.key: value`` settings grouped per stage."""
    out: dict[str, dict] = {}
    for dotted, value in (rung or {}).items():
        stage, _, key = dotted.partition(".")
        out.setdefault(stage, {})[key] = value
    return out


def candidate_config(
    pcfg: PipelineConfig, spec: SearchConfig, cand: Candidate, teacher_layers: int, rung: dict | None = None
) -> PipelineConfig:
    """The pipeline that trains ``cand``, as a typed config derived from the searched one; ``rung``: a cheap
    rung's settings, else the full recipe. Raises pydantic's ValidationError for a setting its stage refuses."""
    stages, task = dict(pcfg.stages), pcfg.task
    if spec.holdout:  # every stage evaluates and chooses on held-out training examples; dev is scored after the search
        task = updated(task, {"holdout": spec.holdout})
    if spec.depth_stage:
        if cand.layers < teacher_layers:
            stages[spec.depth_stage] = updated(
                stages[spec.depth_stage], {"student_layers": cand.layers, "keep_layers": None}
            )
        else:
            stages = _drop_stage(stages, spec.depth_stage)
    if spec.prune_stage:
        if cand.prunes:
            p = {"head_ratio": cand.head_ratio, "ffn_ratio": cand.ffn_ratio, "hidden_ratio": cand.hidden_ratio}
            if cand.hidden_ratio > 0:
                p["hidden_weight"] = 0.0  # the hidden size changes: heal on logits (and attention) only
            stages[spec.prune_stage] = updated(stages[spec.prune_stage], p)
        else:
            stages = _drop_stage(stages, spec.prune_stage)
    export, bench, ship = (_stage_of_type(pcfg, t) for t in ("export", "benchmark", "ship"))
    shape = tuple(spec.budget.shape)
    # the candidate ships as its own variant: exported beside fp32 (the reference every variant is verified
    # against), and the only one the benchmark times (the ship stage chooses among timed variants only)
    e = {"variants": list(dict.fromkeys(["fp32", cand.variant]))}
    if spec.budget.size_mb is not None:
        # int8's label-agreement fallback keeps sensitive MatMuls float, which can push the file past a size
        # budget (measured: 14.0 -> 15.9 MB); under a size budget the file stays all int8 and the variant's
        # metric tolerance alone guards accuracy
        e["min_agreement"] = 0.0
    stages[export] = updated(stages[export], e)
    if bench and bench in stages:
        points = [tuple(p) for p in pcfg.stages[bench].points()]
        b = {"variants": [cand.variant]}
        if shape not in points:
            b["shapes"] = points + [shape]
        stages[bench] = updated(stages[bench], b)
    # the variant to ship: the smallest file when the budget is a size (int8 on real models is both); the bundle
    # is what the winner is re-timed on (and what a user ships)
    rule = "smallest" if spec.budget.size_mb is not None else "fastest"
    stages[ship] = updated(stages[ship], {"shape": shape, "rule": rule, "bundle": True})
    for stage, changes in rung_changes(rung).items():
        if stage in stages:  # a stage this candidate drops (distill at the teacher's depth) takes no settings
            stages[stage] = updated(stages[stage], changes)
    return dataclasses.replace(pcfg, task=task, stages=stages)


def write_pipeline(raw: dict, path: Path, header: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"# {ln}\n" for ln in header.splitlines()) + body, encoding="utf-8")
    os.replace(tmp, path)
    return path
