"""The Hugging Face side of a bundle: ``config.json``'s transformers keys, ``tokenizer_config.json`` and
``special_tokens_map.json``, so that ``AutoConfig``, ``AutoTokenizer``, ``pipeline()``, Optimum and
transformers.js read the bundle as a model repository. Standard library only."""

from __future__ import annotations

import json
from pathlib import Path

from .layout import SECTION, SPECIAL_TOKENS_FILE, TOKENIZER_CONFIG_FILE

# keys of a saved config or tokenizer config that describe the machine or the call that saved it, not the model
_MACHINE_KEYS = {"_name_or_path", "name_or_path", "is_local", "local_files_only", "_commit_hash", "cache_dir"}
_SPECIAL = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token", "eos_token")
# candidates for each special token when the source has no tokenizer_config.json
_SPECIAL_GUESSES = {
    "unk_token": ("[UNK]", "<unk>"),
    "sep_token": ("[SEP]", "</s>"),
    "pad_token": ("[PAD]", "<pad>"),
    "cls_token": ("[CLS]", "<s>"),
    "mask_token": ("[MASK]", "<mask>"),
}


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return d if isinstance(d, dict) else {}


def classification_architecture(base: dict) -> list[str] | None:
    """``["BertForSequenceClassification"]`` for a config whose architectures name the base model or its head."""
    arch = (base.get("architectures") or [None])[0]
    if not isinstance(arch, str):
        return None
    if arch.endswith("ForSequenceClassification"):
        return [arch]
    for suffix in ("ForMaskedLM", "ForPreTraining", "Model"):
        if arch.endswith(suffix):
            return [arch[: -len(suffix)] + "ForSequenceClassification"]
    return None


def hf_config(source_dir: Path | None, labels: list[str], problem_type: str, *, vocab_size: int | None = None) -> dict:
    """The transformers keys of a bundle's ``config.json``: the exported checkpoint's own config (``source_dir``)
    with the classification head's architecture, ``id2label``/``label2id`` from ``labels`` and the problem type.
    Without a source config only the label keys are written (compresstune still reads the bundle; transformers'
    Auto classes need ``model_type``)."""
    base = _read_json(Path(source_dir) / "config.json") if source_dir else {}
    out = {k: v for k, v in base.items() if k not in _MACHINE_KEYS and k != SECTION}
    arch = classification_architecture(base)
    if arch:
        out["architectures"] = arch
    names = labels if problem_type != "regression" else ["LABEL_0"]
    out["id2label"] = {str(i): n for i, n in enumerate(names)}
    out["label2id"] = {n: i for i, n in enumerate(names)}
    out["problem_type"] = problem_type
    if vocab_size is not None and "vocab_size" in out:
        out["vocab_size"] = vocab_size
    return out


def tokenizer_files(source_dir: Path | None, tokenizer_json: dict, max_length: int) -> dict[str, dict]:
    """``tokenizer_config.json`` and ``special_tokens_map.json`` for a bundle: the checkpoint's tokenizer config
    (when there is one) with ``model_max_length`` = the bundle's ``max_length`` and right-side truncation, so
    a transformers or transformers.js tokenizer cuts long inputs where the bundle does."""
    base = _read_json(Path(source_dir) / TOKENIZER_CONFIG_FILE) if source_dir else {}
    tc = {k: v for k, v in base.items() if k not in _MACHINE_KEYS}
    vocab = {t.get("content") for t in tokenizer_json.get("added_tokens") or [] if isinstance(t, dict)}
    model = tokenizer_json.get("model") if isinstance(tokenizer_json.get("model"), dict) else {}
    vocab |= set(model.get("vocab") or {}) if isinstance(model.get("vocab"), dict) else set()
    for key, guesses in _SPECIAL_GUESSES.items():
        if key not in tc:
            hit = next((g for g in guesses if g in vocab), None)
            if hit:
                tc[key] = hit
    tc.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    if "do_lower_case" not in tc:
        norm = tokenizer_json.get("normalizer") or {}
        if isinstance(norm, dict) and "lowercase" in norm:
            tc["do_lower_case"] = bool(norm["lowercase"])
    tc.update(model_max_length=int(max_length), truncation_side="right", padding_side="right")
    tc.pop("max_length", None)  # a saved call argument, not a property of the tokenizer
    special = {k: tc[k] for k in _SPECIAL if isinstance(tc.get(k), str)}
    return {TOKENIZER_CONFIG_FILE: tc, SPECIAL_TOKENS_FILE: special}
