"""Candidates: one point of the search space, and the ordinary pipeline file that trains it.

A candidate is a depth, three pruning ratios and an export variant. Its pipeline is the searched
file with the depth and ratios set (the distill stage dropped when the depth is the teacher's, the
prune stage dropped when every ratio is 0; later stages then read what those stages read), the
variant exported and shipped at the budget's shape, and a rung's settings on top."""

from __future__ import annotations

import copy
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


def _resolved_input(raw: dict, stages: list[str], name: str) -> str | None:
    inp = (raw.get(name) or {}).get("input")
    if inp:
        return inp
    i = stages.index(name)
    return stages[i - 1] if i > 0 else None


def _drop_stage(raw: dict, name: str) -> None:
    """Remove ``name`` from the pipeline; stages that read it read what it read."""
    stages = list(raw["stages"])
    src = _resolved_input(raw, stages, name) or "pretrained"
    for other in stages[stages.index(name) + 1 :]:
        if _resolved_input(raw, stages, other) == name:
            raw[other] = {**(raw.get(other) or {}), "input": src}
    stages.remove(name)
    raw["stages"] = stages


def _set(raw: dict, dotted: str, value) -> None:
    """A rung's ``section.key: value`` (the value already typed by YAML)."""
    keys, node = dotted.split("."), raw
    for k in keys[:-1]:
        if node.get(k) is None:  # absent, or an empty section (`export:`)
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def _stage_of_type(pcfg: PipelineConfig, t: str) -> str | None:
    """The last stage of type ``t`` (an earlier export may be the uncompressed reference's)."""
    return next((n for n, st in reversed(pcfg.stages.items()) if st.type == t), None)


def candidate_pipeline(
    raw: dict, pcfg: PipelineConfig, spec: SearchConfig, cand: Candidate, teacher_layers: int, rung: dict | None = None
) -> dict:
    """The pipeline (as a dict) that trains ``cand``; ``rung``: a cheap rung's settings, else the full recipe."""
    out = copy.deepcopy({k: v for k, v in raw.items() if k != "search"})
    if spec.holdout:  # every stage evaluates and chooses on held-out training examples; dev is scored after the search
        out["task"] = {**(out.get("task") or {}), "holdout": spec.holdout}
    if spec.depth_stage:
        if cand.layers < teacher_layers:
            out[spec.depth_stage] = {**out[spec.depth_stage], "student_layers": cand.layers, "keep_layers": None}
        else:
            _drop_stage(out, spec.depth_stage)
    if spec.prune_stage:
        if cand.prunes:
            p = {
                **out[spec.prune_stage],
                "head_ratio": cand.head_ratio,
                "ffn_ratio": cand.ffn_ratio,
                "hidden_ratio": cand.hidden_ratio,
            }
            if cand.hidden_ratio > 0:
                p["hidden_weight"] = 0.0  # the hidden size changes: heal on logits (and attention) only
            out[spec.prune_stage] = p
        else:
            _drop_stage(out, spec.prune_stage)
    export, bench, report = (_stage_of_type(pcfg, t) for t in ("export", "benchmark", "report"))
    shape = list(spec.budget.shape)
    # the candidate ships as its own variant: exported beside fp32 (the reference every variant is verified
    # against), and the only one the benchmark times (the report ships among timed variants only)
    out[export] = {**(out.get(export) or {}), "variants": list(dict.fromkeys(["fp32", cand.variant]))}
    if spec.budget.size_mb is not None:
        # int8's label-agreement fallback keeps sensitive MatMuls float, which can push the file past a size
        # budget (measured: 14.0 -> 15.9 MB); under a size budget the file stays all int8 and the variant's
        # dev-metric tolerance alone guards accuracy
        out[export]["min_agreement"] = 0.0
    if bench and bench in out["stages"]:
        points = [list(p) for p in pcfg.stages[bench].points()]
        b = {**(out.get(bench) or {}), "variants": [cand.variant]}
        if shape not in points:
            b["shapes"] = points + [shape]
        out[bench] = b
    # the variant to ship: the smallest file when the budget is a size (int8 on real models is both)
    rule = "smallest" if spec.budget.size_mb is not None else "fastest"
    # the bundle is what the winner is re-timed on (and what a user ships)
    out[report] = {**(out.get(report) or {}), "ship_shape": shape, "ship_rule": rule, "bundle": True}
    for key, value in (rung or {}).items():
        _set(out, key, value)
    return out


def relocate_paths(raw: dict, from_dir: Path, to_dir: Path) -> dict:
    """Relative file paths of ``raw`` (written for ``from_dir``) rewritten for a file in ``to_dir``."""
    out = copy.deepcopy(raw)

    def fix(node: dict, key: str) -> None:
        v = node.get(key)
        if isinstance(v, str) and v and not os.path.isabs(v) and (from_dir / v).exists():
            node[key] = os.path.relpath((from_dir / v).resolve(), to_dir.resolve())

    task = out.get("task") or {}
    for key in ("glue_dir", "train_file", "dev_file"):
        fix(task, key)
    fix(out, "model")
    for name in out.get("stages", []):
        if isinstance(out.get(name), dict):
            fix(out[name], "text_file")
    return out


def write_pipeline(raw: dict, path: Path, header: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"# {ln}\n" for ln in header.splitlines()) + body, encoding="utf-8")
    os.replace(tmp, path)
    return path
