"""The ``task:`` section of a pipeline: which data (a GLUE task or the user's files), how it is read and cut."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..options import Section


class TaskConfig(Section):
    name: str = Field(
        "sst2",
        description="GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or 'custom' for your own files",
    )
    source: Literal["auto", "local", "hub"] = Field(
        "auto", description="GLUE from a local folder, the hub, or local when a folder is configured"
    )
    glue_dir: str | None = Field(
        None, description="local GLUE folder (standard layout); default $COMPRESSTUNE_GLUE_DIR"
    )
    train_file: str | None = Field(None, description="custom task: training file (.csv, .tsv or .jsonl)")
    dev_file: str | None = Field(None, description="custom task: dev file")
    text_columns: list[str] = Field(
        default_factory=lambda: ["text"], description="custom task: one or two text columns"
    )
    label_column: str = Field("label", description="custom task: label column")
    problem: Literal["classification", "regression"] = "classification"
    metric: Literal["accuracy", "f1", "mcc", "pearson", "spearman"] | None = Field(
        None, description="custom task: main metric"
    )
    labels: list[str] | None = Field(
        None, description="custom task: label names in id order (default: sorted training labels)"
    )
    max_length: int = Field(128, gt=0, le=4096, description="tokens per example after truncation")
    train_subset: int | None = Field(
        None, gt=0, le=10**9, description="a fixed random subset of the training set (seeded by `seed`)"
    )
    dev_subset: int | None = Field(
        None, gt=0, le=10**9, description="a fixed random subset of the dev set (for quick tests)"
    )
    holdout: int | None = Field(
        None,
        gt=0,
        le=10**9,
        description="hold out this many training examples (a fixed random slice, seeded by `seed`) and evaluate on "
        "them instead of the dev set: every metric, checkpoint choice and verification of the run; the dev set is "
        "not used (a search selects on them and scores only its winner on dev)",
    )

    @field_validator("name")
    @classmethod
    def _known_task(cls, v):
        from ..data.glue import GLUE_TASKS

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
            if self.label_column in self.text_columns:
                raise ValueError(
                    f"text_columns {self.text_columns} includes the label column {self.label_column!r}, so the model "
                    "would read the answer; give the text column(s) only"
                )
        return self
