"""The run record: ``exported/RUN/manifest.json``.

One entry per stage: type, fingerprint, status, output folder, summary, timings.
Written atomically after every change so a killed run leaves a readable record."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class Manifest:
    FILE = "manifest.json"

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.FILE
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"stages": {}}

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        return cls(run_dir)

    @property
    def stages(self) -> dict:
        return self.data.setdefault("stages", {})

    def set_run(self, **kw) -> None:
        self.data.update(kw)
        self.save()

    def update_stage(self, name: str, **kw) -> None:
        self.stages.setdefault(name, {}).update(kw)
        self.save()

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(self.path, self.data)

    def is_done(self, name: str, fp: str) -> bool:
        rec = self.stages.get(name)
        return (
            bool(rec)
            and rec.get("status") == "done"
            and rec.get("fingerprint") == fp
            and (self.run_dir / rec["output"]).is_dir()
        )
