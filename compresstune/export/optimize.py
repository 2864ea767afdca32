"""ONNX Runtime transformer-optimizer fusion for exported BERT-family encoders.

ONNX Runtime's ``onnxruntime.transformers.optimizer.optimize_model`` does the fusion
(Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu); this module
adds only what it lacks for our exports:

* **Explicit head counts.** transformers 5 reshapes Q/K/V to ``(batch, seq, -1, head_size)``,
  so the optimizer cannot read the head count from the graph and falls back to the one
  ``num_heads`` it is given, for every layer. On a model pruned to different head counts
  per layer that silently builds *wrong* Attention nodes (measured: logits off by 0.3 on
  a 4/2/0/1-head model). :func:`make_heads_explicit` replaces each ``-1`` by
  ``weight_columns // head_size`` (an identity rewrite), and the optimizer then reads the
  right count per layer; layers without attention are left alone.
* **A per-layer report** of which layers got a fused attention node and why not.
* **A numerical check** of the optimized model against the source at a shape other than
  the export shape.

The optimizer's ``model_type`` for BERT, DistilBERT, RoBERTa and ELECTRA is ``"bert"``;
ORT has no ``"distilbert"`` entry and would return such a model unoptimized.

The fusion needs an export of *eager* attention: the SDPA export of transformers 5
(recognisable by an ``IsNaN`` guard and Q and K scaled separately) is not fused.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import CheckFailed, UserError

FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "GemmFastGelu",
)
BERT_FAMILY = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra")
_LAYER_RE = re.compile(r"/layer\.(\d+)/")
VERIFY_SHAPE = (3, 11)  # (batch, seq) of the verification input; not the export shape


def count_ops(path: str | Path | onnx.ModelProto) -> dict[str, int]:
    """Number of nodes of each op type in an ONNX model (path or loaded model), sorted by name."""
    model = path if isinstance(path, onnx.ModelProto) else onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    vals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    vals[n.output[0]] = numpy_helper.to_array(a.t)
    return vals


def _scalar(v: np.ndarray | None) -> int | None:
    return int(v.ravel()[0]) if v is not None and v.size == 1 and v.dtype.kind in "iu" else None


def _projection_width(prod: dict, vals: dict, tensor: str) -> int | None:
    """Output width of the MatMul (optionally + bias Add) that produces ``tensor``."""
    node = prod.get(tensor)
    if node is not None and node.op_type == "Add":
        node = next((prod[i] for i in node.input if i in prod and prod[i].op_type == "MatMul"), None)
    if node is None or node.op_type != "MatMul" or node.input[1] not in vals:
        return None
    return int(vals[node.input[1]].shape[-1])


def _drop_unused_constants(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    dead = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]
    for n in dead:
        model.graph.node.remove(n)


def make_heads_explicit(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite ``Reshape(x, Concat(b, s, -1, d))`` of a Q/K/V projection to use the real head count.

    ``x`` must come from a MatMul(+Add) with a constant weight of ``n * d`` columns; the
    ``-1`` becomes ``n``. The model computes exactly the same. Returns ``{reshape name: n}``
    for every rewritten node (in place)."""
    vals = _constants(model)
    prod = {o: n for n in model.graph.node for o in n.output}
    done: dict[str, int] = {}
    for node in model.graph.node:
        concat = prod.get(node.input[1]) if node.op_type == "Reshape" else None
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads, size = vals.get(concat.input[2]), _scalar(vals.get(concat.input[3]))
        width = _projection_width(prod, vals, node.input[0])
        if _scalar(heads) != -1 or not size or size <= 0 or not width or width % size:
            continue
        name = f"{node.name or node.output[0]}_explicit_heads"
        model.graph.initializer.append(numpy_helper.from_array(np.full(heads.shape, width // size, heads.dtype), name))
        concat.input[2] = name
        done[node.name or node.output[0]] = width // size
    _drop_unused_constants(model)
    return done


def _layer_of(name: str) -> int | None:
    m = _LAYER_RE.search(name or "")
    return int(m.group(1)) if m else None


def _layer_ids(model: onnx.ModelProto) -> list[int]:
    return sorted({i for n in model.graph.node if (i := _layer_of(n.name)) is not None})


def _layers_with(model: onnx.ModelProto, op_type: str) -> set[int]:
    return {i for n in model.graph.node if n.op_type == op_type and (i := _layer_of(n.name)) is not None}


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        # expected after make_heads_explicit on pruned layers (heads * head_size < input width): not a problem
        if msg.startswith("Input hidden size (") or msg in self.messages:
            return
        self.messages.append(msg)


def _unfused_reason(layer: int, sdpa: set[int], unresolved: set[int]) -> str:
    if layer in sdpa:
        return (
            "SDPA-style attention export (IsNaN guard, Q and K scaled separately) is not fused by ONNX Runtime; "
            "export from a model with attn_implementation='eager'"
        )
    if layer in unresolved:
        return "head count not readable from the graph (reshape to -1 heads) and no usable num_heads was given"
    return "ONNX Runtime's attention pattern did not match this layer's subgraph"


def _layer_report(src: onnx.ModelProto, opt: onnx.ModelProto, heads: dict[int, int], given: list[int] | None) -> list:
    """One entry per encoder layer (found by ``/layer.N/`` in node names) of the source graph."""
    layers = _layer_ids(src)
    with_attn, left = _layers_with(src, "Softmax"), _layers_with(opt, "Softmax")
    sdpa = _layers_with(src, "IsNaN")
    reshaped = {i for n in src.graph.node if n.op_type == "Reshape" and (i := _layer_of(n.name)) is not None}
    unresolved = reshaped - set(heads)
    out = []
    for i in layers:
        entry = {"layer": i, "heads": heads.get(i, 0 if i not in with_attn else None)}
        if given is not None and i < len(given) and entry["heads"] is not None and given[i] != entry["heads"]:
            entry["heads_given"] = given[i]
        if i not in with_attn:
            entry.update(attention="absent", reason="layer has no attention (all heads pruned): nothing to fuse")
        elif i in left:
            entry.update(attention="unfused", reason=_unfused_reason(i, sdpa, unresolved))
        else:
            entry["attention"] = "fused"
        out.append(entry)
    return out


def _heads_per_layer(model: onnx.ModelProto, rewritten: dict[str, int]) -> dict[int, int]:
    """Head count of each layer's attention, from the explicit reshape shapes."""
    out: dict[int, int] = {}
    for name, n in rewritten.items():
        layer = _layer_of(name)
        if layer is not None:
            out.setdefault(layer, n)
    return out


def max_output_diff(a: str | Path, b: str | Path, shape: tuple[int, int] = VERIFY_SHAPE, seed: int = 0) -> float:
    """Max |output_a - output_b| over all outputs of two ONNX models on the same random token input."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sa = ort.InferenceSession(str(a), so, providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(b), so, providers=["CPUExecutionProvider"])
    from ..deploy.edge import vocab_of
    from ..feeds import session_feed

    feeds = session_feed(sa, *shape, vocab=vocab_of(Path(a)), seed=seed)
    ra, rb = sa.run(None, feeds), sb.run(None, {k: feeds[k] for k in (i.name for i in sb.get_inputs())})
    return max(float(np.abs(x.astype(np.float32) - y.astype(np.float32)).max()) for x, y in zip(ra, rb))


def _check_args(num_heads, hidden_size: int, model_type: str) -> tuple[str, list[int] | None]:
    mt = "bert" if model_type in BERT_FAMILY else model_type
    if mt != "bert":
        raise UserError(f"optimize: model type {model_type!r} is not a BERT-family encoder ({', '.join(BERT_FAMILY)}).")
    given = list(num_heads) if isinstance(num_heads, (list, tuple)) else None
    if given is not None and any(h < 0 for h in given) or given is None and num_heads < 0 or hidden_size < 0:
        raise UserError(f"optimize: num_heads {num_heads} and hidden_size {hidden_size} must not be negative.")
    return mt, given


def optimize_onnx(
    src: str | Path,
    dst: str | Path,
    num_heads: int | list[int],
    hidden_size: int,
    model_type: str = "bert",
    verify: bool = True,
    atol: float = 1e-3,
) -> dict:
    """Fuse an fp32 ONNX encoder with ONNX Runtime's transformer optimizer and save it to ``dst``.

    ``num_heads``: the model's head count, or one count per encoder layer after non-uniform
    pruning (0 for a layer whose attention was removed). Head counts written in the graph
    win (see :func:`make_heads_explicit`); a list that disagrees is reported per layer.
    ``model_type``: any BERT-family type (``bert``, ``distilbert``, ``roberta``, ...).
    With ``verify``, outputs are compared with the source at batch 3 x seq 11 and a
    difference above ``atol`` raises :class:`CheckFailed`.

    Returns ``fused`` (counts of fused op types), ``num_layers``, ``layers`` (per layer:
    heads, attention fused/unfused/absent, reason), ``unfused_layers``, ``fully_fused``,
    ``optimizer_warnings``, ``max_abs_diff`` and the op counts before and after."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    mt, given = _check_args(num_heads, hidden_size, model_type)
    src_model = onnx.load(str(src))
    rewritten = make_heads_explicit(src_model)
    heads = _heads_per_layer(src_model, rewritten)
    n_layers = len(_layer_ids(src_model))
    if given is not None and n_layers and len(given) != n_layers:
        raise UserError(f"optimize: num_heads lists {len(given)} layers but {src} has {n_layers} encoder layers.")
    uniform = 0 if given is not None else int(num_heads)
    capture, root = _Capture(), logging.getLogger()
    root.addHandler(capture)
    try:
        work = onnx.ModelProto()
        work.CopyFrom(src_model)
        opt = optimize_model(
            work,
            mt,
            num_heads=uniform,
            hidden_size=hidden_size if uniform else 0,
            optimization_options=FusionOptions(mt),
            opt_level=1,
            use_gpu=False,
        )
    finally:
        root.removeHandler(capture)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    opt.save_model_to_file(str(dst))
    layers = _layer_report(src_model, opt.model, heads, given)
    ops_after = count_ops(opt.model)
    report = {
        "model_type": mt,
        "num_heads": num_heads,
        "hidden_size": hidden_size,
        "fused": {k: ops_after[k] for k in FUSED_OPS if ops_after.get(k)},
        "num_layers": len(layers),
        "layers": layers,
        "unfused_layers": [e["layer"] for e in layers if e["attention"] == "unfused"],
        "fully_fused": all(e["attention"] != "unfused" for e in layers) and "LayerNormalization" not in ops_after,
        "optimizer_warnings": capture.messages,
        "ops_before": count_ops(onnx.load(str(src))),
        "ops_after": ops_after,
    }
    if verify:
        report["max_abs_diff"] = diff = max_output_diff(src, dst)
        if not diff <= atol:
            raise CheckFailed(
                f"optimize: fused model {dst} differs from {src} by {diff:.2e} (> {atol}); "
                f"the fusion is wrong for this graph (layers: {layers})."
            )
    return report
