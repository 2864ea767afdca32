"""Pipeline configs: YAML -> typed, validated per-stage configs, and every check before any work.

sections.py holds the typed sections (task, one per stage type); loader.py reads a YAML
file, applies KEY=VALUE overrides and validates everything, reporting every problem at once
with its file and line; checks.py checks the files and model a config names; rules.py the
settings that only make sense together. preflight.py (with model_checks.py) adds what needs the
data, the model, the machine and the run folder: `pipeline validate` and `pipeline run` (before
its first stage) run it, so every problem is reported at once before any work."""

from .loader import load_config, parse_override, yaml_load  # noqa: F401
from .sections import PipelineConfig, StageConfig, TaskConfig, stage_types  # noqa: F401
