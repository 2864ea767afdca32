"""What every stage's settings have (its type and input), and the typed sizes several stage types share."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import AfterValidator, Field

from ..options import Section

Batch = Annotated[int, Field(gt=0, le=65536)]  # a batch size that fits in memory
SeqLen = Annotated[int, Field(gt=0, le=4096)]  # a sequence length (also checked against the model's positions)


def _each_once(items: list) -> list:
    repeated = sorted({repr(x) for i, x in enumerate(items) if x in items[:i]})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} listed more than once; list each once")
    return items


T = TypeVar("T")
# a list of choices (providers, variants, shapes): at least one, each once. An empty one would run nothing and
# fail later (or silently fall back); a repeated one would change a fingerprint and time the same thing twice
Choices = Annotated[list[T], Field(min_length=1), AfterValidator(_each_once)]


class StageConfig(Section):
    type: str = Field(..., description="stage type")
    input: str | None = Field(
        None,
        description="name of the stage whose output this stage reads "
        "(default: the previous stage; 'pretrained': the pipeline's model)",
    )
