"""Learners, baselines and merge: parameter accounting against the paper, function
preservation at attach, exact merge, priming schedule."""

import types

import pytest
import torch

from compresstune.errors import UserError
from compresstune.methods.adapters import add_adapters
from compresstune.methods.far import ffn_node_change, split_ffns, unsplit_ffns
from compresstune.methods.groups import group_counts, param_groups
from compresstune.methods.learner_layer import LearnerLinear, attach_learners, learner_modules, merge_learners


def opts(**kw):
    base = {
        "rank": 64,
        "targets": ["q", "k", "v", "o", "ffn_in", "ffn_out"],
        "scale": 1.0,
        "init": "kaiming_zero",
        "priming_epochs": 0.0,
        "adapter_size": 256,
        "lora_alpha": 16.0,
    }
    base.update(kw)
    return types.SimpleNamespace(**base)


def setup_method(model, name, o, log=None):
    """A method from the registry, prepared as training would start it (no task: counting only)."""
    from compresstune.methods import PrepareContext, get_method

    method = get_method(name)
    return method.prepare(model, method.options(o), PrepareContext())


@pytest.fixture(scope="module")
def distil_factory():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig()

    def make():
        torch.manual_seed(0)
        return DistilBertForSequenceClassification(cfg)

    return make


def trainable(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def total(m):
    return sum(p.numel() for p in m.parameters())


def test_paper_parameter_accounting(distil_factory):
    m = distil_factory()
    assert total(m) == 66_955_010
    setup_method(m, "learner", opts(), log=lambda s: None)
    assert total(m) - 66_955_010 == 5_308_416
    assert trainable(m) == 5_961_986
    m = distil_factory()
    setup_method(m, "bitfit", opts(), log=lambda s: None)
    assert trainable(m) == 643_586
    m = distil_factory()
    setup_method(m, "adapters_seq", opts(), log=lambda s: None)
    assert trainable(m) == pytest.approx(5.34e6, rel=0.005)
    m = distil_factory()
    setup_method(m, "freeze_ffn", opts(), log=lambda s: None)
    assert trainable(m) == pytest.approx(14.80e6, rel=0.005)
    m = distil_factory()
    setup_method(m, "adapters_par", opts(), log=lambda s: None)
    assert trainable(m) == pytest.approx(5.34e6, rel=0.005)


def test_groups_partition_every_parameter(distil_factory):
    m = distil_factory()
    attach_learners(m, 8)
    g = param_groups(m)
    assert sum(len(v) for v in g.values()) == len(list(m.parameters()))
    assert not g["other"]
    c = group_counts(m)
    assert c["learners"]["total"] == 6 * 8 * (4 * (768 + 768) + (768 + 3072) * 2)


def test_groups_refuse_a_missing_head_module(tiny_bert):
    """A head module the architecture table names but the model lacks is an error, not a silently
    frozen head; an empty slot (BERT built without its pooler) is fine."""
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert param_groups(m)["head"]
    m.bert.pooler = None
    assert {id(p) for _, p in param_groups(m)["head"]} == {id(p) for p in m.classifier.parameters()}
    del m.classifier
    with pytest.raises(RuntimeError, match="no module `classifier`"):
        param_groups(m)


def test_attach_changes_nothing_and_merge_is_exact(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    x = {"input_ids": torch.randint(1000, 2000, (3, 11)), "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    ref = m(**x).logits
    attach_learners(m, 4)
    assert len(learner_modules(m)) == 2 * 6
    assert torch.equal(m(**x).logits, ref)
    for mod in learner_modules(m).values():  # pretend training moved P2
        torch.nn.init.normal_(mod.P2, std=1.0)
    trained = m(**x).logits
    assert (trained - ref).abs().max() > 1e-3, "the Learners must change the function for this test to mean anything"
    n = merge_learners(m)
    assert n == 12 and not learner_modules(m)
    assert (m(**x).logits - trained).abs().max() <= 1e-5
    assert all(type(mod) is torch.nn.Linear for mod in m.modules() if isinstance(mod, torch.nn.Linear))


def test_learners_sized_from_live_layer_and_targets_checked(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    layer = m.bert.encoder.layer[1]
    layer.intermediate.dense = torch.nn.Linear(32, 48)  # a pruned FFN
    layer.output.dense = torch.nn.Linear(48, 32)
    attach_learners(m, 4, targets=("ffn_in", "ffn_out"))
    assert layer.intermediate.dense.P2.shape == (4, 48) and layer.output.dense.P1.shape == (48, 4)
    with pytest.raises(UserError, match="already carries a Learner"):
        attach_learners(m, 4, targets=("ffn_in",))
    with pytest.raises(UserError, match="not known"):
        attach_learners(m, 4, targets=("q", "pooler"))
    assert not isinstance(
        m.bert.encoder.layer[0].attention.self.query, LearnerLinear
    )  # nothing changed by the failed call


def test_priming_hook_switches_attention(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    s = setup_method(m, "learner", opts(rank=4, priming_epochs=2), log=lambda s: None)
    att = [p for _, p in param_groups(m)["attention"]]
    ffn = [p for _, p in param_groups(m)["ffn"]]
    s.phase_hook(0, 0.0)
    assert all(p.requires_grad for p in att) and not any(p.requires_grad for p in ffn)
    s.phase_hook(10, 1.99)
    assert all(p.requires_grad for p in att)
    s.phase_hook(11, 2.0)
    assert not any(p.requires_grad for p in att)
    assert {id(p) for p in att} <= {id(p) for p in s.optimizer_params}


def test_lora_merge_is_exact_and_plain(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    s = setup_method(m, "lora", opts(rank=4), log=lambda s: None)
    inner = s.model
    for n, p in inner.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
        if "modules_to_save" in n and "classifier" in n:
            torch.nn.init.normal_(p, std=0.1)  # the head trained outside LoRA must survive the merge
    x = {"input_ids": torch.randint(1000, 2000, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    inner.eval()
    before = inner(**x).logits
    from compresstune.methods import merge

    merged, how, kept = merge(inner, s.structure)
    assert kept == {}
    assert "LoRA" in how
    assert (merged(**x).logits - before).abs().max() < 1e-5
    assert not any("lora" in n or "modules_to_save" in n for n, _ in merged.named_parameters())


def test_far_split_preserves_function_and_unsplits(tiny_bert):
    import copy

    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    moved = copy.deepcopy(m)
    with torch.no_grad():
        moved.bert.encoder.layer[0].intermediate.dense.weight[5] += 1.0  # node 5 changed the most
    scores = ffn_node_change(m, moved)
    assert int(scores[0].argmax()) == 5
    x = {"input_ids": torch.randint(1000, 2000, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    ref = m(**x).logits
    kept = split_ffns(m, scores, 0.25)
    assert kept == 2 * 16
    assert (m(**x).logits - ref).abs().max() < 1e-5
    frozen = [p for n, p in m.named_parameters() if "frozen_part" in n]
    assert frozen and not any(p.requires_grad for p in frozen)
    unsplit_ffns(m)
    assert isinstance(m.bert.encoder.layer[0].intermediate.dense, torch.nn.Linear)
    assert (m(**x).logits - ref).abs().max() < 1e-5


def test_adapters_start_as_identity(tiny_distilbert):
    from transformers import AutoModelForSequenceClassification

    for kind in ("sequential", "parallel"):
        m = AutoModelForSequenceClassification.from_pretrained(tiny_distilbert, num_labels=2).eval()
        x = {"input_ids": torch.randint(1000, 2000, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
        ref = m(**x).logits
        add_adapters(m, kind, 8)
        assert torch.allclose(m(**x).logits, ref, atol=1e-6)


def test_primed_learner_saves_one_low_precision_copy_of_its_input():
    """Under autocast, base and branch share one cast of x, so backward keeps it once."""
    from compresstune.measure.memory import SavedActivations
    from compresstune.methods.learner_layer import LearnerLinear

    torch.manual_seed(0)
    lin = LearnerLinear(torch.nn.Linear(64, 48), rank=4)
    x = torch.randn(8, 16, 64)  # the base weight trains too, as during priming
    with SavedActivations() as sa, torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    copies_of_x = [n for n in sa.seen.values() if n == x.numel() * 2]  # bf16 bytes of x
    assert len(copies_of_x) == 1
    y.float().sum().backward()
    assert lin.P1.grad is not None and lin.base.weight.grad is not None


def test_learner_computes_its_formula_and_merges_exactly_with_a_scale():
    """y = x W^T + b + scale * (x P1) P2, checked in float64 against the weights by hand, with P2 nonzero
    and scale != 1; the merged linear W' = W + scale * (P1 P2)^T computes the same."""
    torch.manual_seed(0)
    base = torch.nn.Linear(24, 40).double()
    lin = LearnerLinear(base, rank=3, scale=0.37)
    with torch.no_grad():
        lin.P2.normal_(std=0.5)  # as after training: the branch contributes
    x = torch.randn(5, 7, 24, dtype=torch.float64)
    W, b, P1, P2 = (t.detach() for t in (base.weight, base.bias, lin.P1, lin.P2))
    expected = torch.einsum("bti,oi->bto", x, W) + b + 0.37 * torch.einsum("btr,ro->bto", x @ P1, P2)
    with torch.no_grad():
        y = lin(x)
        branch = (y - base(x)).abs().max()
        merged = lin.merged_linear()(x)
    assert branch > 0.1, "the Learner branch must change the output for the check to mean anything"
    assert (y - expected).abs().max() < 1e-12
    assert (merged - expected).abs().max() < 1e-12
    unscaled = torch.einsum("bti,oi->bto", x, W) + b + torch.einsum("btr,ro->bto", x @ P1, P2)
    assert (y - unscaled).abs().max() > 0.05  # the scale is applied, not ignored


def test_merge_with_scale_is_exact_on_a_model(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    x = {"input_ids": torch.randint(1000, 2000, (3, 11)), "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    attach_learners(m, 4, scale=2.5)
    for mod in learner_modules(m).values():
        torch.nn.init.normal_(mod.P2, std=0.3)
    with torch.no_grad():
        trained = m(**x).logits
        for mod in learner_modules(m).values():
            mod.scale = 1.0
        unscaled = m(**x).logits
        for mod in learner_modules(m).values():
            mod.scale = 2.5
    assert (trained - unscaled).abs().max() > 1e-3, "the scale must matter for this test to mean anything"
    merge_learners(m)
    with torch.no_grad():
        assert (m(**x).logits - trained).abs().max() <= 1e-5
