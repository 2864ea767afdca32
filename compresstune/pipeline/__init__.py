"""Running a pipeline: the runner (runner.py: plan, skip, run, commit), stage fingerprints
(fingerprint.py, with what stages read identified by content in identity.py), the run lock and
stage-folder replacement by renames (atomic.py), and reuse of finished stages from other runs
(reuse.py). The run record itself, manifest.json, is written through compresstune/manifest.py."""

from .runner import downstream_of, fingerprints, run_dir_for, run_pipeline, run_status, stage_dirname  # noqa: F401
