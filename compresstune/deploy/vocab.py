"""Vocabulary trimming for a bundle: keep only the word pieces a task's text uses.

The word-embedding matrix is often the largest tensor of a small BERT (MiniLM-L6: 30522 x 384
floats, 47 MB of 91 MB). :func:`trim_vocab` keeps the WordPiece tokens that the given texts
(normally the training text) produce plus every special/added token, renumbers them in their old
order, and rewrites both the tokenizer (``tokenizer.json``: WordPiece vocab, added tokens,
post-processor ids, padding id) and the ONNX embedding initializer (rows re-indexed).

Text made only of kept word pieces tokenizes exactly as before (WordPiece is greedy longest-match
on a vocabulary subset). Other text may split into shorter pieces or ``[UNK]``: the result is
checked on ``check_texts`` and the ``[UNK]`` rate there is reported.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..errors import CheckFailed, UserError
from .layout import CONFIG_FILE, SECTION, load_config, model_path, read_config_file, save_config
from .predictor import Predictor


def _embedding_initializer(model):
    """(initializer, consumer nodes) of the word-embedding matrix indexed by ``input_ids``."""
    inits = {t.name: t for t in model.graph.initializer}
    ids = {"input_ids"} | {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "input_ids"}
    fused = ("EmbedLayerNormalization", "QEmbedLayerNormalization")  # ORT transformer-optimizer fusions (+ int8)
    hits = [
        n
        for n in model.graph.node
        if (n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in ids and n.input[0] in inits)
        or (n.op_type in fused and n.input[0] in ids and n.input[2] in inits)
    ]
    if len(hits) != 1:
        raise UserError(
            f"trim_vocab: found {len(hits)} word-embedding lookups of input_ids (Gather or "
            "[Q]EmbedLayerNormalization on an initializer); need exactly one."
        )
    name = hits[0].input[0] if hits[0].op_type == "Gather" else hits[0].input[2]
    users = [n for n in model.graph.node if name in n.input]
    if len(users) != 1:
        raise UserError(
            f"trim_vocab: the embedding {name} is also used by {len(users) - 1} other node(s) "
            "(tied weights); trimming it would change them."
        )
    return inits[name]


def _kept_ids(tok, texts, specials: set[int]) -> list[int]:
    from tokenizers import Tokenizer

    full = Tokenizer.from_str(tok.to_str())
    full.no_truncation()
    full.no_padding()
    used = set(specials)
    items = [tuple(t) if isinstance(t, (list, tuple)) else t for t in texts]
    for s in range(0, len(items), 4096):
        for e in full.encode_batch(items[s : s + 4096]):
            used.update(e.ids)
    return sorted(used)


def _remap_tokenizer(tj: dict, old_to_new: dict[int, int]) -> dict:
    """A tokenizer.json dict with the WordPiece vocab, added tokens and special-token ids renumbered."""
    model = tj["model"]
    model["vocab"] = {t: old_to_new[i] for t, i in model["vocab"].items() if i in old_to_new}
    for a in tj.get("added_tokens") or []:
        a["id"] = old_to_new[a["id"]]
    pp = tj.get("post_processor") or {}
    procs = pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        for spec in (p.get("special_tokens") or {}).values():
            spec["ids"] = [old_to_new[i] for i in spec["ids"]]
        for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
            if isinstance(p.get(key), list):
                p[key] = [p[key][0], old_to_new[p[key][1]]]
    if tj.get("padding"):
        tj["padding"]["pad_id"] = old_to_new.get(tj["padding"]["pad_id"], 0)
    return tj


def _load(bundle: Path):
    import onnx

    cfg = load_config(bundle)
    tok_path = bundle / cfg.get("files", {}).get("tokenizer", "tokenizer.json")
    tj = json.loads(tok_path.read_text(encoding="utf-8"))
    if tj.get("model", {}).get("type") != "WordPiece":
        raise UserError(
            f"trim_vocab: {tok_path} is a {tj.get('model', {}).get('type')} tokenizer; only WordPiece "
            "(BERT/DistilBERT) vocabularies can be trimmed."
        )
    model = onnx.load(str(model_path(bundle)))
    return cfg, tj, model


def _token_stats(a: Predictor, b: Predictor, texts, old_to_new: dict[int, int]) -> dict:
    """How the trimmed tokenizer ``b`` treats ``texts`` compared with the source tokenizer ``a``."""
    unk = b.tokenizer.token_to_id("[UNK]")
    ea, eb = a.tokenizer.encode_batch(texts), b.tokenizer.encode_batch(texts)
    changed = sum(1 for x, y in zip(ea, eb) if [old_to_new.get(i, -1) for i in x.ids] != y.ids)
    n_tok = sum(len(e.ids) for e in eb)
    return {
        "inputs": len(texts),
        "tokenization_changed": round(changed / len(texts), 5),
        "unk_rate": round(sum(e.ids.count(unk) for e in eb) / max(n_tok, 1), 5),
    }


def _compare(a: Predictor, b: Predictor, texts) -> tuple[float, float]:
    """(label agreement, max score/value difference) of two predictors on ``texts``."""
    ra, rb = a.predict(texts, warn=False), b.predict(texts, warn=False)
    key = "value" if a.problem_type == "regression" else "score"
    diff = max(abs(x[key] - y[key]) for x, y in zip(ra, rb))
    agree = sum(x.get("label") == y.get("label") for x, y in zip(ra, rb)) / len(texts)
    return agree, diff


def _verify(src: Path, dst: Path, covered, check, old_to_new, atol: float, min_agreement) -> dict:
    """Covered texts (made of kept tokens) must predict exactly as before; ``check`` texts are reported."""
    a, b = Predictor(src), Predictor(dst)
    stats = _token_stats(a, b, covered, old_to_new)
    agree, diff = _compare(a, b, covered)
    if stats["tokenization_changed"] or agree < 1 or diff > atol:
        raise CheckFailed(
            f"trim_vocab: on {len(covered)} texts made of kept tokens the trimmed bundle {dst} differs "
            f"from {src} (tokenization changed for {stats['tokenization_changed']:.1%}, labels agree "
            f"{agree:.1%}, max difference {diff:.2e}); the trimmed bundle is not usable."
        )
    out = {"covered": {**stats, "label_agreement": agree, "max_diff": diff}}
    if check:
        c_agree, c_diff = _compare(a, b, check)
        out["check"] = {
            **_token_stats(a, b, check, old_to_new),
            "label_agreement": round(c_agree, 5),
            "max_diff": c_diff,
        }
        if min_agreement is not None and c_agree < min_agreement:
            raise CheckFailed(
                f"trim_vocab: labels on the {len(check)} check texts agree {c_agree:.1%} with the source "
                f"bundle, below min_agreement {min_agreement:.1%}; keep more text or do not trim."
            )
    return out


def _trim(src: Path, keep_texts) -> tuple[dict, dict, object, dict, int]:
    """(new config, new tokenizer.json dict, trimmed ONNX model, old->new id map, vocab size before)."""
    from onnx import numpy_helper
    from tokenizers import Tokenizer

    cfg, tj, model = _load(src)
    tok = Tokenizer.from_file(str(src / cfg.get("files", {}).get("tokenizer", "tokenizer.json")))
    kept = _kept_ids(tok, keep_texts, {a["id"] for a in tj.get("added_tokens") or []})
    old_to_new = {old: new for new, old in enumerate(kept)}
    init = _embedding_initializer(model)
    weights = numpy_helper.to_array(init)
    before = len(tj["model"]["vocab"])
    if weights.shape[0] < kept[-1] + 1:
        raise UserError(
            f"trim_vocab: embedding {init.name} has {weights.shape[0]} rows but the tokenizer uses id {kept[-1]}."
        )
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weights[np.array(kept)]), init.name))
    tj = _remap_tokenizer(tj, old_to_new)
    Tokenizer.from_str(json.dumps(tj))  # the rewritten tokenizer must load
    new_cfg = {
        **cfg,
        "pad_id": old_to_new.get(cfg.get("pad_id", 0), 0),
        "vocab": {
            "trimmed_from": before,
            "size": len(kept),
            "embedding": init.name,
            "embedding_rows_before": int(weights.shape[0]),
        },
    }
    return new_cfg, tj, model, old_to_new, before


def trim_vocab(
    bundle_dir,
    keep_texts,
    dst_dir,
    *,
    check_texts=None,
    atol: float = 1e-5,
    min_agreement: float | None = None,
    n_covered: int = 512,
) -> dict:
    """Write a copy of bundle ``bundle_dir`` to ``dst_dir`` whose vocabulary is the tokens of ``keep_texts``
    (strings or pairs: the task's training text) plus all special/added tokens.

    Checked: up to ``n_covered`` of ``keep_texts`` must tokenize identically (after renumbering) and predict
    the same labels with scores within ``atol``, else :class:`CheckFailed`. ``check_texts`` (e.g. the dev set)
    may contain unseen words: their tokenization-changed fraction, [UNK] rate and label agreement are reported
    (:class:`CheckFailed` below ``min_agreement`` when given). Returns ``{"vocab_before", "vocab_after",
    "bytes_before", "bytes_after", "bytes_saved", "covered" {...}, "check" {...}}``."""
    src, dst = Path(bundle_dir), Path(dst_dir)
    if src.resolve() == dst.resolve():
        raise UserError("trim_vocab: write to a new folder (dst_dir must differ from bundle_dir).")
    keep_texts = [tuple(t) if isinstance(t, list) else t for t in keep_texts]
    if not keep_texts:
        raise UserError("trim_vocab: keep_texts is empty; pass the task's training texts.")
    cfg, tj, model, old_to_new, before = _trim(src, keep_texts)
    _write(src, dst, model, tj, cfg)
    step = max(1, len(keep_texts) // n_covered)
    covered = keep_texts[::step][:n_covered]
    check = [tuple(t) if isinstance(t, list) else t for t in check_texts] if check_texts is not None else []
    result = _verify(src, dst, covered, check, old_to_new, atol, min_agreement)
    return {
        "vocab_before": before,
        "vocab_after": len(old_to_new),
        "bytes_before": _dir_bytes(src),
        "bytes_after": _dir_bytes(dst),
        "bytes_saved": _dir_bytes(src) - _dir_bytes(dst),
        **result,
    }


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _write(src: Path, dst: Path, model, tj: dict, cfg: dict) -> None:
    import onnx

    from .bundle import set_metadata

    if dst.exists():
        if not (dst / CONFIG_FILE).is_file():
            raise UserError(f"trim_vocab: {dst} exists and is not a bundle; refusing to replace it.")
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    replaced = {cfg["files"]["model"], cfg["files"]["tokenizer"], CONFIG_FILE}
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and not p.is_symlink() and rel not in replaced:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst / rel)
    set_metadata(model, cfg)
    (dst / cfg["files"]["model"]).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst / cfg["files"]["model"]))
    onnx.checker.check_model(str(dst / cfg["files"]["model"]))
    (dst / cfg["files"]["tokenizer"]).write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    raw = read_config_file(src)
    hf = {k: v for k, v in raw.items() if k != SECTION} if isinstance(raw.get(SECTION), dict) else None
    if hf is not None and "vocab_size" in hf:
        hf["vocab_size"] = len(tj["model"]["vocab"])  # the transformers config describes the trimmed embedding
    save_config(dst, cfg, hf)
