"""Pruning with torch-pruning and distillation, on tiny random BERT and DistilBERT."""

import pytest
import torch

from compresstune.compress.distill import DistillLoss, every_other, keep_layers_student
from compresstune.compress.prune import PruneSpec, count_params, encoder_flops, prune_model, ratio_for_budget
from compresstune.export.onnx import export_onnx, make_session, max_abs_diff_at_shapes
from compresstune.methods import load_artifact as load_model
from compresstune.methods.learner_layer import attach_learners, learner_modules
from compresstune.models.arch import SkippedAttention, encoder_layers
from compresstune.models.artifacts import layer_shapes, save_model


def _model(path, n=2):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=n).eval()


def _x(distil=False):
    x = {"input_ids": torch.randint(1000, 2000, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    return x


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_distilbert"])
def test_uniform_prune_shrinks_matrices_keeps_hidden_and_reloads(request, fixture, tmp_path):
    from transformers import AutoTokenizer

    path = request.getfixturevalue(fixture)
    m = _model(path)
    hidden_before = m.config.hidden_size if hasattr(m.config, "hidden_size") else m.config.dim
    rep = prune_model(m, PruneSpec(0.5, 0.5, "uniform"))
    assert [s["heads"] for s in rep["after"]["layer_shapes"]] == [2, 2]
    assert [s["ffn"] for s in rep["after"]["layer_shapes"]] == [32, 32]
    assert rep["after"]["params"]["encoder"] < 0.6 * rep["before"]["params"]["encoder"]
    assert rep["after"]["params"]["embeddings"] == rep["before"]["params"]["embeddings"]  # hidden size kept
    emb = m.distilbert.embeddings if fixture == "tiny_distilbert" else m.bert.embeddings
    assert emb.word_embeddings.weight.shape[1] == hidden_before
    x = _x()
    y = m(**x).logits
    save_model(m, AutoTokenizer.from_pretrained(path), tmp_path / "p", {"num_labels": 2})
    m2, _, meta = load_model(tmp_path / "p")  # no torch-pruning, no original model
    assert not meta["plain_hf"] and torch.allclose(m2(**x).logits, y, atol=1e-6)
    sess = make_session(export_onnx(m2, tmp_path / "p.onnx"), "cpu")
    assert max(max_abs_diff_at_shapes(m2, sess, [(1, 7), (3, 19)]).values()) < 1e-4


def test_global_prune_gives_per_layer_widths_and_flops_drop(tiny_bert):
    m = _model(tiny_bert)
    f0 = encoder_flops(m, 128)
    prune_model(m, PruneSpec(0.5, 0.6, "global"))
    shapes = layer_shapes(m)
    assert sum(s["ffn"] for s in shapes) == pytest.approx(2 * 64 * 0.4, abs=2)
    assert encoder_flops(m, 128) < 0.7 * f0
    assert m(**_x()).logits.shape == (2, 2)


def test_layer_with_all_heads_pruned_skips_attention_and_takes_learners(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    # all heads of layer 0 pruned by hand (torch-pruning keeps at least one head in uniform mode)
    m = _model(tiny_bert)
    layer = m.bert.encoder.layer[0]
    att = layer.attention.self
    for name in ("query", "key", "value"):
        setattr(att, name, torch.nn.Linear(32, 0))
    layer.attention.output.dense = torch.nn.Linear(0, 32)
    from compresstune.models.artifacts import fix_attention_attributes

    fix_attention_attributes(m)
    assert isinstance(layer.attention, SkippedAttention)
    assert layer_shapes(m)[0]["heads"] == 0
    x = _x()
    y = m(**x).logits
    assert torch.isfinite(y).all()
    save_model(m, AutoTokenizer.from_pretrained(tiny_bert), tmp_path / "s", {"num_labels": 2})
    m2, _, _ = load_model(tmp_path / "s")
    assert torch.allclose(m2(**x).logits, y, atol=1e-6)
    attach_learners(m2, 4)
    assert len(learner_modules(m2)) == 2 + 6  # layer 0: FFN only
    sess = make_session(export_onnx(m2, tmp_path / "s.onnx"), "cpu")
    assert max(max_abs_diff_at_shapes(m2, sess, [(1, 7), (3, 19)]).values()) < 1e-4


def _with_dead_neurons(path):
    """A model whose FFN neurons 0, 4, 8, ... have the largest input weights (x10) but no effect on the output
    (their FFN-out columns are zero): magnitude ranks them first, first-order Taylor (|w * dL/dw| = 0) last."""
    m = _model(path)
    dead = torch.arange(0, 64, 4)
    with torch.no_grad():
        for layer in m.bert.encoder.layer:
            layer.intermediate.dense.weight[dead] *= 10
            layer.intermediate.dense.bias[dead] *= 10
            layer.output.dense.weight[:, dead] = 0
    rows = [layer.intermediate.dense.weight.detach().clone() for layer in m.bert.encoder.layer]
    return m, set(dead.tolist()), rows


def _kept_neurons(m, rows_before) -> list[set[int]]:
    """Per layer, the original indices of the FFN neurons that survived pruning (matched by their weight rows)."""
    out = []
    for layer, before in zip(m.bert.encoder.layer, rows_before):
        after = layer.intermediate.dense.weight.detach()
        out.append({int((before == r).all(1).nonzero()[0, 0]) for r in after})
    return out


def test_taylor_importance_prunes_by_effect_on_the_loss_not_by_magnitude(tiny_bert, glue_dir):
    from transformers import AutoTokenizer

    from compresstune.data.batching import collate, encode
    from compresstune.data.glue import load_glue

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    sp = load_glue("sst2", "local", str(glue_dir)).train.subset(64, 0)
    enc = encode(tok, sp, 32)
    batches = [(collate(enc[i : i + 32], 0), torch.tensor(sp.labels[i : i + 32])) for i in (0, 32)]
    kept = {}
    for importance in ("magnitude", "taylor"):
        m, dead, rows = _with_dead_neurons(tiny_bert)
        rep = prune_model(m, PruneSpec(0.5, 0.5, "uniform", importance), batches if importance == "taylor" else None)
        assert [s["heads"] for s in rep["after"]["layer_shapes"]] == [2, 2]
        assert [s["ffn"] for s in rep["after"]["layer_shapes"]] == [32, 32]
        kept[importance] = _kept_neurons(m, rows)
    assert all(dead <= k for k in kept["magnitude"])  # the largest weights, kept by magnitude
    assert all(not (dead & k) for k in kept["taylor"])  # no effect on the loss: pruned first by Taylor


def test_param_budget_is_met(tiny_bert):
    m = _model(tiny_bert)
    target = count_params(m)["total"] - 5_000
    r = ratio_for_budget(m, PruneSpec(mode="uniform"), lambda mm: count_params(mm)["total"], target)
    trial = _model(tiny_bert)
    prune_model(trial, PruneSpec(r, r, "uniform"))
    assert count_params(trial)["total"] <= target
    from compresstune.errors import UserError

    with pytest.raises(UserError, match="cannot be met"):
        ratio_for_budget(
            m, PruneSpec(mode="uniform"), lambda mm: count_params(mm)["total"], count_params(m)["embeddings"]
        )


def test_keep_layers_student_and_distill_loss(tiny_bert):
    t = _model(tiny_bert)
    assert every_other(6, 3) == [1, 3, 5] and every_other(2, 1) == [1]
    s = keep_layers_student(t, [1])
    assert len(encoder_layers(s)) == 1 and s.config.num_hidden_layers == 1 and len(encoder_layers(t)) == 2
    assert torch.equal(encoder_layers(s)[0].intermediate.dense.weight, encoder_layers(t)[1].intermediate.dense.weight)
    x = _x()
    x["token_type_ids"] = torch.zeros_like(x["input_ids"])
    loss = DistillLoss(t, [1], logit_weight=1.0, hidden_weight=1.0)
    same = DistillLoss(t, [0, 1], logit_weight=1.0, hidden_weight=1.0)
    assert same(t, x, torch.tensor([0, 1])).item() == pytest.approx(
        0.0, abs=1e-6
    )  # a model distils to itself at zero loss
    with torch.no_grad():  # move the student away from the teacher so there is something to learn
        torch.manual_seed(1)
        for p in encoder_layers(s).parameters():
            p.add_(0.2 * torch.randn_like(p))
    l0 = loss(s, x, torch.tensor([0, 1]))
    opt = torch.optim.Adam(s.parameters(), lr=3e-3)
    for _ in range(40):
        lv = loss(s, x, torch.tensor([0, 1]))
        opt.zero_grad()
        lv.backward()
        opt.step()
    assert lv.item() < 0.5 * l0.item()


def test_uniform_ffn_only_pruning_stays_a_plain_hf_checkpoint(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = _model(tiny_bert)
    prune_model(m, PruneSpec(0.0, 0.25, "uniform"))
    assert m.config.intermediate_size == 48
    x = _x()
    y = m(**x).logits
    save_model(m, AutoTokenizer.from_pretrained(tiny_bert), tmp_path / "f", {"num_labels": 2})
    assert load_model(tmp_path / "f")[2]["plain_hf"]
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "f").eval()
    assert torch.allclose(plain(**x).logits, y, atol=1e-6)


def test_head_ratio_means_the_nearest_whole_number_of_heads(tiny_bert):
    import math

    from compresstune.compress.prune import exact_head_ratio

    # torch-pruning removes ceil(ratio * heads): 0.667 of 12 heads would remove 9, not 8
    assert math.ceil(exact_head_ratio(0.667, 12) * 12) == 8 and math.ceil(exact_head_ratio(0.5, 12) * 12) == 6
    assert exact_head_ratio(0.01, 12) == 0.0
    m = _model(tiny_bert)  # 4 heads per layer
    rep = prune_model(m, PruneSpec(0.3, 0.5, "uniform"))  # 1.2 heads -> 1 removed (ceil would remove 2)
    assert [s["heads"] for s in rep["after"]["layer_shapes"]] == [3, 3]


@pytest.mark.parametrize(
    "head_ratio, ffn_ratio, heads, ffn", [(0.5, 0.0, 2, 64), (0.5, 0.25, 2, 48), (0.25, 0.75, 3, 16)]
)
def test_head_and_ffn_ratios_each_take_effect_alone_and_together(tiny_bert, head_ratio, ffn_ratio, heads, ffn):
    """Heads-only pruning once removed nothing (the per-group cap was the FFN ratio, 0)."""
    m = _model(tiny_bert)
    x = _x()
    rep = prune_model(m, PruneSpec(head_ratio, ffn_ratio, "uniform"))
    assert [(s["heads"], s["ffn"]) for s in rep["after"]["layer_shapes"]] == [(heads, ffn)] * 2
    assert m(**x).logits.shape == (x["input_ids"].shape[0], 2)


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_distilbert"])
def test_hidden_size_pruning_shrinks_the_residual_stream_and_reloads(request, fixture, tmp_path):
    from transformers import AutoTokenizer

    path = request.getfixturevalue(fixture)
    m = _model(path)
    rep = prune_model(
        m, PruneSpec(0.5, 0.5, "uniform", hidden_ratio=0.25)
    )  # 32 -> 24 (a multiple of the 4 config heads)
    hidden = m.config.hidden_size if fixture == "tiny_bert" else m.config.dim
    assert hidden == 24
    emb = m.distilbert.embeddings if fixture == "tiny_distilbert" else m.bert.embeddings
    assert emb.word_embeddings.weight.shape[1] == 24 and emb.LayerNorm.normalized_shape[0] == 24
    assert [(s["heads"], s["head_dim"], s["ffn"]) for s in rep["after"]["layer_shapes"]] == [
        (2, 8, 32),
        (2, 8, 32),
    ]  # head size kept
    assert rep["after"]["params"]["embeddings"] < 0.8 * rep["before"]["params"]["embeddings"]
    x = _x()
    y = m(**x).logits
    assert torch.isfinite(y).all()
    save_model(m, AutoTokenizer.from_pretrained(path), tmp_path / "p", {"num_labels": 2})
    m2, _, meta = load_model(tmp_path / "p")
    assert not meta["plain_hf"] and torch.allclose(m2(**x).logits, y, atol=1e-6)
    sess = make_session(export_onnx(m2, tmp_path / "p.onnx"), "cpu")
    assert max(max_abs_diff_at_shapes(m2, sess, [(1, 7), (3, 19)]).values()) < 1e-4


def test_hidden_pruning_with_hidden_state_healing_is_a_config_error(tmp_path, tiny_bert, glue_dir):
    from click.testing import CliRunner
    from conftest import write_pipeline

    from compresstune.cli import main

    extra = "compress: {method: prune, hidden_ratio: 0.25, heal_epochs: 0.5}\n"
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, extra=extra, stages="[compress, export]")
    r = CliRunner().invoke(main, ["pipeline", "validate", str(p)])
    assert r.exit_code == 2 and "hidden_weight: 0" in r.output
    r = CliRunner().invoke(main, ["pipeline", "validate", str(p), "compress.hidden_weight=0"])
    assert r.exit_code == 2 and "every loss weight of the task-agnostic healing" in r.output  # no teacher: no logits
    r = CliRunner().invoke(
        main, ["pipeline", "validate", str(p), "compress.hidden_weight=0", "compress.attention_weight=1"]
    )
    assert r.exit_code == 0, r.output
