"""What every stage's settings have (its type and input), and the typed sizes several stage types share."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..options import Section

Batch = Annotated[int, Field(gt=0, le=65536)]  # a batch size that fits in memory
SeqLen = Annotated[int, Field(gt=0, le=4096)]  # a sequence length (also checked against the model's positions)


class StageConfig(Section):
    type: str = Field(..., description="stage type")
    input: str | None = Field(
        None,
        description="name of the stage whose output this stage reads "
        "(default: the previous stage; 'pretrained': the pipeline's model)",
    )
