"""What a stage is, and what it is handed.

Stages talk only through files: a stage reads its inputs' output folders and writes
into its own temporary folder, which the pipeline renames into place on success."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from ..config.results import Result, result_of
from ..config.sections import PipelineConfig, StageConfig
from ..data.load import load_task
from ..data.task import TaskData

STAGES: dict[str, type[Stage]] = {}


def load_task_data(pipeline: PipelineConfig) -> TaskData:
    """The pipeline's task data, with the configured fixed subsets (seeded by the pipeline seed)."""
    return load_task(pipeline.task, pipeline.seed)


def register(cls):
    STAGES[cls.type] = cls
    return cls


@dataclass
class InputRef:
    """A finished stage this one reads: its folder and its typed result (config/results.py)."""

    name: str
    type: str
    dir: Path
    result: Result

    @classmethod
    def of(cls, name: str, stage_type: str, folder: Path, summary: dict | Result | None) -> InputRef:
        return cls(name, stage_type, folder, result_of(stage_type, summary))


@dataclass
class StageContext:
    name: str
    cfg: StageConfig
    pipeline: PipelineConfig
    run_dir: Path
    out_dir: Path  # temporary; renamed into place on success
    inputs: list[InputRef]
    log: Callable[[str], None] = print
    progress: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        if self.pipeline.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.pipeline.device

    @property
    def seed(self) -> int:
        s = getattr(self.cfg, "seed", None)
        return self.pipeline.seed if s is None else s  # seed 0 is a seed

    @cached_property
    def task(self) -> TaskData:
        if "task" not in self.extra:
            self.extra["task"] = load_task_data(self.pipeline)
        return self.extra["task"]

    def task_meta(self) -> dict:
        d = self.task
        return {
            "name": d.name,
            "num_labels": d.num_labels,
            "metric": d.metric,
            "is_regression": d.is_regression,
            "label_names": d.label_names,
            "max_length": self.pipeline.task.max_length,
        }

    def precision(self) -> dict:
        """The training precision this stage resolved (``bf16: auto`` -> what the device runs natively), said once
        in the log; recorded in the stage summary."""
        from ..machine import describe, profile, resolve_bf16

        setting = getattr(self.cfg, "bf16", False)
        bf16 = resolve_bf16(setting, self.device)
        p = profile()
        where = self.device if self.device.startswith("cuda") else describe(p)
        if p.get("torch_isa") and not self.device.startswith("cuda"):
            cap = ", ".join(f"{k}={v}" for k, v in p["torch_isa_capped_by"].items())
            where += f" (PyTorch capped to {p['torch_isa']} by {cap})"
        why = "" if setting != "auto" else (" (native on this device)" if bf16 else " (this device has no native bf16)")
        self.log(f"[{self.name}] precision: {'bf16 autocast' if bf16 else 'fp32'}{why}; bf16: {setting}; {where}")
        return {"bf16_setting": setting, "bf16": bf16, "precision": "bf16-autocast" if bf16 else "fp32"}

    def rel(self, path: Path) -> str:
        """``path`` relative to the run folder when it is inside it (summaries stay movable), else as is."""
        return str(path.relative_to(self.run_dir)) if path.is_relative_to(self.run_dir) else str(path)

    def input_of_kind(self, kind: str) -> InputRef | None:
        """The nearest input (searching back through inputs' own inputs) that produced ``kind`` ('model' or 'onnx')."""
        for ref in self.inputs:
            if kind == "model" and (ref.dir / "model" / "config.json").is_file():
                return ref
            if kind == "onnx" and (ref.dir / "model.onnx").is_file():
                return ref
        return None

    def require_input_model_dir(self, what: str) -> Path:
        """The input model folder, or a clear error naming what this stage needed it for."""
        mdir = self.input_model_dir()
        if mdir is None:
            from ..errors import UserError

            raise UserError(
                f"{self.name}: {what} needs a model from an earlier stage (finetune, compress, merge, ...); "
                "put one before it in `stages:`."
            )
        return mdir

    def input_model_dir(self) -> Path | None:
        ref = self.input_of_kind("model")
        if ref is not None:
            return ref.dir / "model"
        for ref in self.inputs:  # e.g. export -> its own model input, recorded in its result
            model_dir = getattr(ref.result, "model_dir", None)  # relative to the run folder
            if model_dir:
                return self.run_dir / model_dir
        return None


class Stage:
    """A pipeline step. ``run`` writes into ``ctx.out_dir`` and returns its result: a dict the runner validates
    as the stage type's result (config/results.py) and writes as summary.json."""

    type: str = ""
    uses_model_and_task = True  # fingerprint includes the pipeline's model and task
    version = 1  # in the fingerprint: bump when the meaning of the stage's settings or its output changes

    def run(self, ctx: StageContext) -> dict:  # pragma: no cover - interface
        raise NotImplementedError
