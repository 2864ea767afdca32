"""Running a pipeline: the runner (runner.py: plan, skip, run, commit), stage fingerprints
(fingerprint.py) and reuse of finished stages from other runs (reuse.py). The run record
itself, manifest.json, is written through compresstune/manifest.py."""

from .runner import downstream_of, fingerprints, run_dir_for, run_pipeline, run_status, stage_dirname  # noqa: F401
