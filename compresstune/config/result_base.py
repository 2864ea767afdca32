"""The base of every stage result (config/results.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    """A stage's result: typed where others read it, extra keys kept as recorded."""

    model_config = ConfigDict(extra="allow")

    resources: dict | None = None  # wall time and peak memory, added by the runner

    def evaluated_metric(self) -> float | None:
        """The main metric the stage's output model reached on the evaluation split (dev, or the held-out
        training examples under ``task.holdout``); None for stages that measure none."""
        return None

    def dump(self) -> dict:
        """The result as summary.json holds it: nested results as dicts, engines as their keys; floats (NaN
        included) and numbers of other libraries as they are, for the JSON writer (manifest.write_json_atomic)."""
        return self.model_dump()
