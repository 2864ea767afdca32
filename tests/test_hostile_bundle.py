"""Hostile or careless bundles and page folders (issue 20's new surfaces), by class: what the web page command
may replace, links out of a bundle, JSON nested past the parser, a model that disagrees with its config,
numbers that are not numbers."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from compresstune.cli import main
from compresstune.deploy import Predictor
from compresstune.deploy.layout import load_config, model_path, read_config_file, save_config
from compresstune.deploy.web import PAGE_FORMAT, _prepare_out
from compresstune.errors import CheckFailed, UserError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from compresstune.deploy.bundle import write_bundle
    from compresstune.export.onnx import export_onnx

    d = tmp_path_factory.mktemp("hb")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    onnx_path = export_onnx(model, d / "m.onnx", 17)
    cfg = {"labels": ["negative", "positive"], "text_fields": ["sentence"], "max_length": 32}
    write_bundle(d / "b", onnx_path, tiny_bert, cfg, "card", source_dir=tiny_bert, compress=False)
    return d / "b"


def _copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def _cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_the_page_command_replaces_only_its_own_pages(tmp_path, bundle):
    b = bundle.resolve()
    mine = tmp_path / "app"  # a folder with a page.json that is not one of ours: refused, untouched
    mine.mkdir()
    (mine / "page.json").write_text('{"name": "x"}')
    (mine / "important.txt").write_text("keep")
    with pytest.raises(UserError, match="not a page this command wrote"):
        _prepare_out(mine, b)
    ours = tmp_path / "site"  # one of our pages with a file the user added (CNAME): refused too
    ours.mkdir()
    (ours / "page.json").write_text(json.dumps({"format": PAGE_FORMAT}))
    (ours / "CNAME").write_text("example.org")
    with pytest.raises(UserError, match="not a page this command wrote"):
        _prepare_out(ours, b)
    side = tmp_path / "fresh.tmp"  # a folder beside --out that merely has the temporary name
    side.mkdir()
    (side / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="in the way"):
        _prepare_out(tmp_path / "fresh", b)
    with pytest.raises(UserError, match="inside one another"):
        _prepare_out(b.parent, b)  # the bundle would be deleted with the old page
    assert (mine / "important.txt").read_text() == "keep" and (ours / "CNAME").is_file()
    assert (side / "notes.txt").read_text() == "precious"


def test_links_out_of_a_bundle_are_refused_by_the_page_and_the_predictor(tmp_path, bundle):
    b = _copy(bundle, tmp_path)
    secret = tmp_path / "creds.json"
    secret.write_text('{"api_key": "SECRET"}')
    (b / "special_tokens_map.json").unlink()
    (b / "special_tokens_map.json").symlink_to(secret)
    r = _cli(["web", b, "--out", tmp_path / "pg", "--no-install", "--toolchain", tmp_path / "none"])
    assert r.exit_code == 2 and "leads outside" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "pg").exists()


@pytest.mark.parametrize("where", ["config", "verify", "jsonl"])
def test_json_nested_past_the_parser_is_a_message(tmp_path, bundle, where):
    b = _copy(bundle, tmp_path)
    deep = "[" * 100_000 + "]" * 100_000
    if where == "config":
        (b / "config.json").write_text('{"compresstune": ' + deep + "}")
        r = _cli(["predict", b, "a fine film"])
    elif where == "verify":
        (b / "verify.json").write_text(deep)
        r = _cli(["verify", b])
    else:
        (tmp_path / "in.jsonl").write_text(deep + "\n")
        r = _cli(["predict", b, "--file", tmp_path / "in.jsonl"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "error" in r.output.lower(), r.output


def test_id2label_that_disagrees_with_the_labels_is_refused(tmp_path, bundle):
    b = _copy(bundle, tmp_path)
    raw = read_config_file(b)
    raw["id2label"] = {"0": "positive", "1": "negative"}
    (b / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match="id2label .* disagrees"):
        load_config(b)
    cfg = {**load_config(bundle), "labels": ["a", "a"]}
    save_config(b, cfg, {})
    with pytest.raises(UserError, match="distinct"):
        load_config(b)


def _constant_model(path, values, width_symbolic: bool):
    """A model whose logits are ``values`` (per input row) or, with ``width_symbolic``, the token ids themselves."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "w" if width_symbolic else len(values)])
    if width_symbolic:
        nodes = [helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)]
        inits = []
    else:
        c = helper.make_tensor("c", TensorProto.FLOAT, [1, len(values)], values)
        nodes = [
            helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f"], ["m"], axes=[1], keepdims=1),
            helper.make_node("Mul", ["m", "c"], ["logits"]),
        ]
        inits = [c]
    graph = helper.make_graph(nodes, "g", [ids], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_nan_outputs_and_a_width_the_config_does_not_describe_are_caught(tmp_path, bundle):
    b = _copy(bundle, tmp_path)
    _constant_model(model_path(b), [float("nan"), float("nan")], width_symbolic=False)
    with pytest.raises(CheckFailed, match="NaN or infinite"):
        Predictor(b).predict(["a fine film"])
    r = _cli(["predict", b, "a fine film"])
    assert r.exit_code == 3 and "NaN" in r.output and "Traceback" not in r.output, r.output
    _constant_model(model_path(b), [], width_symbolic=True)
    r = _cli(["predict", b, "a fine film indeed"])
    assert r.exit_code == 2 and "do not belong together" in r.output, r.output


def test_a_logit_too_large_for_a_float_in_verify_json_is_a_message(tmp_path, bundle):
    from compresstune.deploy.verify import write_verification_set

    b = _copy(bundle, tmp_path)
    write_verification_set(b, [("a fine film",), ("dull",)] * 3, seed=0)
    text = (b / "verify.json").read_text()
    rec = json.loads(text)
    first = rec["logits"][0][0]
    (b / "verify.json").write_text(text.replace(json.dumps(first), "1" + "0" * 400, 1))
    r = _cli(["verify", b])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output


def test_bench_onnx_out_must_be_json(tmp_path, bundle):
    r = _cli(["bench", "onnx", model_path(bundle), "--shapes", "1x8", "--no-footprint", "--out", tmp_path / "r.md"])
    assert r.exit_code == 2 and ".json" in r.output and not (tmp_path / "r.md").exists(), r.output


def test_stored_labels_that_are_not_the_stored_logits_argmax_are_refused(tmp_path, bundle):
    from compresstune.deploy.verify import write_verification_set

    b = _copy(bundle, tmp_path)
    write_verification_set(b, [("a fine film",), ("dull",)] * 3, seed=0)
    rec = json.loads((b / "verify.json").read_text())
    rec["labels"] = [1 - k for k in rec["labels"]]
    (b / "verify.json").write_text(json.dumps(rec))
    r = _cli(["verify", b])
    assert r.exit_code == 2 and "not the argmax of their stored logits" in r.output, r.output


def test_bundle_files_that_are_links_folders_or_too_many_are_named(tmp_path, bundle):
    """A tokenizer.json that is a link leading out of the bundle or a folder, an ONNX path that is a folder, and a
    verification set of more inputs than a check on a device should take: each named as what it is."""
    from compresstune.deploy.verify import write_verification_set

    b = _copy(bundle, tmp_path)
    write_verification_set(b, [("a fine film",), ("dull",)] * 3, seed=0)
    rec = json.loads((b / "verify.json").read_text())
    many = {**rec, "inputs": rec["inputs"] * 2000, "logits": rec["logits"] * 2000, "labels": rec["labels"] * 2000}
    (b / "verify.json").write_text(json.dumps(many))
    r = _cli(["verify", b])
    assert r.exit_code == 2 and "12,000 inputs is not a verification set (at most 10,000" in r.output, r.output
    long = {**rec, "inputs": ["a fine film " * 5000] + ["dull"] * (len(rec["inputs"]) - 1)}  # 60,000 characters
    (b / "verify.json").write_text(json.dumps(long))
    r = _cli(["verify", b])
    assert r.exit_code == 2 and "longer than 50,000 characters" in r.output, r.output
    write_verification_set(b, ["dull " * 20000, "a fine film"], seed=0)  # stored cut, and it checks
    assert max(len(x) for x in json.loads((b / "verify.json").read_text())["inputs"]) == 50_000
    assert _cli(["verify", b]).exit_code == 0
    (b / "tokenizer.json").unlink()
    (b / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text("{}")
    r = _cli(["verify", b])
    assert r.exit_code == 2 and "tokenizer.json is (or lies under) a symbolic link that leads outside" in r.output, (
        r.output
    )
    (b / "tokenizer.json").unlink()
    (b / "tokenizer.json").symlink_to("tokenizer.json")  # a loop of links
    r = _cli(["verify", b])
    assert r.exit_code == 2 and "a loop of links" in r.output and "Traceback" not in r.output, r.output
    (b / "tokenizer.json").unlink()
    (b / "tokenizer.json").mkdir()
    r = _cli(["predict", b, "x"])
    assert r.exit_code == 2 and "tokenizer.json is not a file (a folder or a device)" in r.output, r.output
    r = _cli(["bench", "onnx", tmp_path, "--shapes", "1x8", "--no-footprint"])
    assert r.exit_code == 2 and "is not a file (a folder or a device)" in r.output, r.output
