"""INT8 (CPU) and FP16 (GPU) variants of an exported encoder, made with ONNX Runtime's own tools.

* :func:`quantize_int8_dynamic`: ``quantize_dynamic``. On a fused graph (see
  :mod:`compresstune.export.optimize`) the op types are MatMul *and* Attention, so the
  fused attention becomes QAttention; with MatMul alone its QKV projection stays fp32.
  A fused graph needs ``DefaultTensorType=FLOAT`` (its contrib ops have no ONNX type inference).
* static int8, in :mod:`compresstune.export.quantize_static`: ``quantize_int8_static``, ``quantize_static``
  in QDQ format with a calibration reader over given feeds. Symbolic shape inference runs first:
  without it, calibration on a fused graph finds no activation tensors (MinMax silently quantizes
  weights only; entropy/percentile fail with "Histogram has not been collected"). QDQ has no
  Attention quantizer, so on a fused graph the attention (QKV projection included) stays fp32
  while the other MatMuls become int8.
* ``layer_sensitivity`` / ``static_with_fallback`` (also in ``quantize_static``): accuracy-driven
  fallback. Nodes are grouped by encoder layer (``/layer.N/`` in node names) plus ``embeddings`` and ``head``. A group's
  sensitivity is how much the logit MSE against fp32 (on a few batches) drops when only that group
  is kept in float while everything else is quantized ("leave one out"). Calibration runs once
  (ORT's calibration cache) and every try reuses the ranges, so a try costs a re-quantization and a
  few forward passes. The fallback keeps the most sensitive groups in float, one more per try, until
  the caller's ``evaluate`` passes.
* :func:`convert_fp16`: ORT's float16 conversion with ``keep_io_types`` (int64 ids in, fp32 logits out).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from ..errors import CheckFailed
from .optimize import count_ops

METHODS = ("minmax", "entropy", "percentile")
_LAYER_RE = re.compile(r"/layer\.(\d+)/")
QUANT_OPS = (
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QEmbedLayerNormalization",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
)


def _load(path) -> onnx.ModelProto:
    return path if isinstance(path, onnx.ModelProto) else onnx.load(str(path))


def _size_mb(path) -> float:
    return round(os.path.getsize(path) / 2**20, 3)


def _weight_summary(model: onnx.ModelProto) -> dict:
    """Bytes of initializers by element type: how much of the model is stored as int8."""
    by_type: Counter = Counter()
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        by_type[onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name] += (
            n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        )
    total = sum(by_type.values()) or 1
    int8 = sum(v for k, v in by_type.items() if k in ("int8", "uint8"))
    return {"initializer_bytes": dict(by_type), "int8_fraction": round(int8 / total, 4)}


def _qdq_fed(model: onnx.ModelProto) -> tuple[dict[str, int], int]:
    """Counts of MatMul/Gemm/Gather nodes reading a DequantizeLinear output (int8 in QDQ form); MatMuls reading none."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed: Counter = Counter()
    float_mm = 0
    for n in model.graph.node:
        hit = n.op_type in ("MatMul", "Gemm", "Gather") and any(i in dq for i in n.input)
        if hit:
            fed[n.op_type] += 1
        float_mm += n.op_type == "MatMul" and not hit
    return dict(fed), float_mm


def _report(src, dst, extra: dict) -> dict:
    before, after = _load(src), _load(dst)
    ops_b, ops_a = count_ops(before), count_ops(after)
    qdq, float_mm = _qdq_fed(after)
    inits = {t.name for t in after.graph.initializer}
    acts = sum(n.op_type == "QuantizeLinear" and n.input[0] not in inits for n in after.graph.node)
    static = {"activations_quantized": acts, "weight_only": acts == 0} if extra.get("mode") == "static_qdq" else {}
    return {
        **extra,
        **static,
        "quantized_ops": {k: ops_a[k] for k in QUANT_OPS if ops_a.get(k)},
        "qdq_quantized_nodes": qdq,
        "float_matmuls_left": float_mm,
        "float_attention_left": ops_a.get("Attention", 0),
        "ops_before": ops_b,
        "ops_after": ops_a,
        "size_mb_before": _size_mb(src),
        "size_mb_after": _size_mb(dst),
        **_weight_summary(after),
    }


def _no_preprocess_hint(record: logging.LogRecord) -> bool:
    # ORT's quantizers log "Please consider to run pre-processing before quantization" on the root logger for
    # every model; here the graph is the exporter's (dynamic) or already prepared (static): the hint is noise
    return not record.getMessage().startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def _quiet_hint():
    root = logging.getLogger()
    root.addFilter(_no_preprocess_hint)
    try:
        yield
    finally:
        root.removeFilter(_no_preprocess_hint)


def quantize_int8_dynamic(
    src: str | Path,
    dst: str | Path,
    per_channel: bool = False,
    quantize_embeddings: bool = False,
    reduce_range: bool = False,
    nodes_to_exclude: Sequence[str] = (),
) -> dict:
    """Dynamic int8 quantization (weights int8, activations quantized at run time) of ``src`` into ``dst``.

    Quantizes MatMul and fused Attention nodes always; embedding tables (Gather and
    EmbedLayerNormalization) only with ``quantize_embeddings``. Works on fp32 and fused graphs.
    Returns the quantized op counts, float MatMul/Attention nodes left, op counts before and
    after, file sizes and the int8 fraction of the initializer bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = ["MatMul", "Attention"] + (["Gather", "EmbedLayerNormalization"] if quantize_embeddings else [])
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with _quiet_hint():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=op_types,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return _report(
        src,
        dst,
        {
            "mode": "dynamic",
            "per_channel": per_channel,
            "quantize_embeddings": quantize_embeddings,
            "reduce_range": reduce_range,
            "op_types": op_types,
            "nodes_excluded": list(nodes_to_exclude),
        },
    )


def node_groups(src: str | Path | onnx.ModelProto, op_types: Sequence[str] = ("MatMul",)) -> dict[str, list[str]]:
    """Quantizable nodes (of ``op_types``) grouped as ``layer.N`` (by ``/layer.N/`` in the node name),
    ``embeddings`` (names containing ``embeddings``) and ``head`` (everything else, e.g. pooler/classifier)."""
    groups: dict[str, list[str]] = {}
    for n in _load(src).graph.node:
        if n.op_type not in op_types:
            continue
        m = _LAYER_RE.search(n.name)
        key = f"layer.{m.group(1)}" if m else ("embeddings" if "embeddings" in n.name else "head")
        groups.setdefault(key, []).append(n.name)
    layer_keys = sorted((k for k in groups if k.startswith("layer.")), key=lambda k: int(k.split(".")[1]))
    return {k: groups[k] for k in [*layer_keys, "embeddings", "head"] if k in groups}


def convert_fp16(
    src: str | Path, dst: str | Path, keep_io_types: bool = True, op_block_list: Sequence[str] | None = None
) -> dict:
    """FP16 copy of ``src`` (the GPU variant) with ONNX Runtime's float16 converter.

    With ``keep_io_types`` the token-id inputs stay int64 and the logits stay float32 (Casts
    at the edges). Works on fp32 and fused graphs (symbolic shape inference types the fused
    ops). FP16 is slower than fp32 on CPU; use it with the CUDA provider. Returns input and
    output element types, initializer bytes by type, Cast count and sizes."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    kwargs = {"keep_io_types": keep_io_types}
    if op_block_list is not None:
        kwargs["op_block_list"] = list(op_block_list)
    model.convert_float_to_float16(**kwargs)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(dst))
    out = onnx.load(str(dst))
    onnx.checker.check_model(out)
    io = {
        v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        for v in [*out.graph.input, *out.graph.output]
    }
    if keep_io_types and any(io[v.name] == "float16" for v in [*out.graph.input, *out.graph.output]):
        raise CheckFailed(f"fp16: outputs of {dst} are not float32 although keep_io_types was set: {io}")
    return {
        "io_types": io,
        "casts": count_ops(out).get("Cast", 0),
        "size_mb_before": _size_mb(src),
        "size_mb_after": _size_mb(dst),
        **_weight_summary(out),
    }
