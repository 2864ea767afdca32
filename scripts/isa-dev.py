"""Dev logits of an export stage's variants on this CPU, and the comparison of two such runs: how int8 files
behave on another instruction-set class than the one that built them.

Run it natively and under an emulated CPU (QEMU user mode gives the process another CPUID, so ONNX
Runtime's kernel dispatch sees that CPU; speed under emulation means nothing, results are exact):

    .venv/bin/python scripts/isa-dev.py run exported/quickstart/02_export --out /tmp/isa/native
    qemu-x86_64 -cpu EPYC-Milan .venv/bin/python scripts/isa-dev.py run exported/quickstart/02_export \\
        --out /tmp/isa/avx2
    .venv/bin/python scripts/isa-dev.py compare /tmp/isa/native /tmp/isa/avx2

``run`` writes one ``VARIANT.b{BATCH}.npy`` of logits per variant and batch size (the torch-free
Predictor's batching, as a deploy bundle runs) and ``run.json`` (accuracy per file, the machine profile
as ONNX Runtime's process sees it). ``compare`` prints, per file: accuracy in each run, label agreement
between them, how many inputs gave bit-identical logits, the median and largest per-input logit difference."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from compresstune.config.results import ExportResult
from compresstune.data.glue import load_glue
from compresstune.deploy import Predictor
from compresstune.deploy.bundle import write_bundle
from compresstune.machine import describe, profile


def run(args) -> None:
    export = ExportResult.model_validate(json.loads((args.export / "summary.json").read_text()))
    unknown = set(args.variants or ()) - set(export.variants)
    if unknown:
        raise SystemExit(f"{args.export}: no variant {sorted(unknown)} (it has {', '.join(export.variants)})")
    task = load_glue(args.task, "local", args.glue_dir)
    texts = [t if len(t) > 1 else t[0] for t in task.dev.texts]
    gold = np.array(task.dev.labels)
    labels = json.loads((args.export / "labels.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"export": str(args.export), "machine": describe(profile()), "accuracy": {}}
    with tempfile.TemporaryDirectory() as td:
        for name in args.variants or list(export.variants):
            bundle = Path(td) / name
            model = args.export / export.variants[name].file
            write_bundle(bundle, model, args.export / "tokenizer", labels, "card", compress=False)
            pred = Predictor(bundle, threads=args.threads)
            for bs in args.batch:
                logits = pred.logits(texts, batch_size=bs, warn=False)
                np.save(args.out / f"{name}.b{bs}.npy", logits)
                acc = round(100 * float((logits.argmax(1) == gold).mean()), 2)
                out["accuracy"][f"{name}.b{bs}"] = acc
                print(f"{name} batch {bs}: accuracy {acc}", flush=True)
                (args.out / "run.json").write_text(json.dumps(out, indent=2) + "\n")  # after each: a stopped run counts


def compare(args) -> None:
    a, b = (json.loads((d / "run.json").read_text()) for d in (args.a, args.b))
    print(f"A: {a['machine']}\nB: {b['machine']}")
    print(
        "| file | A accuracy | B accuracy | labels agree | inputs bit-identical | median / largest logit difference |\n"
        "|---|---|---|---|---|---|"
    )
    for key in a["accuracy"]:
        if key not in b["accuracy"]:
            continue
        la, lb = (np.load(d / f"{key}.npy") for d in (args.a, args.b))
        agree = float((la.argmax(1) == lb.argmax(1)).mean())
        diff = np.abs(la.astype(np.float64) - lb).max(1)
        same = int((diff == 0).sum())
        print(
            f"| {key} | {a['accuracy'][key]} | {b['accuracy'][key]} | {agree:.2%} | {same}/{len(diff)} | "
            f"{np.median(diff):.2e} / {diff.max():.2e} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("export", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--variants", nargs="+", help="the export's variants to run (default: all it verified)")
    r.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--task", default="sst2")
    r.add_argument("--glue-dir", default="../shared/data/glue")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    run(args) if args.cmd == "run" else compare(args)


if __name__ == "__main__":
    main()
