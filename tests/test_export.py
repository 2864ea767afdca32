import numpy as np
import pytest
import torch

from compresstune.data.batching import encode
from compresstune.errors import UserError
from compresstune.export.onnx import EXPORT_SHAPE, export_onnx, make_session, max_abs_diff_at_shapes, ort_predict
from compresstune.train.evaluate import predict


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_distilbert"])
def test_onnx_parity_at_other_shapes(request, fixture, tmp_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(request.getfixturevalue(fixture), num_labels=3).eval()
    path = export_onnx(model, tmp_path / "m.onnx", opset=17)
    sess = make_session(path, "cpu", threads=1)
    names = [i.name for i in sess.get_inputs()]
    assert ("token_type_ids" in names) == (fixture == "tiny_bert")
    shapes = [(1, 7), (5, 33), (4, 129)]
    assert EXPORT_SHAPE not in shapes
    diffs = max_abs_diff_at_shapes(model, sess, shapes)
    assert set(diffs) == {"1x7", "5x33", "4x129"} and max(diffs.values()) < 1e-4


def test_onnx_dev_predictions_match_pytorch(tiny_bert, glue_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compresstune.data.glue import load_glue

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    dev = load_glue("mrpc", "local", str(glue_dir)).dev.subset(40, 0)  # sentence pairs: token types matter
    enc = encode(tok, dev, 64)
    sess = make_session(export_onnx(model, tmp_path / "m.onnx"), "cpu")
    a, b = predict(model, enc, tok.pad_token_id, 16), ort_predict(sess, enc, tok.pad_token_id, 16)
    assert np.abs(a - b).max() < 1e-4 and (a.argmax(-1) == b.argmax(-1)).all()


def test_missing_cuda_provider_is_an_error_not_a_fallback(tiny_bert, tmp_path):
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the fallback check is exercised on GPU machines by the benchmark stage")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(UserError, match="CUDAExecutionProvider"):
        make_session(path, "cuda")


def test_silent_fallback_detected(monkeypatch, tiny_bert, tmp_path):
    """A session that comes up on CPU although CUDA was asked for (ORT's silent fallback) must fail."""
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(
        ort,
        "InferenceSession",
        lambda p, sess_options=None, providers=None: real(
            p, sess_options=sess_options, providers=["CPUExecutionProvider"]
        ),
    )
    with pytest.raises(UserError, match="fell back silently"):
        make_session(path, "cuda")
