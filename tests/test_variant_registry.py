"""One registry entry is all a new export variant needs: a toy variant added from this file alone is accepted by
the config, built and verified by the export, timed by the benchmark and shipped by the report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import run_pipeline_in, write_pipeline

from compresstune.cli import main
from compresstune.export.variants import Variant, all_variants, register_variant, unregister_variant


def _toy_half(builder, dst):
    """fp16 weights of the plain export, run on the CPU provider (which computes in fp32): half the file."""
    from compresstune.export.quantize import convert_fp16

    convert_fp16(builder.fp32, dst)
    return {"toy": True}


@pytest.fixture
def toy():
    register_variant(Variant("toy_half", _toy_half, "fp16", ("cpu",), searchable=False, summary="test only"))
    try:
        yield "toy_half"
    finally:
        unregister_variant("toy_half")


def test_a_variant_registered_from_a_test_file_is_built_verified_timed_and_shipped(toy, tmp_path, tiny_bert, glue_dir):
    extra = "  variants: [fp32, toy_half]\n"
    write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    text = (tmp_path / "p.yaml").read_text()
    text = text.replace("export:\n", "export:\n" + extra).replace("ship:\n", "ship:\n  rule: smallest\n")
    (tmp_path / "p.yaml").write_text(text)
    r = run_pipeline_in(tmp_path)
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "exported" / "t" / "manifest.json").read_text())
    ex = man["stages"]["export"]["summary"]["variants"]["toy_half"]
    assert ex["passed"] and ex["details"]["toy"] and ex["tolerance"] == 0.3 and ex["logit_tolerance"] == 5e-2
    assert "toy_half" in man["stages"]["benchmark"]["summary"]["variants"]
    rep = json.loads((tmp_path / "exported" / "t" / "report.json").read_text())
    assert rep["ship"]["chosen"] == "toy_half", rep["ship"]["why"]


def test_an_unknown_variant_is_a_config_error_naming_the_known_ones(tmp_path, tiny_bert, glue_dir):
    write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    r = CliRunner().invoke(main, ["pipeline", "validate", str(tmp_path / "p.yaml"), "export.variants=[fp32,int4]"])
    assert r.exit_code == 2 and "int4" in r.output and "int8_dynamic" in r.output, r.output
    assert set(all_variants()) >= {"fp32", "optimized", "int8_dynamic", "int8_static", "fp16"}
