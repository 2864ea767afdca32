"""Checks of the pipeline's model before any work: its config.json and weights are there (a hub id
only from the local cache when offline; no weights are read), its tokenizer fits its vocabulary,
and the widths each stage will see (followed through distillation and pruning from config.json)
allow the stage's settings: ``keep_layers``/``student_layers`` within the teacher's layers, a
Learner or LoRA ``rank`` no larger than the linears it attaches to, a parameter budget above what
pruning keeps (the embeddings)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from ..methods import all_methods
from ..models.arch import arch_for
from ..models.artifacts import read_meta
from ..models.resolve import hub_offline, load_model_config, resolve_model_path
from .rules import Add, model_input
from .sections import PipelineConfig

ROLE_DIMS = {"q": ("hidden", "attn"), "k": ("hidden", "attn"), "v": ("hidden", "attn"), "o": ("attn", "hidden")}
ROLE_DIMS |= {"ffn_in": ("hidden", "ffn"), "ffn_out": ("ffn", "hidden")}


@dataclass(frozen=True)
class Shape:
    """The widths of a model as a stage sees it (upper bounds where pruning ranks globally or to a budget)."""

    layers: int
    hidden: int
    heads: int  # per layer (the most any layer has)
    head_dim: int
    ffn: int  # the narrowest layer's FFN width
    attn: int | None  # the narrowest attention width (heads x head size) of a layer with heads; None: none left
    vocab: int
    positions: int
    token_types: int
    config_heads: int  # the config's head count (hidden-size pruning keeps a multiple of it)
    learners: bool = False  # carries Learners or LoRA (a later learner stage does not attach new ones)

    def embedding_params(self, hidden: int | None = None) -> int:
        h = self.hidden if hidden is None else hidden
        return (self.vocab + self.positions + self.token_types) * h + 2 * h  # tables + LayerNorm


def check_model(cfg: PipelineConfig, add: Add) -> tuple[Shape | None, object | None]:
    """The model's config, weights and tokenizer: its :class:`Shape` and its tokenizer (for the checks on the
    data), each None when it cannot be read."""
    if not cfg.model:
        return None, None
    try:
        ref = resolve_model_path(cfg.model, cfg.base_dir)
    except UserError:
        return None, None  # the loader reported it
    try:
        mcfg = load_model_config(ref)
        spec = arch_for(mcfg)
    except UserError as exc:
        add(("model",), str(exc))
        return None, None
    vocab = int(getattr(mcfg, "vocab_size", 0) or 0)
    tok = _check_tokenizer(ref, vocab, add)
    if tok is not None:
        _check_min_length(cfg, tok, add)
    hidden, heads = getattr(mcfg, spec.config_hidden), getattr(mcfg, spec.config_heads)
    shape = Shape(
        layers=getattr(mcfg, spec.config_layers),
        hidden=hidden,
        heads=heads,
        head_dim=hidden // heads,
        ffn=getattr(mcfg, spec.config_ffn),
        attn=hidden,
        vocab=vocab,
        positions=int(getattr(mcfg, "max_position_embeddings", 0) or 0),
        token_types=int(getattr(mcfg, "type_vocab_size", 0) or 0) if spec.uses_token_type_ids else 0,
        config_heads=heads,
    )
    return _recorded_shapes(ref, shape), tok


def _recorded_shapes(ref: str, shape: Shape) -> Shape:
    """A compresstune artifact records its per-layer widths (a pruned model's differ from its config)."""
    meta = read_meta(ref) if Path(ref).is_dir() else {}
    layers = meta.get("layer_shapes") or []
    if not layers:
        return shape
    with_heads = [s for s in layers if s.get("heads")]
    return replace(
        shape,
        layers=len(layers),
        heads=max((s["heads"] for s in layers), default=0),
        ffn=min(s["ffn"] for s in layers),
        attn=min((s["heads"] * s["head_dim"] for s in with_heads), default=None),
        learners=bool(meta.get("structure")),
    )


def _check_tokenizer(ref: str, vocab: int, add: Add):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ref, local_files_only=hub_offline())
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, TypeError, ...
        first = (str(exc).splitlines() or [""])[0][:200]
        add(
            ("model",),
            f"model: no tokenizer could be loaded from {ref} ({exc.__class__.__name__}: {first}); put the "
            "tokenizer files that came with the model (tokenizer.json, or vocab.txt and tokenizer_config.json) "
            "next to its config.json.",
        )
        return None
    if vocab and len(tok) < vocab // 2:
        add(
            ("model",),
            f"model: the tokenizer in {ref} has only {len(tok):,} tokens but the model's embedding table has "
            f"{vocab:,}; it is not the tokenizer the model was trained with (transformers builds a tiny one when "
            "tokenizer.json and vocab.txt are missing, and every word becomes [UNK]). Copy the tokenizer files "
            "that came with the weights (tokenizer.json, or vocab.txt) into the folder.",
        )
    if vocab and len(tok) > vocab:
        add(
            ("model",),
            f"model: the tokenizer in {ref} has {len(tok):,} tokens but the model's config.json has vocab_size "
            f"{vocab:,}: token ids from {vocab:,} up would index past the embedding table. The tokenizer does not "
            "belong to this model; copy the tokenizer files that came with the weights into the folder.",
        )
    return tok


def text_field_count(cfg: PipelineConfig) -> int:
    from ..data.glue import GLUE_TASKS

    t = cfg.task
    return len(t.text_columns) if t.name == "custom" else len(GLUE_TASKS[t.name].hf_text)


def _check_min_length(cfg: PipelineConfig, tok, add: Add) -> None:
    """task.max_length leaves room for at least one token of each text after the special tokens."""
    if cfg.task is None:
        return
    n = text_field_count(cfg)
    need = tok.num_special_tokens_to_add(pair=n == 2) + n
    if cfg.task.max_length < need:
        add(
            ("task", "max_length"),
            f"task.max_length: {cfg.task.max_length} tokens leave no room for text after the "
            f"{need - n} special tokens this tokenizer adds; use at least {need} (128 is usual).",
        )


def check_lengths(cfg: PipelineConfig, shape: Shape, add: Add) -> None:
    """Every sequence length the run will feed (task.max_length, export verification, benchmark points, the ship
    shape and a fixed-shape edge model) fits the model's position embeddings."""
    limit = shape.positions
    if not limit:
        return
    seqs = [(("task", "max_length"), "task.max_length", cfg.task.max_length)] if cfg.task is not None else []
    for name, c in cfg.stages.items():
        if c.type == "export":
            seqs += [((name, "verify_shapes"), f"{name}.verify_shapes", s) for _, s in c.verify_shapes]
        elif c.type == "benchmark":
            key = "shapes" if c.shapes else "seq_lengths"
            seqs += [((name, key), f"{name}.{key}", s) for _, s in c.points()]
        elif c.type == "ship":
            seqs.append(((name, "shape"), f"{name}.shape", c.shape[1]))
            if c.fixed_shape:
                seqs.append(((name, "fixed_shape"), f"{name}.fixed_shape", c.fixed_shape[1]))
    seen = set()
    for path, what, s in seqs:
        if s > limit and path not in seen:
            seen.add(path)
            add(
                path,
                f"{what}: sequence length {s} is longer than the model's {limit} position embeddings "
                "(max_position_embeddings in its config.json); the model has no position for such tokens and "
                f"ONNX Runtime fails on them. Use at most {limit}.",
            )


def check_unknown_tokens(task, tok, add: Add, sample: int = 200) -> None:
    """A tokenizer that turns most of a sample of the training text into [UNK] does not fit the data or the model
    (``tok`` None: no tokenizer could be read, which check_model reported)."""
    if task is None or tok is None or len(task.train) == 0:
        return
    unk = tok.unk_token_id
    if unk is None:
        return
    texts = [" ".join(t) for t in task.train.texts[:sample]]
    ids = [i for enc in tok(texts, add_special_tokens=False)["input_ids"] for i in enc]
    share = sum(i == unk for i in ids) / max(1, len(ids))
    if share > 0.5:
        add(
            ("model",),
            f"model: its tokenizer maps {share:.0%} of the tokens of the first {len(texts)} training texts to "
            f"{tok.unk_token}; it does not know this text's words (a tokenizer saved without its vocabulary, or "
            "one made for another language). Use the tokenizer that came with the model, or a model for this text.",
        )


def check_stage_shapes(cfg: PipelineConfig, base: Shape, add: Add) -> None:
    """Follow the model's widths through the stages and check each stage's settings against them."""
    shapes: dict[str, Shape] = {}
    for name, scfg in cfg.stages.items():
        src = model_input(cfg, name)
        cur = shapes.get(src, base) if src else base
        if scfg.type == "compress":
            cur = _compress(name, scfg, cur, add)
        elif scfg.type == "attach":
            if not cur.learners:
                _check_rank(name, scfg.rank, scfg.targets, cur, add)
            cur = replace(cur, learners=True)
        elif scfg.type == "finetune" and "rank" in all_methods()[scfg.method].Options.model_fields:
            if not cur.learners:
                _check_rank(name, scfg.rank, scfg.targets, cur, add)
            cur = replace(cur, learners=True)
        elif scfg.type == "merge":
            cur = replace(cur, learners=False)
        shapes[name] = cur


def _check_rank(name: str, rank: int, targets, shape: Shape, add: Add) -> None:
    dims = {"hidden": shape.hidden, "attn": shape.attn, "ffn": shape.ffn}
    sizes = {t: (dims[ROLE_DIMS[t][0]], dims[ROLE_DIMS[t][1]]) for t in targets if t in ROLE_DIMS}
    sizes = {t: d for t, d in sizes.items() if None not in d}  # no attention left: nothing attaches there
    if not sizes:
        return
    role, (i, o) = min(sizes.items(), key=lambda kv: min(kv[1]))
    limit = min(i, o)
    if rank > limit:
        add(
            (name, "rank"),
            f"{name}.rank: {rank} is larger than the smallest linear it attaches to ({role}: {i} -> {o}); a rank-r "
            f"branch beside it adds r x (in + out) parameters but can express no more than rank {limit}. Use "
            f"rank <= {limit} (the paper uses 64 or less), or drop {role} from {name}.targets.",
        )


def _compress(name: str, c, cur: Shape, add: Add) -> Shape:
    """The student's shape after ``c`` (distill: fewer layers; prune: fewer heads and FFN neurons)."""
    if c.method == "distill":
        n = cur.layers
        bad = [i for i in c.keep_layers or [] if i >= n]
        if bad:
            add(
                (name, "keep_layers"),
                f"{name}.keep_layers: {c.keep_layers} names layer(s) {bad}, but the teacher has {n} layers, "
                f"numbered 0..{n - 1}; keep layers from that range (for example {list(range(0, n, 2))}).",
            )
        if not c.keep_layers and c.student_layers >= n:
            add(
                (name, "student_layers"),
                f"{name}.student_layers: {c.student_layers} is not fewer than the teacher's {n} layers, so nothing "
                f"would be removed; use 1..{n - 1} (for example {max(1, n // 2)}).",
            )
        return replace(cur, layers=len(c.keep_layers) if c.keep_layers else min(c.student_layers, n))
    hidden = cur.hidden
    if c.hidden_ratio > 0:
        h = cur.config_heads
        hidden = max(h, (round(cur.hidden * (1 - c.hidden_ratio)) // h) * h)
    floor = cur.embedding_params(hidden)
    if c.target == "params" and c.target_params and c.target_params < floor:
        add(
            (name, "target_params"),
            f"{name}.target_params: {c.target_params:,} is below the {floor:,} parameters of the embeddings alone, "
            "which pruning heads and FFN neurons never removes, so no pruning can meet it. Raise the budget above "
            f"{floor:,}, narrow the hidden size too (hidden_ratio), or drop layers by distillation (method: distill).",
        )
    if c.mode != "uniform" or c.target != "ratio":
        return replace(cur, hidden=hidden)  # per-layer widths are decided by the ranking: keep upper bounds
    heads = cur.heads - round(c.head_ratio * cur.heads)
    return replace(
        cur,
        hidden=hidden,
        heads=heads,
        attn=heads * cur.head_dim if heads > 0 else None,
        ffn=cur.ffn - int(cur.ffn * c.ffn_ratio),
    )
