"""The base of every typed settings block (pipeline sections, training options, method options)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Settings with defaults and help text; unknown keys are errors, assignments are validated, and no number may
    be NaN or infinite (every float setting also has a finite range of its own)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
