"""The one training-options type: read from a stage's config, handed to the training loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..machine import resolve_bf16
from ..options import Section


class TrainOptions(Section):
    """How a training stage trains. ``seed: None`` means the pipeline's seed (the stage resolves it)."""

    epochs: float = Field(3.0, gt=0, le=1000, description="epochs (fractional allowed)")
    max_steps: int | None = Field(
        None, gt=0, le=10**9, description="stop after this many optimizer steps (overrides epochs)"
    )
    lr: float = Field(2e-5, gt=0, lt=1, description="peak learning rate (AdamW)")
    batch_size: int = Field(32, gt=0, le=65536)
    eval_batch_size: int = Field(128, gt=0, le=65536)
    warmup_ratio: float = Field(
        0.06, ge=0, lt=1, description="linear warm-up share of the steps, then linear decay to 0"
    )
    weight_decay: float = Field(0.01, ge=0, le=10)
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="gradient clipping")
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="bf16 autocast for the forward pass (weights stay fp32); auto: where the device runs bf16 "
        "natively (CUDA with bf16, CPUs with AVX-512 BF16 or AMX), fp32 elsewhere",
    )
    eval_every_steps: int | None = Field(
        None, gt=0, le=10**9, description="also evaluate every N steps (always at each epoch end)"
    )
    checkpoint_every_steps: int = Field(
        200,
        gt=0,
        le=10**9,
        json_schema_extra={"fingerprint": False},
        description="save a resumable checkpoint every N steps (and at each epoch end)",
    )
    group_by_length: bool = Field(
        True, description="batch examples of similar length together (less padding, same randomness across epochs)"
    )
    select: Literal["best", "last"] = Field(
        "best", description="which weights the stage outputs: best dev metric or last step"
    )
    seed: int | None = Field(None, ge=0, lt=2**32, description="default: the pipeline seed")

    def train_options(self, seed: int, device: str = "cpu", **override) -> TrainOptions:
        """Only the training options of this (possibly larger) settings block, with the seed and the precision
        (``bf16: auto`` -> what ``device`` runs natively) resolved."""
        data = {k: getattr(self, k) for k in TrainOptions.model_fields}
        data["bf16"] = resolve_bf16(data["bf16"], device)
        return TrainOptions.model_construct(**{**data, "seed": seed, **override})
