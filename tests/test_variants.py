"""Optimized (fused), int8 and fp16 ONNX variants of tiny random BERT/DistilBERT models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compresstune.export.onnx import export_onnx, make_session
from compresstune.export.optimize import count_ops, optimize_onnx
from compresstune.export.quantize import convert_fp16, node_groups, quantize_int8_dynamic
from compresstune.export.quantize_static import layer_sensitivity, quantize_int8_static, static_with_fallback

SENTENCES = [
    "a gripping , beautifully acted film .",
    "the plot is thin and the jokes fall flat .",
    "one of the best movies of the year",
    "i wanted to like it , but it is a mess .",
    "charming",
    "a dull , lifeless exercise in style over substance .",
    "it works .",
    "never again",
]


def _model(folder, attn: str | None = "eager"):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    kw = {"attn_implementation": attn} if attn else {}
    return AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2, **kw).eval()


def _feeds(folder, n_batches: int = 4, batch: int = 2, token_type: bool = True) -> list[dict[str, np.ndarray]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    out = []
    for b in range(n_batches):
        texts = [SENTENCES[(b * batch + i) % len(SENTENCES)] for i in range(batch)]
        enc = tok(texts, padding=True, return_tensors="np")
        keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_type else [])
        out.append({k: enc[k].astype(np.int64) for k in keys})
    return out


def _run(path, feeds) -> np.ndarray:
    sess = make_session(path, "cpu", 1)
    names = {i.name for i in sess.get_inputs()}
    return np.concatenate([sess.run(["logits"], {k: v for k, v in f.items() if k in names})[0] for f in feeds])


def _random_feeds(batch: int, seq: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(batch * 100 + seq)
    mask = np.ones((batch, seq), np.int64)
    mask[1:, seq // 2 :] = 0
    ids = rng.integers(1000, 3000, (batch, seq)) * mask
    return [{"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}]


@pytest.fixture(scope="module")
def bert_onnx(tiny_bert, tmp_path_factory):
    """(fp32 eager export, fused export, optimize report) of the tiny BERT."""
    d = tmp_path_factory.mktemp("variants")
    fp32 = export_onnx(_model(tiny_bert), d / "fp32.onnx")
    report = optimize_onnx(fp32, d / "opt.onnx", num_heads=4, hidden_size=32)
    return fp32, d / "opt.onnx", report


def test_eager_export_fuses_one_attention_per_layer(bert_onnx):
    fp32, opt, report = bert_onnx
    assert report["fused"]["Attention"] == 2 and count_ops(opt)["Attention"] == 2
    assert report["fused"]["EmbedLayerNormalization"] == 1 and report["fused"]["SkipLayerNormalization"] == 4
    assert report["num_layers"] == 2 and report["unfused_layers"] == [] and report["fully_fused"]
    feeds = _random_feeds(3, 19)  # not the export shape (2, 16)
    np.testing.assert_allclose(_run(opt, feeds), _run(fp32, feeds), atol=1e-4, rtol=0)


def test_sdpa_export_is_reported_unfused(tiny_bert, tmp_path):
    from compresstune.export.onnx import _trace

    fp32 = tmp_path / "sdpa.onnx"
    _trace(_model(tiny_bert, attn=None).eval(), fp32, 17)  # the SDPA path (transformers 5's default), not export_onnx's
    report = optimize_onnx(fp32, tmp_path / "opt.onnx", num_heads=4, hidden_size=32)
    assert report["fused"].get("Attention", 0) == 0 and report["unfused_layers"] == [0, 1]
    assert "eager" in report["layers"][0]["reason"] and not report["fully_fused"]


def test_distilbert_fuses_as_bert(tiny_distilbert, tmp_path):
    fp32 = export_onnx(_model(tiny_distilbert), tmp_path / "d.onnx")
    report = optimize_onnx(fp32, tmp_path / "d_opt.onnx", num_heads=4, hidden_size=32, model_type="distilbert")
    assert report["model_type"] == "bert" and report["fused"]["Attention"] == 2 and report["unfused_layers"] == []


class _NoAttention(nn.Module):
    """A BERT attention block with every head pruned: LayerNorm(o.bias + x)."""

    def __init__(self, output: nn.Module):
        super().__init__()
        self.output = output

    def forward(self, hidden_states, *args, **kwargs):
        return self.output.LayerNorm(self.output.dense.bias.expand_as(hidden_states) + hidden_states), None


def _keep_heads(layer, keep: int, head_size: int = 8) -> None:
    """Physically keep the first ``keep`` heads of one BERT layer (weights sharpened so heads matter)."""
    if keep == 0:
        layer.attention = _NoAttention(layer.attention.output)
        return
    att, n = layer.attention.self, keep * head_size
    for name in ("query", "key", "value"):
        old = getattr(att, name)
        new = nn.Linear(old.in_features, n)
        new.weight.data, new.bias.data = old.weight.data[:n] * 8, old.bias.data[:n].clone()
        setattr(att, name, new)
    dense = layer.attention.output.dense
    new = nn.Linear(n, dense.out_features)
    new.weight.data, new.bias.data = dense.weight.data[:, :n].clone(), dense.bias.data.clone()
    layer.attention.output.dense = new
    att.num_attention_heads, att.all_head_size = keep, n


def test_non_uniform_heads_fuse_per_layer(tiny_bert, tmp_path):
    model = _model(tiny_bert)
    _keep_heads(model.bert.encoder.layer[0], 2)
    _keep_heads(model.bert.encoder.layer[1], 0)
    fp32 = export_onnx(model, tmp_path / "pruned.onnx")
    # a single (wrong for layer 0) head count: ORT alone would fuse layer 0 with 4 heads of size 4
    report = optimize_onnx(fp32, tmp_path / "pruned_opt.onnx", num_heads=4, hidden_size=32)
    layers = {e["layer"]: e for e in report["layers"]}
    assert layers[0]["heads"] == 2 and layers[0]["attention"] == "fused"
    assert layers[1]["heads"] == 0 and layers[1]["attention"] == "absent" and "pruned" in layers[1]["reason"]
    assert report["fused"]["Attention"] == 1 and report["max_abs_diff"] < 1e-4
    listed = optimize_onnx(fp32, tmp_path / "pruned_opt2.onnx", num_heads=[2, 0], hidden_size=32)
    assert listed["fused"]["Attention"] == 1 and all("heads_given" not in e for e in listed["layers"])


def _int8_weights(path) -> int:
    return sum(
        1
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    )


def test_dynamic_int8_quantizes_matmul_weights(bert_onnx, tiny_bert, tmp_path, caplog):
    fp32, opt, _ = bert_onnx
    with caplog.at_level("WARNING"):
        rep = quantize_int8_dynamic(opt, tmp_path / "dyn.onnx")
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]  # ORT's hint is filtered out
    ops = count_ops(tmp_path / "dyn.onnx")
    assert ops.get("MatMul", 0) == 0 and ops["MatMulInteger"] >= 6 and ops["QAttention"] == 2
    assert rep["float_matmuls_left"] == 0 and _int8_weights(tmp_path / "dyn.onnx") >= 8
    assert "QEmbedLayerNormalization" not in ops
    feeds = _feeds(tiny_bert)
    assert np.abs(_run(tmp_path / "dyn.onnx", feeds) - _run(fp32, feeds)).max() < 0.05
    emb = quantize_int8_dynamic(opt, tmp_path / "dyn_emb.onnx", per_channel=True, quantize_embeddings=True)
    assert emb["quantized_ops"].get("QEmbedLayerNormalization") == 1
    assert emb["size_mb_after"] < rep["size_mb_after"] < rep["size_mb_before"]


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_qdq_on_fused_graph(bert_onnx, tiny_bert, tmp_path, method):
    fp32, opt, _ = bert_onnx
    feeds = _feeds(tiny_bert)
    rep = quantize_int8_static(opt, tmp_path / "s.onnx", feeds, method=method)
    assert rep["qdq_quantized_nodes"]["MatMul"] == 6  # attention output + 2 FFN per layer; Attention stays fp32
    assert rep["float_attention_left"] == 2
    assert np.abs(_run(tmp_path / "s.onnx", feeds) - _run(fp32, feeds)).max() < 0.05


def _float_layers(path) -> set[str]:
    m = onnx.load(str(path))
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    groups = node_groups(m)
    names = {n.name for n in m.graph.node if n.op_type == "MatMul" and not any(i in dq for i in n.input)}
    return {g for g, nodes in groups.items() if g.startswith("layer.") and set(nodes) & names}


def test_static_fallback_keeps_sensitive_layer_float(bert_onnx, tiny_bert, tmp_path):
    fp32, _, _ = bert_onnx
    calls = []

    def evaluate(path) -> float:  # fails until at least one encoder layer stays float
        calls.append(sorted(_float_layers(path)))
        return 90.0 if calls[-1] else 80.0

    feeds = _feeds(tiny_bert)
    res = static_with_fallback(fp32, tmp_path / "fb.onnx", feeds, evaluate, reference=90.0, tolerance=1.0)
    assert res["passed"] and len(res["tries"]) == 2 and calls[0] == []
    assert res["tries"][0]["metric"] == 80.0 and res["tries"][1]["metric"] == 90.0
    assert len(res["float_groups"]) == 1 and res["float_groups"][0].startswith("layer.") and res["float_nodes"]
    assert _float_layers(tmp_path / "fb.onnx") == set(res["float_groups"])
    assert {r["group"] for r in res["sensitivity"]["groups"]} >= {"layer.0", "layer.1"}


def test_static_fallback_reports_failure(bert_onnx, tiny_bert, tmp_path):
    fp32, _, _ = bert_onnx
    res = static_with_fallback(
        fp32,
        tmp_path / "fb.onnx",
        _feeds(tiny_bert, 2),
        lambda p: 0.0,
        reference=1.0,
        tolerance=0.1,
        max_float_groups=1,
    )
    assert not res["passed"] and len(res["tries"]) == 2 and res["metric"] == 0.0


def test_layer_sensitivity_ranks_groups(bert_onnx, tiny_bert):
    fp32, _, _ = bert_onnx
    sens = layer_sensitivity(fp32, _feeds(tiny_bert, 2))
    gains = [r["gain"] for r in sens["groups"]]
    assert gains == sorted(gains, reverse=True) and sens["mse_all_quantized"] > 0


def test_fp16_keeps_int64_inputs_and_float32_logits(bert_onnx, tiny_bert, tmp_path):
    fp32, opt, _ = bert_onnx
    rep = convert_fp16(opt, tmp_path / "fp16.onnx")
    m = onnx.load(str(tmp_path / "fp16.onnx"))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in m.graph.input)
    assert [o.type.tensor_type.elem_type for o in m.graph.output] == [onnx.TensorProto.FLOAT]
    assert rep["initializer_bytes"].get("float16", 0) > 0 and rep["size_mb_after"] < rep["size_mb_before"]
    feeds = _feeds(tiny_bert, 1)
    assert np.abs(_run(tmp_path / "fp16.onnx", feeds) - _run(fp32, feeds)).max() < 1e-2


@pytest.mark.parametrize("with_emb, without, kept", [(0.995, 0.90, True), (0.95, 0.995, False), (0.95, 0.93, True)])
def test_auto_embeddings_stay_int8_unless_float_ones_agree_more(bert_onnx, tmp_path, with_emb, without, kept):
    """``quantize_embeddings: auto`` (the default) ships int8 embedding tables unless keeping them float gives
    more label agreement on the selection slice; the agreement here is faked by the embedding table's type."""
    from compresstune.config.sections import ExportConfig
    from compresstune.export.variants import VariantBuilder

    fp32, _, _ = bert_onnx
    cfg = ExportConfig(min_agreement=0.99)
    assert cfg.quantize_embeddings == "auto"

    def int8_embeddings(path) -> bool:
        m = onnx.load(str(path))
        return any(n.op_type == "Gather" and any("quantized" in i for i in n.input) for n in m.graph.node)

    def agreement(path):
        return with_emb if int8_embeddings(path) else without

    b = VariantBuilder(
        fp32, tmp_path, 4, 32, "bert", cfg, lambda: [], lambda p: 0.0, 0.0, log=lambda *_: None, agreement=agreement
    )
    details = b.build("int8_dynamic")
    assert details["quantize_embeddings"] is kept and int8_embeddings(b.built["int8_dynamic"]) is kept
    assert details["quantize_embeddings_setting"] == "auto"
    assert details["fallback"]["tries"][0]["agreement"] == (with_emb if kept else without)
