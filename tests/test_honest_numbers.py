"""Numbers that mean what they say (issue 21): the int8 fallbacks choose on a slice of the training data and never
read the dev set, which is scored once afterwards; dynamic int8 is scored at batch 1 and at Predictor's batching
(the worse one counts); every variant is compared with PyTorch on the same dev examples (McNemar)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import write_pipeline

from compresstune.cli import main


def test_int8_fallbacks_never_read_the_dev_set(tmp_path, tiny_bert, glue_dir, monkeypatch):
    from compresstune.export.variants import VariantBuilder
    from compresstune.stages.export_check import Checker

    events = []

    def sentinel(name, real):
        def wrapped(self, *a, **k):
            events.append(name)
            return real(self, *a, **k)

        return wrapped

    for name in ("dev_metric", "dev_metric_of_session", "torch_dev_logits", "torch_metrics"):
        monkeypatch.setattr(Checker, name, sentinel("dev", getattr(Checker, name)))
    real_build = VariantBuilder.build

    def build(self, variant):
        events.append(f"build {variant}")
        try:
            return real_build(self, variant)
        finally:
            events.append("built")

    monkeypatch.setattr(VariantBuilder, "build", build)
    extra = "  min_agreement: 1.0\n  variants: [fp32, int8_dynamic, int8_static]\n  selection_examples: 40\n"
    write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, extra="", stages="[finetune, export]")
    text = (tmp_path / "p.yaml").read_text().replace("export:\n", "export:\n" + extra)
    (tmp_path / "p.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["pipeline", "run", "p.yaml", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    inside, depth = [], 0
    for e in events:
        depth += e.startswith("build ") - (e == "built")
        if depth and e == "dev":
            inside.append(e)
    assert any(e.startswith("build int8") for e in events) and "dev" in events
    assert inside == []  # the dev set is touched only outside every variant build
    man = json.loads((tmp_path / "exported" / "t" / "manifest.json").read_text())
    v = man["stages"]["export"]["summary"]["variants"]
    fb = v["int8_dynamic"]["details"]["fallback"]
    assert fb["target"] == 1.0 and len(fb["tries"]) >= 1  # the fallback ran, on the selection slice
    dyn = v["int8_dynamic"]["dev"]
    assert set(dyn["by_batching"]) == {"predict_32", "batch_1"}
    assert dyn["main"] == min(dyn["by_batching"].values()) and dyn["decided_by"] in dyn["by_batching"]
    for name in ("fp32", "int8_dynamic", "int8_static"):
        p = v[name]["dev"]["paired_vs_pytorch"]
        assert p["examples"] == 48 and 0 <= p["p_value"] <= 1
    assert v["fp32"]["dev"]["paired_vs_pytorch"]["only_pytorch_right"] == 0
    st = v["int8_static"]["details"]
    assert st["activations_quantized"] > 0 and st["weight_only"] is False  # QDQ on activations, not weight-only
    assert v["int8_dynamic"]["logit_tolerance"] == 1.0 and v["fp32"]["logit_tolerance"] == 1e-4


def test_a_variant_whose_logits_are_off_fails_even_with_the_right_metric(tmp_path):
    from compresstune.export.variants import verify_variant

    (tmp_path / "m.onnx").write_bytes(b"x")
    res = verify_variant(
        "int8_dynamic", tmp_path / "m.onnx", lambda p: {"1x7": 2.5}, lambda p: {"main": 90.0}, 90.0, 1.0, 1.0
    )
    assert res["passed"] is False and "logits differ by 2.50e+00 > 1" in res["error"]


def test_mcnemar_counts_and_exact_p():
    import numpy as np

    from compresstune.stages.export_check import mcnemar

    ref = np.array([True] * 10 + [False] * 2 + [True] * 5)
    var = np.array([False] * 10 + [True] * 2 + [True] * 5)
    res = mcnemar(ref, var)
    assert (res["only_pytorch_right"], res["only_variant_right"], res["examples"]) == (10, 2, 17)
    assert abs(res["p_value"] - 0.03857421875) < 1e-9  # two-sided exact binomial, 2 of 12 at 0.5
    assert mcnemar(ref, ref)["p_value"] == 1.0


def test_the_card_says_what_int8_users_get():
    from compresstune.deploy.card import model_card

    metric = {
        "name": "accuracy",
        "dev": 88.88,
        "by_batching": {"predict_32": 88.88, "batch_1": 89.11},
        "paired_vs_pytorch": {"examples": 872, "only_pytorch_right": 9, "only_variant_right": 6, "p_value": 0.61},
    }
    card = model_card({"labels": ["0", "1"], "text_fields": ["sentence"], "max_length": 128, "metric": metric})
    assert "measured at predict 32 88.88, batch 1 89.11; the lower one is given above" in card
    assert "9 right only for PyTorch, 6 only for this model (McNemar's exact test p = 0.61)" in card
