import json

import numpy as np
import pytest

from compresstune.data.files import load_user_files
from compresstune.data.glue import GLUE_TASKS, load_glue
from compresstune.data.metrics import compute_metrics
from compresstune.errors import UserError


@pytest.mark.parametrize(
    "task,n_train,n_dev,dev_pos", [("cola", 8551, 1043, 721), ("sst2", 67349, 872, 444), ("mrpc", 3668, 408, 279)]
)
def test_real_glue_counts_and_labels(glue_dir, task, n_train, n_dev, dev_pos):
    d = load_glue(task, "local", str(glue_dir))
    assert (len(d.train), len(d.dev)) == (n_train, n_dev)
    assert sum(d.dev.labels) == dev_pos
    assert all(isinstance(t, tuple) and all(s for s in t) for t in d.train.texts[:50])
    assert len(d.train.texts[0]) == (2 if task == "mrpc" else 1)


def test_sst2_first_row_and_mrpc_quotes(glue_dir):
    d = load_glue("sst2", "local", str(glue_dir))
    assert d.train.texts[0] == ("hide new secretions from the parental units",) and d.train.labels[0] == 0
    m = load_glue("mrpc", "local", str(glue_dir))
    assert any('"' in a or '"' in b for a, b in m.train.texts)  # quotes survive: no quote handling


def _write(p, lines):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")


def test_other_glue_layouts(tmp_path):
    g = tmp_path / "glue"
    _write(
        g / "STS-B" / "train.tsv",
        [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            "0\tmain\tf\t2012\t1\tnone\tnone\tA plane.\tAn air plane.\t5.000",
        ],
    )
    _write(
        g / "STS-B" / "dev.tsv",
        [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            "0\tmain\tf\t2012\t1\tnone\tnone\tA man.\tA dog.\t0.5",
        ],
    )
    mnli_h = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label"
    _write(g / "MNLI" / "train.tsv", [mnli_h, "0\t1\t2\tg\tx\tx\tx\tx\tP.\tH.\tneutral\tneutral"])
    _write(g / "MNLI" / "dev_matched.tsv", [mnli_h, "0\t1\t2\tg\tx\tx\tx\tx\tP.\tH.\tentailment\tentailment"])
    for folder, hdr, row in [
        ("QNLI", "index\tquestion\tsentence\tlabel", "0\tWhy?\tBecause.\tnot_entailment"),
        ("RTE", "index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tentailment"),
        ("WNLI", "index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\t1"),
        ("QQP", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tQ1?\tQ2?\t1"),
    ]:
        _write(g / folder / "train.tsv", [hdr, row])
        _write(g / folder / "dev.tsv", [hdr, row])
    s = load_glue("stsb", "local", str(g))
    assert s.is_regression and s.num_labels == 1 and s.train.labels == [5.0] and s.metric == "pearson"
    m = load_glue("mnli", "local", str(g))
    assert (
        m.num_labels == 3
        and m.train.labels == [GLUE_TASKS["mnli"].labels.index("neutral")]
        and m.dev.texts == [("P.", "H.")]
    )
    assert load_glue("qnli", "local", str(g)).train.labels == [1]
    assert load_glue("rte", "local", str(g)).train.labels == [0]
    assert load_glue("wnli", "local", str(g)).train.labels == [1]
    assert load_glue("qqp", "local", str(g)).metric == "f1"


def test_bad_glue_row_names_file_and_line(tmp_path):
    g = tmp_path / "glue"
    _write(g / "SST-2" / "train.tsv", ["sentence\tlabel", "good film\t1", "bad film\tmaybe"])
    _write(g / "SST-2" / "dev.tsv", ["sentence\tlabel", "ok\t1"])
    with pytest.raises(UserError, match=r"train.tsv line 3: label 'maybe'"):
        load_glue("sst2", "local", str(g))


def test_user_files_csv_tsv_jsonl(tmp_path):
    (tmp_path / "tr.csv").write_text('text,label\n"hello, world",pos\nbad day,neg\n')
    (tmp_path / "dv.jsonl").write_text(json.dumps({"text": "fine", "label": "pos"}) + "\n")
    d = load_user_files(str(tmp_path / "tr.csv"), str(tmp_path / "dv.jsonl"), ["text"], "label")
    assert d.label_names == ["neg", "pos"] and d.train.labels == [1, 0] and d.train.texts[0] == ("hello, world",)
    assert d.metric == "f1" and d.dev.labels == [1]
    (tmp_path / "tr.tsv").write_text("a\tb\tscore\nx\ty\t0.5\nz\tw\t1.5\n")
    r = load_user_files(str(tmp_path / "tr.tsv"), str(tmp_path / "tr.tsv"), ["a", "b"], "score", problem="regression")
    assert r.is_regression and r.train.labels == [0.5, 1.5] and r.train.texts[1] == ("z", "w")


def test_user_file_errors(tmp_path):
    (tmp_path / "tr.csv").write_text("text,label\nok,pos\nnot ok\n")
    with pytest.raises(UserError, match=r"tr.csv line 3: 1 columns but the header has 2"):
        load_user_files(str(tmp_path / "tr.csv"), str(tmp_path / "tr.csv"), ["text"], "label")
    (tmp_path / "a.csv").write_text("sentence,label\nok,pos\n")
    with pytest.raises(UserError, match=r"no column\(s\) \['text'\]"):
        load_user_files(str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), ["text"], "label")
    (tmp_path / "tr2.csv").write_text("text,label\nok,pos\n")
    (tmp_path / "dv2.csv").write_text("text,label\nok,neutral\n")
    with pytest.raises(UserError, match=r"dv2.csv line 2: label 'neutral' is not one of the known labels"):
        load_user_files(str(tmp_path / "tr2.csv"), str(tmp_path / "dv2.csv"), ["text"], "label")
    (tmp_path / "b.jsonl").write_text('{"text": "a", "label": 1}\n{oops}\n')
    with pytest.raises(UserError, match=r"b.jsonl line 2: not valid JSON"):
        load_user_files(str(tmp_path / "b.jsonl"), str(tmp_path / "b.jsonl"), ["text"], "label")


def test_metrics_match_definitions():
    from compresstune.data.task import Split, TaskData

    t = TaskData("x", Split([], []), Split([], []), 2, "mcc", False)
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 0, 1]
    m = compute_metrics(t, preds, labels)
    tp, tn, fp, fn = 2, 2, 1, 0
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["accuracy"] == pytest.approx(80.0) and m["mcc"] == pytest.approx(100 * mcc) and m["main"] == m["mcc"]
    assert m["f1"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    r = TaskData("r", Split([], []), Split([], []), 1, "pearson", True)
    mr = compute_metrics(r, [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0])
    assert mr["spearman"] == pytest.approx(100.0) and 95 < mr["pearson"] < 100


def test_hub_source_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("COMPRESSTUNE_GLUE_DIR", raising=False)
    with pytest.raises(UserError) as ei:
        load_glue("rte", "hub")
    msg = str(ei.value)
    assert "hub" in msg and "glue_dir" in msg and "COMPRESSTUNE_GLUE_DIR" in msg


def test_hub_loader_lets_bugs_through(monkeypatch):
    """Only "cannot reach / not found" becomes the friendly message; another failure keeps its
    own type and traceback instead of being reported as "could not be loaded"."""
    import datasets

    def boom(*a, **k):
        raise KeyError("a bug inside datasets")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    monkeypatch.delenv("COMPRESSTUNE_GLUE_DIR", raising=False)
    with pytest.raises(KeyError):
        load_glue("rte", "hub")

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as ei:
        load_glue("rte", "hub")
    assert isinstance(ei.value.__cause__, ConnectionError) and "Couldn't reach" in str(ei.value)
