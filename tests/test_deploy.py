"""Deployment bundles: Predictor (no torch/transformers), write_bundle, predict_main, edge formats."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compresstune.deploy import Predictor, predict_main
from compresstune.deploy.bundle import write_bundle
from compresstune.deploy.card import card_python_snippet, model_card
from compresstune.deploy.edge import fixed_shape, to_ort_format
from compresstune.deploy.layout import load_config, model_path
from compresstune.deploy.vocab import trim_vocab
from compresstune.errors import CheckFailed, UserError

REPO = Path(__file__).resolve().parent.parent
SENTS = [
    "a gripping , funny film .",
    "dull and far too long",
    "the cast is great but the plot is thin",
    "it works .",
    "an utterly forgettable sequel that nobody asked for",
]
PAIRS = [
    ("A man plays a guitar.", "Someone is making music."),
    ("The cat sleeps.", "A dog barks loudly at night."),
    ("Stocks fell sharply today.", "Markets dropped."),
]
LONG = " ".join(["remarkably"] * 60)
MAXLEN = 32


def _model(folder, num_labels):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels).eval()
    with torch.no_grad():  # a random tiny model gives nearly the same logits for every input: spread and centre them
        model.classifier.weight.mul_(300.0)
        model.classifier.bias.sub_(torch.from_numpy(_torch_logits(model, folder, SENTS)).mean(0))
    return model


def _bundle(tmp, folder, num_labels, cfg, name):
    from compresstune.export.onnx import export_onnx

    model = _model(folder, num_labels)
    onnx_path = export_onnx(model, tmp / f"{name}.onnx", opset=17)
    model.eval()  # export_onnx leaves the model in training mode (its wrapper module is restored to train())
    sizes = write_bundle(tmp / name, onnx_path, folder, {"max_length": MAXLEN, **cfg}, None)
    return tmp / name, model, sizes


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_bert, tiny_distilbert):
    tmp = tmp_path_factory.mktemp("bundles")
    single = {
        "name": "sst2",
        "label_names": ["negative", "positive"],
        "is_regression": False,
        "metric": "accuracy",
        "dev_metric": 51.5,
        "text_fields": ["sentence"],
        "variant": "fp32",
    }
    out = {"single": _bundle(tmp, tiny_bert, 2, single, "single")}
    out["pair"] = _bundle(
        tmp,
        tiny_bert,
        3,
        {
            "name": "mnli",
            "label_names": ["contradiction", "entailment", "neutral"],
            "text_fields": ["premise", "hypothesis"],
        },
        "pair",
    )
    out["reg"] = _bundle(
        tmp,
        tiny_bert,
        1,
        {"name": "stsb", "is_regression": True, "metric": "pearson", "text_fields": ["sentence1", "sentence2"]},
        "reg",
    )
    out["distil"] = _bundle(tmp, tiny_distilbert, 2, {**single, "variant": "distil"}, "distil")
    out["tok"] = tiny_bert
    return out


def _torch_logits(model, folder, items):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    cols = list(zip(*items)) if isinstance(items[0], tuple) else [items]
    enc = tok(*[list(c) for c in cols], truncation=True, max_length=MAXLEN, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(
            **{
                k: v
                for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")
                and (k != "token_type_ids" or model.config.model_type != "distilbert")
            }
        ).logits.numpy()


def _ort_logits(bundle_dir, folder, items):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    sess = ort.InferenceSession(str(model_path(bundle_dir)), providers=["CPUExecutionProvider"])
    enc = tok(list(items), truncation=True, max_length=MAXLEN, padding=True, return_tensors="np")
    names = [i.name for i in sess.get_inputs()]
    return sess.run(["logits"], {k: enc[k].astype(np.int64) for k in names})[0]


def test_predictor_subprocess_imports_no_torch(bundles):
    bdir = bundles["single"][0]
    script = (
        "import json, sys\n"
        "from compresstune.deploy import Predictor\n"
        f"p = Predictor({str(bdir)!r}, threads=1)\n"
        f"res = p.predict({SENTS!r}, batch_size=2)\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]\n"
        "import compresstune.deploy.bundle, compresstune.deploy.edge, compresstune.deploy.vocab\n"
        "heavy_all = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(json.dumps({'labels': [r['label'] for r in res], 'heavy': heavy, 'heavy_all': heavy_all}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["heavy"] == [] and got["heavy_all"] == []  # Predictor: not even onnx; bundle/edge/vocab: no torch
    logits = _ort_logits(bdir, bundles["tok"], SENTS)
    assert got["labels"] == [["negative", "positive"][k] for k in logits.argmax(1)]


def test_predictions_match_pytorch(bundles):
    bdir, model, _ = bundles["single"]
    with pytest.warns(UserWarning, match="1 of 6"):
        res = Predictor(bdir).predict(SENTS + [LONG], batch_size=2)
    ref = torch.softmax(torch.from_numpy(_torch_logits(model, bundles["tok"], SENTS + [LONG])), -1).numpy()
    assert [r["label_id"] for r in res] == ref.argmax(1).tolist()
    assert [r["label"] for r in res] == [["negative", "positive"][k] for k in ref.argmax(1)]
    np.testing.assert_allclose([r["score"] for r in res], ref.max(1), atol=1e-4)


def test_pair_regression_and_distilbert_match_pytorch(bundles):
    bdir, model, _ = bundles["pair"]
    res = Predictor(bdir).predict(PAIRS + [{"premise": "x y", "hypothesis": "z"}])
    ref = torch.softmax(torch.from_numpy(_torch_logits(model, bundles["tok"], PAIRS + [("x y", "z")])), -1).numpy()
    assert [r["label_id"] for r in res] == ref.argmax(1).tolist()
    np.testing.assert_allclose([r["score"] for r in res], ref.max(1), atol=1e-4)
    assert "token_type_ids" in Predictor(bdir).input_names
    rdir, rmodel, _ = bundles["reg"]
    vals = [r["value"] for r in Predictor(rdir).predict(PAIRS)]
    np.testing.assert_allclose(vals, _torch_logits(rmodel, bundles["tok"], PAIRS)[:, 0], atol=1e-4)
    ddir, dmodel, _ = bundles["distil"]
    pred = Predictor(ddir)
    assert pred.input_names == ["input_ids", "attention_mask"]
    ref = _torch_logits(dmodel, bundles["tok"], SENTS).argmax(1)
    assert [r["label_id"] for r in pred.predict(SENTS)] == ref.tolist()


def test_truncation_is_counted_and_reported(bundles, capsys):
    pred = Predictor(bundles["single"][0])
    with pytest.warns(UserWarning, match=r"1 of 2 inputs were longer than max_length=32"):
        pred.predict([LONG, "short"])
    assert pred.last_truncated == 1
    pred.predict(["short", "also short"])
    assert pred.last_truncated == 0
    pair = Predictor(bundles["pair"][0])
    pair.predict([(LONG, "short"), ("a", "b")], warn=False)
    assert pair.last_truncated == 1
    assert predict_main(bundles["single"][0], [LONG, LONG, "ok"], out=io.StringIO()) == 0
    assert "2 of 3 inputs were longer than max_length=32" in capsys.readouterr().err


def test_bad_inputs_are_user_errors(bundles):
    pred = Predictor(bundles["single"][0])
    for bad, msg in [
        ([], "no inputs"),
        ([""], "input 0: the text is empty"),
        (["ok", "  "], "input 1"),
        ("just a string", "list of inputs"),
        ([3], "expected a string"),
        (["a"] * 2, None),
    ]:
        if msg is None:
            pred.predict(bad)
            continue
        with pytest.raises(UserError, match=msg):
            pred.predict(bad)
    pair = Predictor(bundles["pair"][0])
    with pytest.raises(UserError, match="input 0: this model takes a pair"):
        pair.predict(["no partner"])
    with pytest.raises(UserError, match="input 1: hypothesis is empty"):
        pair.predict([("a", "b"), ("a", "")])
    with pytest.raises(UserError, match="nothing to predict"):
        predict_main(bundles["single"][0], [], None)
    with pytest.raises(UserError, match="no config.json"):
        Predictor(bundles["single"][0].parent)


def test_provider_checks(bundles, monkeypatch):
    bdir = bundles["single"][0]
    with pytest.raises(UserError, match="unknown provider"):
        Predictor(bdir, provider="bogus")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UserError, match="not available"):
            Predictor(bdir, provider="cuda")
    # A provider ORT claims to have but silently does not activate (missing CUDA libraries) is an error.
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(
        ort,
        "InferenceSession",
        lambda path, sess_options=None, providers=None: real(
            path, sess_options=sess_options, providers=["CPUExecutionProvider"]
        ),
    )
    with pytest.raises(UserError, match="did not activate CUDAExecutionProvider"):
        Predictor(bdir, provider="cuda")


def _lines(out: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_predict_main_files(bundles, tmp_path, monkeypatch):
    single, pair = bundles["single"][0], bundles["pair"][0]
    ref = [r["label"] for r in Predictor(single).predict(SENTS)]
    f = tmp_path / "in.txt"
    f.write_text("\n".join(SENTS[:2]) + "\n\n" + "\n".join(SENTS[2:]) + "\n", encoding="utf-8")
    out = io.StringIO()
    assert predict_main(single, None, f, batch_size=2, out=out) == 0
    rows = _lines(out)
    assert [r["label"] for r in rows] == ref and [r["index"] for r in rows] == list(range(5))
    assert [r["line"] for r in rows] == [1, 2, 4, 5, 6] and 0 < rows[0]["score"] <= 1
    fp = tmp_path / "pairs.tsv"
    fp.write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS), encoding="utf-8")
    out = io.StringIO()
    predict_main(pair, (), str(fp), out=out)
    assert [r["label"] for r in _lines(out)] == [r["label"] for r in Predictor(pair).predict(PAIRS)]
    fj = tmp_path / "pairs.jsonl"
    fj.write_text(
        "".join(json.dumps({"premise": a, "hypothesis": b, "id": i}) + "\n" for i, (a, b) in enumerate(PAIRS))
    )
    out2 = io.StringIO()
    predict_main(pair, (), fj, out=out2)
    assert [r["label"] for r in _lines(out2)] == [r["label"] for r in _lines(out)]
    out = io.StringIO()
    predict_main(pair, [f"{a}\t{b}" for a, b in PAIRS], None, out=out)
    assert [r["label"] for r in _lines(out)] == [r["label"] for r in _lines(out2)]
    reg = io.StringIO()
    predict_main(bundles["reg"][0], (), fp, out=reg)
    assert set(_lines(reg)[0]) == {"index", "line", "value"}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(SENTS).encode())))
    out = io.StringIO()
    predict_main(single, (), "-", out=out)
    assert [r["label"] for r in _lines(out)] == ref


@pytest.mark.parametrize(
    "name,content,task,msg",
    [
        ("missing.txt", None, "single", "does not exist"),
        ("latin1.txt", "ok\ncaf\xe9 bad\n".encode("latin-1"), "single", "line 2: not UTF-8"),
        ("bad.jsonl", '{"sentence": "ok"}\n{not json}\n', "single", "line 2: not valid JSON"),
        ("field.jsonl", '{"sentence": "ok"}\n\n{"text": "x"}\n', "single", "line 3: missing field 'sentence'"),
        ("type.jsonl", '{"sentence": 5}\n', "single", "line 1: field 'sentence' must be a string"),
        ("tabs.tsv", "a\tb\nonly one\n", "pair", "line 2: 1 tab-separated field but this model takes 2"),
        ("three.tsv", "a\tb\tc\n", "pair", "line 1: 3 tab-separated fields"),
        ("tab_single.txt", "fine\nwith\tlabel\n", "single", "line 2: 2 tab-separated fields but this model takes 1"),
        ("emptypair.tsv", "a\t \n", "pair", "line 1: hypothesis is empty"),
        ("blank.txt", "\n  \n", "single", "no inputs"),
    ],
)
def test_predict_main_bad_files(bundles, tmp_path, name, content, task, msg):
    f = tmp_path / name
    if isinstance(content, str):
        f.write_text(content, encoding="utf-8")
    elif content is not None:
        f.write_bytes(content)
    with pytest.raises(UserError) as e:
        predict_main(bundles[task][0], (), f, out=io.StringIO())
    assert msg in str(e.value) and name in str(e.value)


def test_ort_format_and_fixed_shape(bundles, tmp_path):
    bdir = tmp_path / "b"
    shutil.copytree(bundles["single"][0], bdir)
    r = to_ort_format(model_path(bdir), bdir)
    assert Path(r["ort_model"]).name == "model.ort" and Path(r["operators_config"]).is_file()
    assert "ai.onnx:13:Gather" in r["operators"] and max(r["max_abs_diff"].values()) < 1e-4
    ref = Predictor(bdir).predict(SENTS)
    got = Predictor(bdir, model_file="model.ort").predict(SENTS)
    assert [x["label"] for x in got] == [x["label"] for x in ref]
    np.testing.assert_allclose([x["score"] for x in got], [x["score"] for x in ref], atol=1e-5)
    f = fixed_shape(model_path(bdir), bdir / "model.fixed.onnx", 2, MAXLEN)
    assert f["output_shape"] == [2, 2] and max(f["max_abs_diff"].values()) < 1e-4
    fixed = Predictor(bdir, model_file="model.fixed.onnx")
    assert (fixed.fixed_batch, fixed.fixed_seq) == (2, MAXLEN)
    got = fixed.predict(SENTS + [LONG], warn=False)  # 6 inputs -> 3 static batches; the long one truncated to 32
    ref = Predictor(bdir).predict(SENTS + [LONG], warn=False)
    np.testing.assert_allclose([x["score"] for x in got], [x["score"] for x in ref], atol=1e-5)
    assert fixed.last_truncated == 1


def test_bundle_metadata_sizes_and_card(bundles, tmp_path):
    bdir, _, sizes = bundles["single"]
    cfg = load_config(bdir)
    assert cfg["labels"] == ["negative", "positive"] and cfg["problem_type"] == "single_label_classification"
    assert cfg["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and cfg["max_length"] == MAXLEN
    assert cfg["metric"] == {"name": "accuracy", "dev": 51.5} and cfg["text_fields"] == ["sentence"]
    assert {"onnxruntime", "onnx", "tokenizers", "compresstune"} <= set(cfg["versions"])
    model = onnx.load(str(model_path(bdir)))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["compresstune.config"]) == cfg
    assert json.loads(props["compresstune.labels"]) == cfg["labels"]
    meta = ort.InferenceSession(str(model_path(bdir)), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert json.loads(meta.custom_metadata_map["compresstune.max_length"]) == MAXLEN
    assert set(sizes["files"]) == {
        "onnx/model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "config.json",
        "README.md",
    }
    on_disk = sum(p.stat().st_size for p in bdir.rglob("*") if p.is_file())
    assert sizes["total_bytes"] == sum(sizes["files"].values()) == on_disk
    assert sizes["compressed"]["format"] == "tar.gz" and 0 < sizes["compressed"]["bytes"] < sizes["total_bytes"]
    card = (bdir / "README.md").read_text()
    for section in (
        "## What it is",
        "## Data",
        "## Quality",
        "## Latency",
        "## How it was made",
        "## How to run it",
        "## Limits",
        "compresstune predict",
        "Predictor(",
    ):
        assert section in card
    snippet = card_python_snippet(card)
    proc = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, cwd=bdir, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    want = Predictor(bdir).predict(["a gripping, funny film"])[0]["label"]
    assert f"'label': '{want}'" in proc.stdout
    lat = [{"engine": "ort fp32", "batch": 1, "seq": 128, "p50_ms": 12.5, "p90_ms": 13.0, "p99_ms": 14.1}]
    card2 = model_card(cfg, latency=lat, machine="Intel Xeon, 2 cores")
    assert "| ort fp32 | 1 | 128 | 12.50 | 13.00 | 14.10 |" in card2 and "Intel Xeon, 2 cores" in card2


def test_write_bundle_errors(bundles, tmp_path):
    src = bundles["single"][0]
    with pytest.raises(UserError, match="text_fields"):
        write_bundle(tmp_path / "x", model_path(src), src, {"max_length": 8, "num_labels": 2}, "card")
    with pytest.raises(UserError, match="max_length"):
        write_bundle(tmp_path / "x", model_path(src), src, {"num_labels": 2, "text_fields": ["t"]}, "card")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a bundle"):
        write_bundle(
            tmp_path / "busy", model_path(src), src, {"max_length": 8, "num_labels": 2, "text_fields": ["t"]}, "card"
        )
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    r = write_bundle(
        tmp_path / "again",
        model_path(src),
        src / "tokenizer.json",
        {"max_length": 16, "num_labels": 2, "text_fields": ["t"]},
        "# card",
        compress=False,
    )
    assert "compressed" not in r and r["config"]["labels"] == ["0", "1"]
    props = [p.key for p in onnx.load(str(model_path(tmp_path / "again"))).metadata_props]
    assert len(props) == len(set(props))  # the source's compresstune.* keys were replaced, not duplicated


def test_trim_vocab_keeps_predictions(bundles, tmp_path, glue_dir):
    rows = (glue_dir / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:401]
    train = [r.split("\t")[0] for r in rows]
    src = bundles["single"][0]
    r = trim_vocab(src, train + SENTS, tmp_path / "trim", check_texts=SENTS + ["zyxwv quokka"], n_covered=64)
    assert r["vocab_after"] < r["vocab_before"] // 5 and r["bytes_saved"] > 0
    assert r["covered"]["tokenization_changed"] == 0 and r["covered"]["label_agreement"] == 1
    assert r["check"]["inputs"] == 6 and r["check"]["tokenization_changed"] > 0  # the unseen words split differently
    cfg = load_config(tmp_path / "trim")
    assert cfg["vocab"]["size"] == r["vocab_after"] and cfg["pad_id"] == 0
    trimmed, orig = Predictor(tmp_path / "trim"), Predictor(src)
    assert trimmed.tokenizer.get_vocab_size() == r["vocab_after"]
    ref = orig.predict(train[:50], warn=False)
    assert [x["score"] for x in trimmed.predict(train[:50], warn=False)] == [x["score"] for x in ref]
    assert len({x["label"] for x in ref}) == 2
    pairs = [(a, b) for a, b in zip(train[:40], train[40:80])]
    rp = trim_vocab(bundles["pair"][0], pairs, tmp_path / "trim_pair", n_covered=40)
    assert rp["covered"]["label_agreement"] == 1
    with pytest.raises(CheckFailed, match="below min_agreement"):
        trim_vocab(src, ["a b c"], tmp_path / "tiny", check_texts=SENTS, min_agreement=1.0)


def test_pipeline_trims_the_bundle_vocabulary_and_verifies_it(tmp_path, tiny_bert, glue_dir, monkeypatch):
    """`report.trim_vocab`: the shipped bundle's vocabulary is cut to the training text's word pieces, checked on
    the dev set, and still predicts; the edge model is built from the trimmed one."""
    from click.testing import CliRunner
    from conftest import write_pipeline

    from compresstune.cli import main

    monkeypatch.chdir(tmp_path)
    write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, extra="  trim_vocab: true\n  edge: true")
    r = CliRunner().invoke(main, ["pipeline", "run", "p.yaml", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "vocabulary trimmed 30522 -> " in r.output
    rep = json.loads((tmp_path / "exported" / "t" / "report.json").read_text())
    v = rep["ship"]["bundle"]["vocab"]
    assert v["trimmed"] and v["vocab_after"] < 3000 and v["check"]["inputs"] == 48
    assert v["covered"]["tokenization_changed"] == 0 and v["covered"]["label_agreement"] == 1
    deploy = tmp_path / "exported" / "t" / "deploy"
    cfg = load_config(deploy)
    assert cfg["vocab"]["size"] == v["vocab_after"]
    assert cfg["metric"]["dev"] == v["dev_metric"] and "dev" in cfg["metric"]["before_trim"]  # the trimmed one's
    meta = ort.InferenceSession(str(model_path(deploy))).get_modelmeta().custom_metadata_map
    assert json.loads(meta["compresstune.config"])["metric"]["dev"] == v["dev_metric"]
    outside_edge = [p for p in deploy.rglob("*") if p.is_file() and "edge" not in p.relative_to(deploy).parts]
    assert rep["ship"]["bundle"]["total_bytes"] == sum(p.stat().st_size for p in outside_edge)
    assert "error" not in rep["ship"]["bundle"]["edge"]["ort_format"]
    assert "Vocabulary trimmed" in (deploy / "README.md").read_text()
    p = Predictor(deploy)
    assert p.tokenizer.get_vocab_size() == v["vocab_after"] and len(p.predict(["a fine film"], warn=False)) == 1
    sess = ort.InferenceSession(str(deploy / "edge" / (model_path(deploy).stem + ".ort")))
    assert sess.get_inputs()[0].name == "input_ids"
