"""Stage fingerprints: a short hash of what determines a stage's result.

A stage's fingerprint covers its settings that change its result (those marked
``fingerprint: False`` do not, and of the finetune section only the chosen method's own
options count), its stage type's code ``version`` (``Stage.version``), and its inputs'
fingerprints. A stage that reads the pipeline's model and task (``uses_model_and_task``)
also covers the model, task and seed settings and, by content (identity.py), the task's data
files and the model folder, plus $COMPRESSTUNE_GLUE_DIR when it picks the GLUE folder. Stages
that train or time also cover the device kind (cpu or cuda), and those that time the CPU's
instruction-set class (machine.py); ``bf16: auto`` and ``reduce_range: auto`` enter as what they
resolve to on this machine. A stage whose recorded
fingerprint matches is skipped; library versions are recorded but do not rerun anything."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..config.sections import PipelineConfig, method_option_fields
from ..machine import cpu_profile, int8_reduce_range, resolve_bf16
from ..options import Section
from .identity import ContentHashes, data_identity, device_kind, model_identity


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


TIMES = {"benchmark"}  # stage types that time their input: the device they ran on decides their result


def stage_fingerprints(cfg: PipelineConfig, stage_class, hashes: ContentHashes | None = None) -> dict[str, str]:
    """Every stage's fingerprint, in run order; ``stage_class(stage_type) -> Stage subclass``;
    ``hashes``: the content hashes of files (a run folder's cache), a fresh one by default."""
    hashes = hashes if hashes is not None else ContentHashes()
    classes = {name: stage_class(scfg.type) for name, scfg in cfg.stages.items()}
    reads = {}
    if any(c.uses_model_and_task for c in classes.values()):
        reads = {**data_identity(cfg.task, hashes), "model_content": model_identity(cfg, hashes)}
    fps: dict[str, str] = {}
    for name, scfg in cfg.stages.items():
        cls = classes[name]
        payload = {
            "type": scfg.type,
            "version": cls.version,
            "settings": fingerprint_fields(scfg),
            "inputs": [fps[i] for i in cfg.stage_inputs(name)],
        }
        payload["settings"].pop("input", None)
        _resolve_machine_settings(payload["settings"], device_kind(cfg.device))
        if cls.uses_model_and_task:
            payload.update(model=_model_name(cfg), task=_task_settings(cfg), seed=cfg.seed, **reads)
        if cls.uses_model_and_task or scfg.type in TIMES:
            payload["device"] = device_kind(cfg.device)
        if scfg.type in TIMES:  # a timing belongs to the CPU's instruction-set class, not only to "cpu"
            payload["isa"] = cpu_profile()["isa"]
        if getattr(scfg, "text_file", None):  # compress: unlabelled text for distillation, by content only
            p = Path(scfg.text_file)
            payload["settings"].pop("text_file", None)  # how the path is spelled (relative to which file) is moot
            payload["text_file_content"] = hashes.file(p if p.is_absolute() else cfg.base_dir / p)
        fps[name] = fingerprint(payload)
    return fps


def _resolve_machine_settings(settings: dict, device: str) -> None:
    """Settings whose ``auto`` depends on the machine enter as what they resolve to here (machine.py): ``bf16``
    as the precision used; ``reduce_range`` only when on (7-bit weights, the default), so that off names the 8-bit
    files that exports made before the setting existed wrote, with their fingerprints."""
    if "bf16" in settings:
        settings["bf16"] = resolve_bf16(settings["bf16"], device)
    if "reduce_range" in settings:
        if int8_reduce_range(settings["reduce_range"]):
            settings["reduce_range"] = True
        else:
            settings.pop("reduce_range")


def _model_name(cfg: PipelineConfig) -> str:
    """The model setting as it enters a fingerprint: a hub id or the packaged alias as written; a local folder
    not by its path (``model_content`` holds it by content), so the same folder named relative to another file
    (a search's candidate pipelines, a winner.yaml) or moved elsewhere keeps the fingerprints."""
    ref = Path(cfg.model).expanduser()
    if ref.is_absolute() or (cfg.base_dir / ref).exists():
        return "(local folder)"
    return cfg.model


def _task_settings(cfg: PipelineConfig) -> dict:
    """The task settings; ``holdout`` (added later) only when set, so runs without it keep their fingerprints."""
    task = cfg.task.model_dump()
    if task.get("holdout") is None:
        task.pop("holdout", None)
    return task
