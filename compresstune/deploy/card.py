"""The deploy bundle's model card (README.md): what it is, data, dev metric, latency with the
machine, how it was made, how to run it, limits."""

from __future__ import annotations

import io

from .bundle import CARD_FILE, CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, normalize_config, versions


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
        'cfg = json.load(open("config.json"))',
        'tok = Tokenizer.from_file("tokenizer.json")  # truncates at max_length',
        'tok.enable_padding(pad_id=cfg["pad_id"])',
        f"inputs = {py_in}",
        f"encs = tok.encode_batch({enc_in})",
        'arrays = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs],',
        '          "token_type_ids": [e.type_ids for e in encs]}',
        'feed = {k: np.array(arrays[k], dtype=np.int64) for k in cfg["inputs"]}',
        'sess = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])',
        'logits = sess.run([cfg["output"]], feed)[0]',
        "probs = np.exp(logits - logits.max(1, keepdims=True))",
        "probs /= probs.sum(1, keepdims=True)",
        head,
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
        "It prints both machines, the label agreement and the largest logit difference, and exits 3 when fewer "
        "than 99% of the labels agree (`--min-agreement` to change it).",
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
) -> str:
    """Markdown model card (README.md) for a bundle described by ``config`` (as for :func:`write_bundle`).

    ``latency`` rows: ``{"engine", "batch", "seq", "p50_ms", "p90_ms", "p99_ms"}``; ``machine``: CPU/GPU in words;
    ``verified_on``: where the shipped file was verified (machine, ONNX Runtime, provider) and what that means;
    ``how_made``: base model, compression and fine-tuning steps; ``limits``: extra caveats (defaults added)."""
    config = {**normalize_config(config), "versions": config.get("versions") or versions()}
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
    L += _usage(config, bundle_name) + _check_on_device(bundle_name)
    lim = list(limits or []) + [
        f"Text beyond {config['max_length']} tokens is cut off (the predictor counts and reports it).",
        "Scores are softmax probabilities of an uncalibrated model, not calibrated confidences."
        if config["problem_type"] != "regression"
        else "Values outside the training range are extrapolations.",
        "Quality was measured on the dev set named above only; other domains and languages may score lower.",
    ]
    L += ["", "## Limits", ""] + [f"- {x}" for x in lim]
    vers = config.get("versions") or {}
    L += [
        "",
        "## Files and versions",
        "",
        f"`{MODEL_FILE}` (metadata in `metadata_props`), `{TOKENIZER_FILE}`, `{CONFIG_FILE}`, `{CARD_FILE}`. "
        "Written with " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".",
    ]
    return "\n".join(L) + "\n"


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
