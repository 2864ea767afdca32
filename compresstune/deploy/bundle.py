"""Write a self-contained deployment bundle and its model card.

A bundle folder is a Hugging Face model repository (layout in ``deploy/layout.py``):

* ``onnx/model.onnx`` (or ``model_quantized.onnx`` for int8, ``model_fp16.onnx``): the model, with the
  bundle config also in its ``metadata_props``
  (``onnxruntime.InferenceSession(...).get_modelmeta().custom_metadata_map``),
* ``tokenizer.json`` (truncation at ``max_length``, no padding), ``tokenizer_config.json``,
  ``special_tokens_map.json``,
* ``config.json``: the checkpoint's transformers config with compresstune's own config (schema in
  :func:`bundle_config`) under the key ``"compresstune"``,
* ``README.md``: the model card (:func:`model_card`).

It runs with :class:`compresstune.deploy.predictor.Predictor`, plain onnxruntime + tokenizers, Optimum's
``ORTModelForSequenceClassification`` and transformers.js; nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from ..machine import RUNTIME_LIBRARIES, versions
from ..manifest import replace_dir
from .hf import hf_config, tokenizer_files
from .layout import BUNDLE_FORMAT, CARD_FILE, CONFIG_FILE, TOKENIZER_FILE, _config_problems, model_file_for, save_config

FORMAT_VERSION = 2
MODEL_FILE = "onnx/model.onnx"  # the fp32 place; each variant's own place: layout.model_file_for
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

    ``files.model`` is the variant's place in the Hugging Face layout (:func:`layout.model_file_for`)."""
    task = normalize_config(config)
    out = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        **task,
        "inputs": list(input_names),
        "output": "logits" if "logits" in output_names else output_names[0],
        "pad_id": pad_id,
        "files": {"model": model_file_for(task["variant"]), "tokenizer": TOKENIZER_FILE, "card": CARD_FILE},
        "versions": versions(RUNTIME_LIBRARIES),
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


def rewrite_config(bundle_dir: Path, config: dict) -> None:
    """Replace a bundle's ``config.json`` and the copy of it in its model's ``metadata_props``."""
    import onnx

    bundle_dir = Path(bundle_dir)
    path = bundle_dir / (config.get("files") or {}).get("model", "model.onnx")
    model = onnx.load(str(path))
    set_metadata(model, config)
    onnx.save_model(model, str(path))
    save_config(bundle_dir, config)


def _write_model(onnx_path: Path, tmp: Path, config: dict, tokenizer_dir: Path, source_dir: Path | None) -> dict:
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
    dst = tmp / full["files"]["model"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    kw = {"save_as_external_data": True, "location": dst.name + "_data"} if external else {}
    onnx.save_model(model, str(dst), **kw)
    onnx.checker.check_model(str(dst))
    _write_hf_files(tmp, full, source_dir)
    return full


def _write_hf_files(tmp: Path, full: dict, source_dir: Path | None) -> None:
    """config.json (transformers keys + compresstune's section), tokenizer_config.json, special_tokens_map.json."""
    tj = json.loads((tmp / TOKENIZER_FILE).read_text(encoding="utf-8"))
    vocab = (tj.get("model") or {}).get("vocab")
    hf = hf_config(
        source_dir, full["labels"], full["problem_type"], vocab_size=len(vocab) if isinstance(vocab, dict) else None
    )
    save_config(tmp, full, hf)
    for name, content in tokenizer_files(source_dir, tj, full["max_length"]).items():
        (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
    dst_dir,
    onnx_path,
    tokenizer_dir,
    config: dict,
    card: str | None = None,
    *,
    source_dir=None,
    archive=None,
    compress: bool = True,
) -> dict:
    """Write a bundle folder ``dst_dir`` (replaced atomically if it is already a bundle).

    ``onnx_path``: the exported model; ``tokenizer_dir``: a folder with ``tokenizer.json`` (HF
    ``save_pretrained``) or that file; ``config``: see :func:`bundle_config`; ``card``: README.md text
    (None: :func:`model_card` from ``config`` alone); ``source_dir``: the checkpoint that was exported (its
    ``config.json`` and ``tokenizer_config.json`` give the transformers keys; None: label keys only).
    Returns ``{"dir", "config", "files" {name: bytes}, "total_bytes", "compressed" {"format": "tar.gz",
    "bytes", "level"}}``; the tar.gz is kept at ``archive`` when given, else built in a temp file
    and deleted (``compress=False`` skips it)."""
    dst = Path(dst_dir)
    tmp = _prepare_dst(dst)
    try:
        full = _write_model(
            Path(onnx_path), tmp, dict(config), Path(tokenizer_dir), Path(source_dir) if source_dir else None
        )
        if card is None:
            from .card import model_card  # card.py imports this module

            card = model_card(full, bundle_name=dst.name)
        (tmp / CARD_FILE).write_text(card if card.endswith("\n") else card + "\n", encoding="utf-8")
        replace_dir(tmp, dst)  # the old bundle set aside first: a kill never leaves a half-deleted one in place
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
