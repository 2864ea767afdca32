"""The deploy bundle's model card (README.md): what it is, data, dev metric, latency with the
machine, how it was made, how to run it, limits."""

from __future__ import annotations

import io

from ..machine import RUNTIME_LIBRARIES, versions
from .bundle import normalize_config
from .layout import CARD_FILE, CONFIG_FILE, SECTION, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, model_file_for


def _fmt_metric(config: dict) -> str:
    m = config.get("metric") or {}
    if m.get("dev") is None:
        return "not recorded"
    return f"{m.get('name') or 'metric'} {m['dev']:.2f}" if isinstance(m["dev"], (int, float)) else str(m["dev"])


def _metric_split(config: dict) -> str:
    """Where the recorded metric was measured: the dev set, or the held-out examples of ``task.holdout``."""
    split = (config.get("metric") or {}).get("split")
    return f"Held-out set, {split.removeprefix('held-out ').strip('()')}" if split else "Dev set"


def _quality_notes(m: dict) -> str:
    """What the metric means for a user: int8's batch dependence, and the paired comparison with PyTorch."""
    out = ""
    by = m.get("by_batching")
    if by:
        parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in by.items())
        out += (
            f" Dynamic int8 quantises each call's activations together, so a result depends on the inputs batched "
            f"with it: measured at {parts}; the lower one is given above (`compresstune predict --batch-size 1` "
            "gives the batch-1 results)."
        )
    p = m.get("paired_vs_pytorch")
    if p:
        out += (
            f" On the same {p['examples']} examples as the PyTorch model it was exported from: "
            f"{p['only_pytorch_right']} right only for PyTorch, {p['only_variant_right']} only for this model "
            f"(McNemar's exact test p = {p['p_value']:.2g})."
        )
    return out


def _latency_table(latency, machine) -> list[str]:
    if not latency:
        return ["Not measured for this bundle."]
    L = [
        f"Measured on {machine or 'an unrecorded machine'}; milliseconds per call.",
        "",
        "| engine | batch | seq | p50 | p90 | p99 |",
        "|---|---|---|---|---|---|",
    ]
    for r in latency:
        cells = [r.get("engine", r.get("variant", "")), r.get("batch", ""), r.get("seq", "")]
        cells += [f"{r[k]:.2f}" if isinstance(r.get(k), (int, float)) else "-" for k in ("p50_ms", "p90_ms", "p99_ms")]
        L.append("| " + " | ".join(str(c) for c in cells) + " |")
    return L


def _usage(config: dict, name: str) -> list[str]:
    pair = len(config["text_fields"]) == 2
    ex = '"A man is playing a guitar.\\tSomeone plays music."' if pair else '"a gripping, funny film"'
    py_in = '[("A man is playing a guitar.", "Someone plays music.")]' if pair else '["a gripping, funny film"]'
    enc_in = "[(a, b) for a, b in inputs]" if pair else "inputs"
    head = (
        'print([{"label": cfg["labels"][k], "score": float(p[k])} for p, k in zip(probs, probs.argmax(1))])'
        if config["problem_type"] != "regression"
        else "print(logits[:, 0].tolist())"
    )
    return [
        "Command line (JSON line per input; `--file` takes one input per line"
        + (", the two texts tab-separated," if pair else ",")
        + f" or `.jsonl` with fields {', '.join(config['text_fields'])}):",
        "",
        "```bash",
        f"compresstune predict {name} {ex}",
        f"compresstune predict {name} --file inputs.txt",
        "```",
        "",
        "Python, without torch or transformers:",
        "",
        "```python",
        "from compresstune.deploy import Predictor",
        "",
        f'pred = Predictor("{name}", provider="cpu")',
        f"print(pred.predict({py_in}))",
        "```",
        "",
        "Plain onnxruntime + tokenizers (run inside the bundle folder):",
        "",
        "```python",
        "import json",
        "import numpy as np",
        "import onnxruntime as ort",
        "from tokenizers import Tokenizer",
        "",
        f'cfg = json.load(open("config.json"))["{SECTION}"]',
        'tok = Tokenizer.from_file("tokenizer.json")  # truncates at max_length',
        'tok.enable_padding(pad_id=cfg["pad_id"])',
        f"inputs = {py_in}",
        f"encs = tok.encode_batch({enc_in})",
        'arrays = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs],',
        '          "token_type_ids": [e.type_ids for e in encs]}',
        'feed = {k: np.array(arrays[k], dtype=np.int64) for k in cfg["inputs"]}',
        'sess = ort.InferenceSession(cfg["files"]["model"], providers=["CPUExecutionProvider"])',
        'logits = sess.run([cfg["output"]], feed)[0]',
        "probs = np.exp(logits - logits.max(1, keepdims=True))",
        "probs /= probs.sum(1, keepdims=True)",
        head,
        "```",
    ]


def _ecosystem(config: dict, name: str) -> list[str]:
    """transformers.js and Optimum read the bundle as a Hugging Face model repository."""
    model = model_file_for(config.get("variant"))
    dtype = {"model_quantized.onnx": "q8", "model_fp16.onnx": "fp16"}.get(model.rsplit("/", 1)[-1], "fp32")
    return [
        "",
        "transformers.js (Node or the browser; the folder is a model repository in its layout):",
        "",
        "```js",
        'import { env, pipeline } from "@huggingface/transformers";',
        'env.localModelPath = "./"; env.allowRemoteModels = false;',
        f'const classify = await pipeline("text-classification", "{name}", {{ dtype: "{dtype}" }});',
        'console.log(await classify("a gripping, funny film"));',
        "```",
        "",
        "Optimum (`pip install optimum-onnx`, in its own environment):",
        "",
        "```python",
        "from optimum.onnxruntime import ORTModelForSequenceClassification",
        "from transformers import AutoTokenizer, pipeline",
        "",
        f'model = ORTModelForSequenceClassification.from_pretrained("{name}", subfolder="{model.rsplit("/", 1)[0]}", '
        f'file_name="{model.rsplit("/", 1)[-1]}")',
        f'classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained("{name}"))',
        'print(classify(["a gripping, funny film"], truncation=True))  # cut at max_length, as the bundle does',
        "```",
    ]


def _check_on_device(name: str) -> list[str]:
    return [
        "",
        "## Check it on your device",
        "",
        "The bundle carries a verification set (`verify.json`: dev inputs with the labels and logits of the machine "
        "that built it). On the machine that will run it (needs only onnxruntime, tokenizers and numpy):",
        "",
        "```bash",
        f"compresstune verify {name}",
        "```",
        "",
        "It prints both machines, the label agreement and the median and largest logit difference, and exits 3 "
        "when fewer than 99% of the labels agree or the typical input's logits moved by more than 0.01 "
        "(`--min-agreement`, `--max-median-diff` to change them).",
    ]


def _files_and_versions(config: dict, variant: str | None) -> list[str]:
    vers = config.get("versions") or {}
    return [
        "",
        "## Files and versions",
        "",
        f"`{model_file_for(variant)}` (metadata in `metadata_props`), `{TOKENIZER_FILE}`, "
        f"`{TOKENIZER_CONFIG_FILE}`, `{CONFIG_FILE}` (a transformers config; compresstune's own keys under "
        f'`"{SECTION}"`), `{CARD_FILE}`. Written with ' + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".",
    ]


def model_card(
    config: dict,
    *,
    title: str | None = None,
    description: str | None = None,
    data: str | None = None,
    latency: list[dict] | None = None,
    machine: str | None = None,
    verified_on: str | None = None,
    how_made: str | None = None,
    limits: list[str] | None = None,
    bundle_name: str = "BUNDLE",
    meta: dict | None = None,
) -> str:
    """Markdown model card (README.md) for a bundle described by ``config`` (as for :func:`write_bundle`).

    ``latency`` rows: ``{"engine", "batch", "seq", "p50_ms", "p90_ms", "p99_ms"}``; ``machine``: CPU/GPU in words;
    ``verified_on``: where the shipped file was verified (machine, ONNX Runtime, provider) and what that means;
    ``how_made``: base model, compression and fine-tuning steps; ``limits``: extra caveats (defaults added);
    ``meta``: the YAML header's facts (:func:`front_matter`)."""
    config = {**normalize_config(config), "versions": config.get("versions") or versions(RUNTIME_LIBRARIES)}
    task, variant = config.get("task") or "a text classification task", config.get("variant")
    kind = (
        "regression (one score)"
        if config["problem_type"] == "regression"
        else f"classification into {len(config['labels'])} labels ({', '.join(config['labels'])})"
    )
    fields = " + ".join(config["text_fields"])
    L = [
        f"# {title or (str(task) + (' - ' + variant if variant else ''))}",
        "",
        "## What it is",
        "",
        description or f"A BERT-family model for {task}: {kind} of {fields}, exported to ONNX.",
        "",
        f"Inputs: {fields}, truncated to {config['max_length']} tokens. Outputs: "
        + (
            "`value`."
            if config["problem_type"] == "regression"
            else "`label`, `label_id`, `score` (softmax probability)."
        ),
        "",
        "## Data",
        "",
        data or f"Trained and evaluated on {task}.",
        "",
        "## Quality",
        "",
        f"{_metric_split(config)}: {_fmt_metric(config)}." + _quality_notes(config.get("metric") or {}),
        "",
        *([verified_on, ""] if verified_on else []),
        "## Latency",
        "",
    ]
    L += _latency_table(latency, machine)
    L += [
        "",
        "## How it was made",
        "",
        how_made or "Fine-tuned and exported with compresstune.",
        "",
        "## How to run it",
        "",
    ]
    L += _usage(config, bundle_name) + _ecosystem(config, bundle_name) + _check_on_device(bundle_name)
    lim = list(limits or []) + [
        f"Text beyond {config['max_length']} tokens is cut off (the predictor counts and reports it).",
        "Scores are softmax probabilities of an uncalibrated model, not calibrated confidences."
        if config["problem_type"] != "regression"
        else "Values outside the training range are extrapolations.",
        "Quality was measured on the dev set named above only; other domains and languages may score lower.",
    ]
    L += ["", "## Limits", ""] + [f"- {x}" for x in lim]
    L += _files_and_versions(config, variant)
    return front_matter(config, meta or {}, title=L[0][2:]) + "\n".join(L) + "\n"


def front_matter(config: dict, meta: dict, title: str) -> str:
    """The card's YAML header, written by ``huggingface_hub``: license and language of the base model, the
    pipeline tag, tags (onnx, the variant, the compression), datasets, base model and a ``model-index`` entry with
    the measured metric and the split it was measured on. ``meta`` keys: ``base_model``, ``license``,
    ``language``, ``datasets`` (hub ids), ``dataset`` {``type``, ``name``, ``config``, ``split``}, ``tags``."""
    from huggingface_hub import EvalResult, ModelCardData

    m = config.get("metric") or {}
    ds = meta.get("dataset") or {}
    evals = None
    if isinstance(m.get("dev"), (int, float)) and m.get("name") and ds.get("type"):
        evals = [
            EvalResult(
                task_type="text-classification" if config["problem_type"] != "regression" else "text-regression",
                dataset_type=ds["type"],
                dataset_name=ds.get("name") or ds["type"],
                dataset_config=ds.get("config"),
                dataset_split=ds.get("split"),
                metric_type=m["name"],
                metric_value=round(float(m["dev"]), 2),
            )
        ]
    tags = ["onnx", "compresstune", *(meta.get("tags") or [])]
    if config.get("variant"):
        tags.append(config["variant"])
    data = ModelCardData(
        language=meta.get("language"),
        license=meta.get("license"),
        library_name="transformers.js",
        pipeline_tag="text-classification",
        tags=list(dict.fromkeys(tags)),
        datasets=meta.get("datasets"),
        metrics=[m["name"]] if m.get("name") else None,
        base_model=meta.get("base_model"),
        model_name=title,
        eval_results=evals,
    )
    return "---\n" + data.to_yaml() + "\n---\n\n"


def card_python_snippet(card: str, heading: str = "Plain onnxruntime") -> str:
    """The first ```python block after the line starting with ``heading`` (used to test the card's code)."""
    buf = io.StringIO(card)
    seen = grab = False
    out = []
    for line in buf:
        if line.startswith(heading):
            seen = True
        elif seen and line.startswith("```python"):
            grab = True
        elif grab and line.startswith("```"):
            break
        elif grab:
            out.append(line)
    return "".join(out)
