"""Typed contracts between the parts: every stage type has a result type, the runner writes results through it,
every consumer reads them back as that type, and no module reads another stage's summary by string keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from compresstune.config.results import (
    RESULT_TYPES,
    BenchmarkResult,
    Engine,
    ExportResult,
    ReportResult,
    Result,
    result_of,
)
from compresstune.config.sections import stage_types
from compresstune.stages import STAGES

PKG = Path(__file__).resolve().parent.parent / "compresstune"

# the record keepers: they write summaries, copy them between runs and check the run record's shape
WRITERS = {"pipeline/runner.py", "pipeline/outputs.py", "pipeline/reuse.py", "manifest.py"}
READER = "config/results.py"  # the one way in: result_of / stage_records
UNTYPED_READS = re.compile(
    r"""\[["']summary["']\]|\.get\(["']summary["']\)|\.summary\.get\(|\.summary\[|json\.loads\([^)]*(summary|report)\.json"""
)


def test_no_module_reads_a_stage_summary_by_string_keys():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel in WRITERS or rel == READER:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if UNTYPED_READS.search(line):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "read stage results through config/results.py instead:\n" + "\n".join(offenders)


def test_the_scan_catches_what_it_is_for():
    for bad in (
        'x = rec["summary"]["variants"]',
        "m = ref.summary.get('model_dir')",
        'v = s.summary["dev_metric"]',
        'j = json.loads((run / "report.json").read_text())',
    ):
        assert UNTYPED_READS.search(bad), bad
    assert not UNTYPED_READS.search("result = stage_records(run_dir)")


def test_every_stage_type_has_its_own_result_type():
    assert set(STAGES) == set(stage_types())
    for stype in STAGES:
        assert stype in RESULT_TYPES and RESULT_TYPES[stype] is not Result, stype


def test_engines_are_typed_values_with_a_short_key():
    for key in ("ort-cpu", "ort-cuda:fp16", "torch-cpu", "baseline:ort-cpu", "baseline:torch-cuda", "ort-cpu:toy_v"):
        e = Engine.parse(key)
        assert e.key == key and Engine.parse(e.model_dump()) == e
    e = Engine.parse("baseline:ort-cuda:int8_dynamic")
    assert (e.runtime, e.provider, e.variant, e.role) == ("ort", "cuda", "int8_dynamic", "baseline")
    row = BenchmarkResult.model_validate(
        {"rows": [{"engine": "torch-cpu", "batch": 1, "seq": 8, "p50_ms": 2.0}], "references": {"onnx_fp32": "ort-cpu"}}
    )
    assert row.rows[0].engine == Engine(runtime="torch", provider="cpu")
    assert row.p50(Engine(runtime="torch", provider="cpu"), (1, 8)) == 2.0
    assert row.dump()["rows"][0]["engine"] == "torch-cpu"  # written back in its short form


def test_results_round_trip_and_older_summaries_still_load():
    # an export of the time before variants were verified per provider: verified_on and paired missing
    old_export = {
        "metric": "accuracy",
        "dev_pytorch": {"main": 90.0},
        "dev_onnx": {"main": 90.0},
        "variants": {"fp32": {"passed": True, "dev": {"main": 90.0}, "size_mb": 4.0}},
        "something_recorded_later": [1, 2],
    }
    r = result_of("export", old_export)
    assert isinstance(r, ExportResult) and r.variants["fp32"].verified_on == "cpu"
    assert r.evaluated_metric() == 90.0 and r.dump()["something_recorded_later"] == [1, 2]
    assert result_of("export", r.dump()) == r
    # a report of the time the report stage chose the variant (nothing to choose: an empty ship record)
    assert result_of("report", {"published": [], "ship": {}}).ship is None
    cands = [{"variant": "fp32", "passed": True, "dev": 88.0}]
    ship = {"rule": "fastest", "shape": [1, 8], "chosen": "fp32", "why": "w", "candidates": cands}
    rep = result_of("report", {"ship": ship})
    assert isinstance(rep, ReportResult) and rep.evaluated_metric() == 88.0


def test_nan_and_other_numbers_survive_the_summary_file(tmp_path):
    import json
    import math

    import numpy as np

    from compresstune.manifest import write_json_atomic

    r = result_of("export", {"dev_onnx": {"main": float("nan"), "pearson": float("nan")}, "n": np.int64(3)})
    write_json_atomic(tmp_path / "s.json", r.dump())
    back = result_of("export", json.loads((tmp_path / "s.json").read_text()))
    assert math.isnan(back.dev_onnx.main) and math.isnan(back.dev_onnx.others()["pearson"])


def test_a_result_that_breaks_its_contract_is_refused():
    with pytest.raises(ValidationError):
        result_of("benchmark", {"rows": [{"engine": "ort-cpu", "p50_ms": 1.0}]})  # no batch, no seq
    with pytest.raises(ValidationError):
        result_of("finetune", {"metric": "accuracy"})  # no method
    with pytest.raises(ValidationError):
        result_of("export", {"variants": {"fp32": {"passed": "maybe"}}})


def test_one_feed_builder_whose_ids_the_model_has():
    from compresstune.errors import UserError
    from compresstune.feeds import TOKEN_INPUTS, token_feed

    for vocab in (None, 30522, 1500, 100, 3):
        f = token_feed(TOKEN_INPUTS, 4, 9, vocab, seed=1)
        ids = f["input_ids"][f["attention_mask"] == 1]
        assert ids.min() >= 0 and ids.max() < (vocab or 2000), vocab
        assert (f["attention_mask"][1:, -1] == 0).all() and (f["attention_mask"][0] == 1).all()  # rows padded
    full = token_feed(["input_ids", "attention_mask"], 2, 5, 100, pad_tail=False)
    assert set(full) == {"input_ids", "attention_mask"} and full["attention_mask"].all()
    with pytest.raises(UserError, match="not BERT-style"):
        token_feed(["pixel_values"], 1, 4)
    # nothing else in the package draws random token ids
    others = [
        p.relative_to(PKG).as_posix()
        for p in PKG.rglob("*.py")
        if p.name != "feeds.py" and re.search(r"randint\(|\.integers\(", p.read_text(encoding="utf-8"))
    ]
    assert not others, others
