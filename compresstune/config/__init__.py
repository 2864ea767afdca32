"""Pipeline configs: YAML -> typed, validated per-stage configs.

sections.py holds the typed sections (task, one per stage type); loader.py reads a YAML
file, applies KEY=VALUE overrides and validates everything, reporting every problem at once
with its file and line; checks.py checks the files and model a config names."""

from .loader import load_config, parse_override, yaml_load  # noqa: F401
from .sections import STAGE_TYPES, PipelineConfig, StageConfig, TaskConfig, stage_types  # noqa: F401
