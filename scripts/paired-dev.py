"""Two models on the same dev examples, paired: accuracy of each and McNemar's exact test on the examples where
exactly one of them is right. Each model is a deploy bundle or an export stage's folder (model.onnx, tokenizer/,
labels.json beside it); both run through the torch-free Predictor, one input per call.

    .venv/bin/python scripts/paired-dev.py exported/sst2-prune/02_teacher_export exported/sst2-prune/deploy \\
        --task sst2 --glue-dir ../shared/data/glue

Prints one JSON object: examples, accuracy of A and B, only_a_right, only_b_right, p_value."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from compresstune.data.glue import load_glue
from compresstune.deploy import Predictor
from compresstune.deploy.bundle import write_bundle
from compresstune.stages.export_check import mcnemar


def _bundle(path: Path, tmp: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    labels = json.loads((path / "labels.json").read_text())
    out = tmp / path.name
    write_bundle(out, path / "model.onnx", path / "tokenizer", labels, "card", compress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--glue-dir", default="../shared/data/glue")
    args = ap.parse_args()
    task = load_glue(args.task, "local", args.glue_dir)
    texts = [t if len(t) > 1 else t[0] for t in task.dev.texts]
    gold = np.array(task.dev.labels)
    with tempfile.TemporaryDirectory() as td:
        right = {}
        for key, path in (("a", args.a), ("b", args.b)):
            pred = Predictor(_bundle(path, Path(td)))
            ids = np.array([r["label_id"] for r in pred.predict(texts, batch_size=1, warn=False)])
            right[key] = ids == gold
    test = mcnemar(right["a"], right["b"])
    out = {
        "a": str(args.a),
        "b": str(args.b),
        "examples": test["examples"],
        "accuracy_a": round(100 * float(right["a"].mean()), 2),
        "accuracy_b": round(100 * float(right["b"].mean()), 2),
        "only_a_right": test["only_pytorch_right"],
        "only_b_right": test["only_variant_right"],
        "p_value": test["p_value"],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
