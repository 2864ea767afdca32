"""The bundle's files and its ``config.json``: where each file lives and how the config is read and written.

Format 2 (the Hugging Face layout, written since issue 20)::

    config.json                 a transformers config (model_type, architectures, id2label, ...) with
                                compresstune's own config under the key "compresstune"
    tokenizer.json              the fast tokenizer, truncating at max_length
    tokenizer_config.json       model_max_length = max_length, special tokens
    special_tokens_map.json
    onnx/model.onnx             fp32 and graph-optimised variants   (transformers.js dtype fp32)
    onnx/model_quantized.onnx   int8 variants                       (transformers.js dtype q8)
    onnx/model_fp16.onnx        fp16                                (transformers.js dtype fp16)
    README.md                   the model card, YAML front matter written by huggingface_hub
    verify.json                 the verification set (deploy/verify.py)

Format 1 (``model.onnx`` beside a compresstune-only ``config.json``) is still read. Imports only the
standard library."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..names import inside, is_inside

CONFIG_FILE = "config.json"
BUNDLE_FORMAT = "compresstune-bundle"
PROBLEM_TYPES = ("single_label_classification", "regression")
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
CARD_FILE = "README.md"
ONNX_DIR = "onnx"
SECTION = "compresstune"  # format 2: compresstune's own config lives under this key of the HF config.json


def model_file_for(variant: str | None) -> str:
    """Where a variant's ONNX file goes in a bundle: the names transformers.js and Optimum look for."""
    v = variant or ""
    if v.startswith("int8") or "quant" in v:
        return f"{ONNX_DIR}/model_quantized.onnx"
    if "fp16" in v:
        return f"{ONNX_DIR}/model_fp16.onnx"
    return f"{ONNX_DIR}/model.onnx"


def read_config_file(bundle_dir: str | Path) -> dict:
    """The whole ``config.json`` of a bundle as written (format 2: a Hugging Face config with compresstune's
    section under ``"compresstune"``; format 1: compresstune's config alone); unchecked beyond being JSON."""
    path = Path(bundle_dir) / CONFIG_FILE
    if not Path(bundle_dir).is_dir():
        raise UserError(f"bundle {bundle_dir}: not a folder. Pass the folder written by the export/bundle step.")
    if not path.is_file():
        raise UserError(f"bundle {bundle_dir}: no {CONFIG_FILE}; this folder is not a compresstune bundle.")
    if path.is_symlink() and not is_inside(path, bundle_dir):
        raise UserError(f"bundle {bundle_dir}: {CONFIG_FILE} is a link to a file outside the bundle; refusing it.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}).") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a bundle config; write the bundle again.") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a JSON object.")
    return raw


def section_of(raw: dict, path) -> dict:
    """compresstune's config inside a bundle's ``config.json`` (``raw``): the ``compresstune`` key of a format-2
    bundle, or the whole file of a format-1 bundle (written before the Hugging Face layout)."""
    sec = raw.get(SECTION)
    if isinstance(sec, dict):
        return sec
    if sec is not None or SECTION in raw:
        raise UserError(
            f"{path}: `{SECTION}` must be a JSON object (compresstune's bundle config), not {type(sec).__name__}; "
            "write the bundle again."
        )
    if raw.get("format") == BUNDLE_FORMAT or ("text_fields" in raw and "problem_type" in raw and sec is None):
        return raw  # format 1
    if "model_type" in raw or "architectures" in raw:
        raise UserError(
            f"{path}: a Hugging Face model config without a `{SECTION}` section: this folder is a model repository, "
            "not a compresstune bundle. Build a bundle with `compresstune pipeline run FILE` (its ship stage writes "
            "deploy/) or compresstune.deploy.write_bundle(...)."
        )
    raise UserError(f"{path}: no `{SECTION}` section; this file is not a compresstune bundle config.")


def load_config(bundle_dir: str | Path) -> dict:
    """Read and check compresstune's config of a bundle (either format); a missing or malformed file is a
    :class:`UserError`."""
    path = Path(bundle_dir) / CONFIG_FILE
    raw = read_config_file(bundle_dir)
    cfg = section_of(raw, path)
    problems = _config_problems(cfg)
    if not problems and cfg is not raw:
        problems = _hf_problems(raw, cfg)
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems) + ".")
    return cfg


def _hf_problems(raw: dict, cfg: dict) -> list[str]:
    """The transformers keys must say what compresstune's section says: Hugging Face tools label by ``id2label``."""
    if cfg.get("problem_type") != "single_label_classification" or "id2label" not in raw:
        return []
    id2label = raw["id2label"]
    want = {str(i): n for i, n in enumerate(cfg["labels"])}
    if not isinstance(id2label, dict) or {str(k): v for k, v in id2label.items()} != want:
        return [
            f"id2label {id2label!r:.120} disagrees with {SECTION}.labels {cfg['labels']!r:.120} (transformers tools "
            "would name the classes differently from compresstune predict); make them equal or write the bundle again"
        ]
    return []


def save_config(bundle_dir: str | Path, cfg: dict, hf: dict | None = None) -> None:
    """Write a bundle's ``config.json``: ``hf`` (a Hugging Face config; None keeps the file's current one) with
    ``cfg`` as its ``compresstune`` section; a format-1 bundle without ``hf`` stays format 1."""
    path = Path(bundle_dir) / CONFIG_FILE
    if hf is None:
        raw = read_config_file(bundle_dir) if path.is_file() else {}
        hf = {k: v for k, v in raw.items() if k != SECTION} if isinstance(raw.get(SECTION), dict) else None
    out = cfg if hf is None else {**{k: v for k, v in hf.items() if k != SECTION}, SECTION: cfg}
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _config_problems(cfg) -> list[str]:
    if not isinstance(cfg, dict):
        return ["the top level must be a JSON object"]
    out = []
    if cfg.get("problem_type") not in PROBLEM_TYPES:
        out.append(f"problem_type must be one of {list(PROBLEM_TYPES)}, not {cfg.get('problem_type')!r}")
    labels = cfg.get("labels")
    ok = isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x.strip() for x in labels)
    ok = ok and len(set(labels)) == len(labels)
    if cfg.get("problem_type") == "single_label_classification" and not ok:
        out.append("labels must be a list of at least two distinct, non-empty label names (index = class id)")
    ml = cfg.get("max_length")
    if not isinstance(ml, int) or isinstance(ml, bool) or not 4 <= ml <= 4096:
        out.append(f"max_length must be an integer from 4 to 4096, not {ml!r:.40}")
    tf = cfg.get("text_fields")
    if not isinstance(tf, list) or len(tf) not in (1, 2) or not all(isinstance(x, str) and x for x in tf):
        out.append(f"text_fields must be a list of one or two field names, not {tf!r}")
    pad = cfg.get("pad_id")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 0):
        out.append(f"pad_id must be a non-negative integer token id, not {pad!r:.40}")
    files = cfg.get("files")
    if files is not None and (not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values())):
        out.append(f"files must map names to file names inside the bundle, not {files!r:.80}")
    for key in ("output", "variant", "task"):
        if cfg.get(key) is not None and not isinstance(cfg.get(key), str):
            out.append(f"{key} must be a string, not {cfg.get(key)!r:.40}")
    return out


def bundle_file(bundle_dir: Path, cfg: dict, key: str, default: str) -> Path:
    """The bundle file ``files[key]`` names (default ``default``), which must lie inside the bundle folder."""
    return inside(bundle_dir, (cfg.get("files") or {}).get(key, default), f"{bundle_dir / CONFIG_FILE}: files.{key}")


def default_model_file(cfg: dict) -> str:
    """The model file of a config without ``files.model``: the variant's place (format 2), else ``model.onnx``."""
    v = cfg.get("format_version")
    return model_file_for(cfg.get("variant")) if isinstance(v, int) and v >= 2 else "model.onnx"


def model_path(bundle_dir: str | Path) -> Path:
    """The ONNX file a bundle runs (``files.model``, else :func:`default_model_file`)."""
    bundle_dir = Path(bundle_dir)
    cfg = load_config(bundle_dir)
    return bundle_file(bundle_dir, cfg, "model", default_model_file(cfg))
