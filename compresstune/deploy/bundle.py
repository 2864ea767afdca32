"""Write a self-contained deployment bundle and its model card.

A bundle folder holds:

* ``model.onnx``: the model, with the bundle config also in its ``metadata_props``
  (``onnxruntime.InferenceSession(...).get_modelmeta().custom_metadata_map``),
* ``tokenizer.json``: the Hugging Face fast tokenizer, truncation set to ``max_length``, no padding,
* ``config.json``: what a runtime needs (schema in :func:`bundle_config`),
* ``README.md``: the model card (:func:`model_card`).

It runs with :class:`compresstune.deploy.predictor.Predictor` or plain onnxruntime + tokenizers;
nothing here imports torch or transformers.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from .predictor import BUNDLE_FORMAT, CONFIG_FILE, _config_problems

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "README.md"
META_PREFIX = "compresstune."
# labels.json (export stage) keys that bundle_config() renames or derives from
_CONSUMED = {
    "name",
    "task",
    "label_names",
    "labels",
    "is_regression",
    "problem_type",
    "max_length",
    "text_fields",
    "metric",
    "dev_metric",
    "variant",
    "num_labels",
}


def versions() -> dict:
    """Versions of the runtime libraries a bundle is written with (no torch/transformers)."""
    import numpy
    import onnx
    import onnxruntime
    import tokenizers

    import compresstune

    return {
        "compresstune": compresstune.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _labels(config: dict, problem_type: str) -> list[str]:
    if problem_type == "regression":
        return []
    names = config.get("labels") or config.get("label_names")
    if names:
        return [str(x) for x in names]
    n = config.get("num_labels")
    if not isinstance(n, int) or n < 2:
        raise UserError("bundle config: give `labels` (or `label_names`) or `num_labels` >= 2 for a classifier.")
    return [str(i) for i in range(n)]


def _metric(config: dict) -> dict | None:
    m = config.get("metric")
    if isinstance(m, dict):
        return m
    if m is None and config.get("dev_metric") is None:
        return None
    return {"name": m, "dev": config.get("dev_metric")}


def normalize_config(config: dict) -> dict:
    """The task part of a bundle config (task, variant, problem_type, labels, num_labels, max_length,
    text_fields, metric) from the caller's dict; see :func:`bundle_config` for the accepted keys."""
    if not isinstance(config, dict):
        raise UserError(f"bundle config must be a dict, not {type(config).__name__}.")
    if "text_fields" not in config:
        raise UserError(
            "bundle config: `text_fields` is required: the input field names, one for a single-text task "
            '(e.g. ["sentence"]) or two for a sentence-pair task (e.g. ["sentence1", "sentence2"]).'
        )
    pt = config.get("problem_type") or ("regression" if config.get("is_regression") else "single_label_classification")
    labels = _labels(config, pt)
    tf = config["text_fields"]
    out = {
        "task": config.get("task") or config.get("name"),
        "variant": config.get("variant"),
        "problem_type": pt,
        "labels": labels,
        "num_labels": 1 if pt == "regression" else len(labels),
        "max_length": config.get("max_length"),
        "text_fields": list(tf) if isinstance(tf, (list, tuple)) else tf,
        "metric": _metric(config),
    }
    problems = _config_problems(out)
    if problems:
        raise UserError("bundle config: " + "; ".join(problems) + ".")
    return out


def bundle_config(config: dict, input_names: list[str], output_names: list[str], pad_id: int) -> dict:
    """The bundle's ``config.json`` from a task description.

    ``config`` may use the export stage's ``labels.json`` keys (``name``, ``label_names``,
    ``is_regression``, ``num_labels``, ``metric``, ``max_length``) or this schema's own; it must give
    ``text_fields`` (one name for single-text tasks, two for pairs, e.g. ``["sentence1", "sentence2"]``),
    and may give ``variant`` and ``dev_metric`` (a number on the task metric's scale). Schema::

        format, format_version, task, variant, problem_type ("single_label_classification" | "regression"),
        labels (names by class id; [] for regression), num_labels, max_length, text_fields, inputs, output,
        pad_id, metric {name, dev}, files {model, tokenizer, card}, versions, created, + the caller's extra keys
    """
    task = normalize_config(config)
    out = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        **task,
        "inputs": list(input_names),
        "output": "logits" if "logits" in output_names else output_names[0],
        "pad_id": pad_id,
        "files": {"model": MODEL_FILE, "tokenizer": TOKENIZER_FILE, "card": CARD_FILE},
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.update({k: v for k, v in config.items() if k not in _CONSUMED and k not in out})
    return out


def _write_tokenizer(tokenizer_dir: Path, dst: Path, max_length: int) -> int:
    """Copy tokenizer.json with truncation at ``max_length`` and no padding; returns the pad id."""
    from tokenizers import Tokenizer

    src = tokenizer_dir if tokenizer_dir.is_file() else tokenizer_dir / TOKENIZER_FILE
    if not src.is_file():
        raise UserError(
            f"tokenizer {tokenizer_dir}: no {TOKENIZER_FILE}; only fast (Rust) tokenizers can be bundled. "
            "Save the tokenizer with a transformers fast tokenizer's save_pretrained()."
        )
    try:
        tok = Tokenizer.from_file(str(src))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception subclasses
        raise UserError(f"{src}: the tokenizers library could not read it ({e}).") from None
    pad = (tok.padding or {}).get("pad_id")
    if pad is None:
        pad = next((i for i in (tok.token_to_id(t) for t in ("[PAD]", "<pad>")) if i is not None), 0)
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="longest_first")
    tok.save(str(dst))
    return int(pad)


def _io_names(model) -> tuple[list[str], list[str]]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def set_metadata(model, config: dict) -> None:
    """Put ``config`` into ``model.metadata_props``: the whole JSON under ``compresstune.config`` and the
    fields a runtime needs as their own keys (``compresstune.labels`` etc., JSON-encoded). Existing
    ``compresstune.*`` keys are replaced (duplicate keys make the model invalid)."""
    flat = {"config": config}
    flat.update(
        {
            k: config.get(k)
            for k in (
                "task",
                "variant",
                "problem_type",
                "labels",
                "max_length",
                "text_fields",
                "pad_id",
                "format_version",
            )
        }
    )
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    for k, v in keep:
        model.metadata_props.add(key=k, value=v)
    for k, v in flat.items():
        model.metadata_props.add(key=META_PREFIX + k, value=json.dumps(v, ensure_ascii=False))


def _write_model(onnx_path: Path, tmp: Path, config: dict, tokenizer_dir: Path) -> dict:
    import onnx
    from onnx.external_data_helper import uses_external_data

    max_length = normalize_config(config)["max_length"]  # checks the config before any work
    if not onnx_path.is_file():
        raise UserError(f"ONNX model {onnx_path} does not exist.")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise UserError(f"{onnx_path}: not a readable ONNX model ({e}).") from None
    external = any(uses_external_data(t) for t in model.graph.initializer) or model.ByteSize() > 1_900_000_000
    ins, outs = _io_names(model)
    pad = _write_tokenizer(tokenizer_dir, tmp / TOKENIZER_FILE, max_length)
    full = bundle_config(config, ins, outs, pad)
    set_metadata(model, full)
    kw = {"save_as_external_data": True, "location": MODEL_FILE + ".data"} if external else {}
    onnx.save_model(model, str(tmp / MODEL_FILE), **kw)
    onnx.checker.check_model(str(tmp / MODEL_FILE))
    return full


def _prepare_dst(dst: Path) -> Path:
    if dst.exists() and not dst.is_dir():
        raise UserError(f"bundle destination {dst} is a file.")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / CONFIG_FILE).is_file():
        raise UserError(f"bundle destination {dst} is a non-empty folder that is not a bundle; refusing to replace it.")
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_bundle(
    dst_dir, onnx_path, tokenizer_dir, config: dict, card: str | None = None, *, archive=None, compress: bool = True
) -> dict:
    """Write a bundle folder ``dst_dir`` (replaced atomically if it is already a bundle).

    ``onnx_path``: the exported model; ``tokenizer_dir``: a folder with ``tokenizer.json`` (HF
    ``save_pretrained``) or that file; ``config``: see :func:`bundle_config`; ``card``: README.md text
    (None: :func:`model_card` from ``config`` alone).
    Returns ``{"dir", "config", "files" {name: bytes}, "total_bytes", "compressed" {"format": "tar.gz",
    "bytes", "level"}}``; the tar.gz is kept at ``archive`` when given, else built in a temp file
    and deleted (``compress=False`` skips it)."""
    dst = Path(dst_dir)
    tmp = _prepare_dst(dst)
    try:
        full = _write_model(Path(onnx_path), tmp, dict(config), Path(tokenizer_dir))
        (tmp / CONFIG_FILE).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        card = model_card(full, bundle_name=dst.name) if card is None else card
        (tmp / CARD_FILE).write_text(card if card.endswith("\n") else card + "\n", encoding="utf-8")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dir": str(dst), "config": full, **bundle_sizes(dst, archive=archive, compress=compress)}


def bundle_sizes(bundle_dir, *, archive=None, compress: bool = True, level: int = 6) -> dict:
    """Bytes of each file, their total on disk, and (``compress``) of the folder as a tar.gz at gzip ``level``."""
    d = Path(bundle_dir)
    files = {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}
    out = {"files": files, "total_bytes": sum(files.values())}
    if not compress:
        return out
    if archive:
        path = Path(archive)
        _tar(d, path, level)
        out["compressed"] = {"format": "tar.gz", "bytes": path.stat().st_size, "level": level, "path": str(path)}
        return out
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "bundle.tar.gz"
        _tar(d, path, level)
        out["compressed"] = {"format": "tar.gz", "bytes": path.stat().st_size, "level": level}
    return out


def _tar(d: Path, path: Path, level: int) -> None:
    with tarfile.open(path, "w:gz", compresslevel=level) as tf:
        tf.add(d, arcname=d.name)


def _fmt_metric(config: dict) -> str:
    m = config.get("metric") or {}
    if m.get("dev") is None:
        return "not recorded"
    return f"{m.get('name') or 'metric'} {m['dev']:.2f}" if isinstance(m["dev"], (int, float)) else str(m["dev"])


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


def model_card(
    config: dict,
    *,
    title: str | None = None,
    description: str | None = None,
    data: str | None = None,
    latency: list[dict] | None = None,
    machine: str | None = None,
    how_made: str | None = None,
    limits: list[str] | None = None,
    bundle_name: str = "BUNDLE",
) -> str:
    """Markdown model card (README.md) for a bundle described by ``config`` (as for :func:`write_bundle`).

    ``latency`` rows: ``{"engine", "batch", "seq", "p50_ms", "p90_ms", "p99_ms"}``; ``machine``: CPU/GPU in words;
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
        f"Dev set: {_fmt_metric(config)}.",
        "",
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
    L += _usage(config, bundle_name)
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
