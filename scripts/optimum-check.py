#!/usr/bin/env python
"""Does Hugging Face Optimum load a compresstune deploy bundle (issue 20's Hugging Face layout) as it is?

Optimum caps transformers below what compresstune needs, so it runs from its own environment, never the
project's .venv:

    python -m venv /work/optimum-env
    /work/optimum-env/bin/pip install torch==2.13.0          # the CPU build first, pinned
    /work/optimum-env/bin/pip install optimum-onnx onnxruntime
    /work/optimum-env/bin/python scripts/optimum-check.py BUNDLE ../shared/data/glue/SST-2/dev.tsv \
        --predictor-python .venv/bin/python

BUNDLE is a deploy folder (config.json with a "compresstune" section, tokenizer files, onnx/model*.onnx); the
TSV has a header line and the sentence in its first column (no quote handling). The first --n rows (200) are
classified with ``ORTModelForSequenceClassification.from_pretrained`` + ``AutoTokenizer.from_pretrained`` +
``transformers.pipeline("text-classification", ...)``, one input at a time. The loader is tried first with no
subfolder/file_name (does Optimum find onnx/ by itself?), then with the ones the bundle's config names. A
602-token input is run with truncation=True (and without, to record what happens). With --predictor-python, the
same rows go through compresstune's Predictor (batch_size=1) in that interpreter and the labels and logits are
compared. Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LONG_WORDS = 600  # "good" x 600: 600 word pieces + [CLS] + [SEP] = 602 tokens


def read_tsv(path: str, n: int) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]  # header line
    return [ln.split("\t")[0].strip() for ln in lines if ln.strip()][:n]


def load_model(bundle: Path):
    """The ORT model, with the attempts made: bare from_pretrained first, then the subfolder/file_name of the bundle."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    cfg = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    rel = Path(((cfg.get("compresstune") or cfg).get("files") or {}).get("model", "model.onnx"))
    calls = [
        {},
        {"subfolder": str(rel.parent), "file_name": rel.name} if str(rel.parent) != "." else {"file_name": rel.name},
    ]
    tries, model = [], None
    for kw in calls:
        try:
            m = ORTModelForSequenceClassification.from_pretrained(str(bundle), **kw)
            tries.append({"kwargs": kw, "ok": True, "loaded": str(Path(m.path).relative_to(bundle))})
            model = model or m
        except Exception as e:  # recorded, the next call is tried
            tries.append({"kwargs": kw, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    if model is None:
        raise SystemExit(json.dumps({"error": "Optimum loaded no model", "tries": tries}, indent=2))
    return model, tries


def classify(pipe, texts: list[str], label2id: dict, **kw) -> list[list[float]]:
    """Raw logits per input (function_to_apply="none", every label), ordered by class id."""
    out = []
    for res in pipe(texts, top_k=None, function_to_apply="none", batch_size=1, **kw):
        row = [0.0] * len(label2id)
        for r in res:
            row[label2id[r["label"]]] = float(r["score"])
        out.append(row)
    return out


def predictor_logits(python: str, bundle: Path, texts: list[str]) -> list[list[float]]:
    code = (
        "import json, sys\nfrom compresstune.deploy import Predictor\n"
        "texts = json.load(sys.stdin)\n"
        "print(json.dumps(Predictor(sys.argv[1]).logits(texts, batch_size=1, warn=False).tolist()))\n"
    )
    proc = subprocess.run(
        [python, "-c", code, str(bundle)], input=json.dumps(texts), capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("tsv")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--predictor-python", help="an interpreter with compresstune installed: compare with Predictor")
    args = ap.parse_args()

    import optimum.version
    import transformers
    from transformers import AutoTokenizer, pipeline

    texts = read_tsv(args.tsv, args.n)
    t0 = time.perf_counter()
    model, tries = load_model(args.bundle)
    tok = AutoTokenizer.from_pretrained(str(args.bundle))
    pipe = pipeline("text-classification", model=model, tokenizer=tok)
    label2id = {model.config.id2label[i]: i for i in range(len(model.config.id2label))}
    t1 = time.perf_counter()
    logits = classify(pipe, texts, label2id, truncation=True)
    t2 = time.perf_counter()
    long_text = " ".join(["good"] * LONG_WORDS)
    long = {"tokens": len(tok(long_text)["input_ids"])}
    for trunc in (True, False):
        try:
            long[f"truncation={trunc}"] = {
                "ok": True,
                "logits": classify(pipe, [long_text], label2id, truncation=trunc)[0],
            }
        except Exception as e:  # recorded
            long[f"truncation={trunc}"] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}
    out = {
        "versions": {
            "optimum": optimum.version.__version__,
            "optimum-onnx": _dist_version("optimum-onnx"),
            "transformers": transformers.__version__,
            "onnxruntime": _dist_version("onnxruntime"),
        },
        "from_pretrained_tries": tries,
        "examples": len(texts),
        "load_s": round(t1 - t0, 2),
        "classify_s": round(t2 - t1, 2),
        "long_input": long,
        "labels": [max(range(len(r)), key=r.__getitem__) for r in logits],
        "logits": logits,
    }
    if args.predictor_python:
        *ref, ref_long = predictor_logits(args.predictor_python, args.bundle, [*texts, long_text])
        ref_labels = [max(range(len(r)), key=r.__getitem__) for r in ref]
        same = sum(a == b for a, b in zip(out["labels"], ref_labels))
        out["vs_predictor"] = {
            "label_agreement": same / len(texts),
            "disagreements": len(texts) - same,
            "max_abs_logit_diff": max(abs(a - b) for r, q in zip(logits, ref) for a, b in zip(r, q)),
            "long_input_predictor_logits": ref_long,
        }
    json.dump(out, sys.stdout)
    print()


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
