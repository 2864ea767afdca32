"""Stage fingerprints: a short hash of what determines a stage's result.

A stage's fingerprint covers its settings that change its result (those marked
``fingerprint: False`` do not, and of the finetune section only the chosen method's own
options count), the pipeline's model, task and seed when the stage reads them, and its
inputs' fingerprints. A stage whose recorded fingerprint matches is skipped."""

from __future__ import annotations

import hashlib
import json

from ..config.sections import PipelineConfig, method_option_fields
from ..options import Section


def fingerprint(obj) -> str:
    """Stable short hash of JSON-able data."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint_fields(cfg: Section) -> dict:
    """The settings that change a stage's result."""
    data = cfg.model_dump()
    if (
        data.get("type") == "benchmark" and data.get("baseline") is None
    ):  # fields added later: keep older runs' fingerprints
        data.pop("baseline", None)
        data.pop("rounds", None)
    if data.get("type") == "finetune":
        own = method_option_fields()
        others = set().union(*own.values()) - own.get(data.get("method"), set())
        for k in others:
            data.pop(k, None)
    for name, f in type(cfg).model_fields.items():
        extra = f.json_schema_extra or {}
        if isinstance(extra, dict) and extra.get("fingerprint") is False:
            data.pop(name, None)
    return data


def stage_fingerprints(cfg: PipelineConfig, uses_model_and_task) -> dict[str, str]:
    """Every stage's fingerprint, in run order; ``uses_model_and_task(stage_type) -> bool``."""
    fps: dict[str, str] = {}
    for name, scfg in cfg.stages.items():
        payload = {
            "type": scfg.type,
            "settings": fingerprint_fields(scfg),
            "inputs": [fps[i] for i in cfg.stage_inputs(name)],
        }
        payload["settings"].pop("input", None)
        if uses_model_and_task(scfg.type):
            payload.update(model=cfg.model, task=cfg.task.model_dump(), seed=cfg.seed)
        fps[name] = fingerprint(payload)
    return fps
