"""Settings of the two closing stages: ``ship`` (the rule, the bundle) and ``report``. Part of sections.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .stage_base import Batch, SeqLen, StageConfig


class ShipConfig(StageConfig):
    """``ship``: the variant to ship, chosen by a stated rule among the verified and timed ones, and its deploy
    bundle (vocabulary trim and edge packaging included)."""

    type: Literal["ship"] = "ship"
    shape: tuple[Batch, SeqLen] = Field(
        (1, 128), description="(batch, seq) at which the shipped variant is chosen; the benchmark must time it"
    )
    rule: Literal["fastest", "smallest", "most_accurate"] = Field(
        "fastest",
        description="among the variants that passed verification: lowest p50 at shape, fewest bytes, or highest metric",
    )
    bundle: bool = Field(True, description="write the deploy bundle (published as exported/RUN/deploy/)")
    edge: bool = Field(True, description="also an ORT-format model and its operator config in deploy/edge/")
    trim_vocab: bool = Field(
        False,
        description="cut the bundle's vocabulary to the word pieces of the task's training text plus special tokens "
        "(smaller embedding table); verified on the evaluation split, kept untrimmed when the check fails",
    )
    trim_min_agreement: float = Field(
        0.99, gt=0, le=1, description="trim_vocab: least share of labels equal to the untrimmed bundle's"
    )
    fixed_shape: tuple[Batch, SeqLen] | None = Field(
        None,
        description="also a fixed-shape (batch, seq) copy in deploy/edge/ for accelerators that need static shapes",
    )


# report keys of the time the report stage also shipped -> the ship stage's key
MOVED_TO_SHIP = {
    "ship_shape": "shape",
    "ship_rule": "rule",
    "bundle": "bundle",
    "edge": "edge",
    "trim_vocab": "trim_vocab",
    "trim_min_agreement": "trim_min_agreement",
    "fixed_shape": "fixed_shape",
}


class ReportConfig(StageConfig):
    """``report``: REPORT.md, report.json and the plots for the whole run; publishes the deployable files."""

    type: Literal["report"] = "report"

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        if isinstance(data, dict):
            moved = [k for k in data if k in MOVED_TO_SHIP]
            if moved:
                keys = ", ".join(f"{k} -> ship.{MOVED_TO_SHIP[k]}" for k in moved)
                raise ValueError(
                    f"the ship rule and the deploy bundle moved to their own stage ({keys}): add `ship` before "
                    "`report` in `stages:` and write these settings under `ship:`"
                )
        return data
