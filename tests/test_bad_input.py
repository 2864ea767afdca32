"""The bad-input catalogue: mistakes users make, each refused before any work with exit code 2, a
message that names the file, key or line and says what to do, and no traceback, through both
`pipeline validate` and `pipeline run`. The run is pointed at a finished run folder (a tiny BERT on a
custom CSV task cut from real SST-2 rows), which must be left exactly as it was."""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compresstune.cli import main
from compresstune.pipeline.atomic import run_lock

PIPELINE = """
name: t
model: model
seed: 7
task:
  name: custom
  train_file: train.csv
  dev_file: dev.csv
  max_length: 32
stages: [finetune, export]
finetune:
  epochs: 1
  lr: 1.0e-3
  batch_size: 16
export:
  verify_shapes: [[1, 7]]
  variants: [fp32]
benchmark: {batch_sizes: [1], seq_lengths: [16], warmup: 1, iters: 3, rounds: 1, pytorch: false, footprint: false}
ship: {shape: [1, 16], edge: false}
"""
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
COMPRESS = "stages=[compress, finetune, export]"
BENCH = "stages=[finetune, export, benchmark, ship, report]"


def _cli(args: list[str], cwd: Path):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        os.chdir(old)


def _rows(src: Path, n: int, skip: int = 0) -> list[list[str]]:
    lines = src.read_text(encoding="utf-8").splitlines()[1 + skip : 1 + skip + n]
    return [[r.split("\t")[0].strip(), r.split("\t")[1]] for r in lines]


def _csv(path: Path, rows, header=("text", "label")) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _bad_files(d: Path, tiny_bert: Path, glue_dir: Path) -> None:
    """Every broken file the cases point at, made once."""
    sst = glue_dir / "SST-2"
    (d / "empty.csv").write_text("")
    (d / "ragged.tsv").write_text("text\tlabel\na fine film\t1\na film\twith a tab\t0\n")
    _csv(d / "dev_badlabel.csv", [["fine", "1"], ["dull", "2"], ["ok", "0"]])
    (d / "latin1.csv").write_bytes("text,label\nfine,1\ncaf\xe9 cr\xe8me,0\n".encode("latin-1"))
    three = [[t, ["neg", "neu", "pos"][i % 3]] for i, (t, _) in enumerate(_rows(sst / "train.tsv", 30))]
    _csv(d / "three.csv", three)
    _csv(d / "one_label.csv", [[t, "pos"] for t, _ in _rows(sst / "train.tsv", 10)])
    shutil.copytree(tiny_bert, d / "noweights")
    (d / "noweights" / "model.safetensors").unlink()
    shutil.copytree(tiny_bert, d / "smallvocab")
    cfg = json.loads((d / "smallvocab" / "config.json").read_text())
    (d / "smallvocab" / "config.json").write_text(json.dumps({**cfg, "vocab_size": 1000}))
    (d / "glue_empty" / "SST-2").mkdir(parents=True)
    shutil.copy(sst / "train.tsv", d / "glue_empty" / "SST-2" / "train.tsv")
    (d / "glue_empty" / "SST-2" / "dev.tsv").write_text("")
    (d / "bad.yaml").write_text(PIPELINE.replace("  epochs: 1\n", "  epochs: [1\n"))
    (d / "afile").write_text("not a folder")
    _hostile_files(d, tiny_bert, glue_dir)


def _hostile_files(d: Path, tiny_bert: Path, glue_dir: Path) -> None:
    """Files a careless or hostile user might hand over (issue 19's classes)."""
    rows = _rows(glue_dir / "SST-2" / "train.tsv", 24)
    _csv(d / "empty_label.csv", rows[:5] + [["a film with no label", ""]] + rows[5:])
    _csv(d / "empty_text.csv", rows[:5] + [["   ", "1"]] + rows[5:])
    jsonl = [json.dumps({"text": t, "label": int(y)}) for t, y in rows]
    (d / "null_label.jsonl").write_text("\n".join(jsonl[:3] + ['{"text": "fine", "label": null}'] + jsonl[3:]) + "\n")
    (d / "null_text.jsonl").write_text("\n".join(jsonl[:3] + ['{"text": null, "label": 1}'] + jsonl[3:]) + "\n")
    _csv(d / "nan_value.csv", [[t, "0.5"] for t, _ in rows[:8]] + [["odd", "nan"]])
    big = "x" * 200_000
    (d / "huge_field.csv").write_text(f'text,label\nfine,1\n"{big}",0\n')
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    (d / "laughs.yaml").write_text(laughs + PIPELINE)
    (d / "deep.yaml").write_text(PIPELINE + "description: " + "[" * 3000 + "]" * 3000 + "\n")
    (d / "dupe.yaml").write_text(PIPELINE + "finetune:\n  epochs: 3\n")
    (d / "latin1.yaml").write_bytes(PIPELINE.replace("name: t", "name: t\ndescription: caf\xe9").encode("latin-1"))
    (d / "huge.yaml").write_text(PIPELINE + "#" + "x" * (1 << 20) + "\n")
    nan_rows = [json.dumps({"text": t, "label": int(y)}) for t, y in rows[:6]] + ['{"text": "odd", "label": NaN}']
    (d / "nan_label.jsonl").write_text("\n".join(nan_rows) + "\n")
    _csv(d / "nan_label.csv", rows[:6] + [["odd", "nan"]])
    (d / "list_text.jsonl").write_text("\n".join(jsonl[:2] + ['{"text": ["a", "b"], "label": 1}']) + "\n")
    (d / "number_text.jsonl").write_text("\n".join(jsonl[:2] + ['{"text": 0, "label": 1}']) + "\n")
    (d / "bignum.jsonl").write_text("\n".join(jsonl[:2] + ['{"text": "x", "label": ' + "9" * 5001 + "}"]) + "\n")
    (d / "deep.jsonl").write_text("\n".join(jsonl[:2] + ['{"text": ' + "[" * 100000 + "]" * 100000 + "}"]) + "\n")
    _csv(d / "dup_header.csv", [[t, "zzz", y] for t, y in rows[:6]], header=("text", "text", "label"))
    (d / "a_folder.csv").mkdir()
    (d / "elsewhere").mkdir()
    os.symlink(d / "elsewhere", d / "exported" / "linked")
    (d / "exported" / "aside").mkdir()
    os.symlink(d / "elsewhere", d / "exported" / "aside" / "superseded")
    (d / "glue_blank" / "SST-2").mkdir(parents=True)
    train = (glue_dir / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    (d / "glue_blank" / "SST-2" / "train.tsv").write_text("\n".join(train[:20] + ["   \t1"] + train[20:40]) + "\n")
    shutil.copy(glue_dir / "SST-2" / "dev.tsv", d / "glue_blank" / "SST-2" / "dev.tsv")
    shutil.copytree(tiny_bert, d / "novocab")  # config, weights and tokenizer_config.json, no vocabulary
    for f in ("tokenizer.json", "vocab.txt"):
        (d / "novocab" / f).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert, glue_dir):
    """A custom-task project with a finished [finetune, export] run, and the broken files of the cases."""
    d = tmp_path_factory.mktemp("bad_input")
    shutil.copytree(tiny_bert, d / "model")
    _csv(d / "train.csv", _rows(glue_dir / "SST-2" / "train.tsv", 48))
    _csv(d / "dev.csv", _rows(glue_dir / "SST-2" / "dev.tsv", 16))
    (d / "p.yaml").write_text(PIPELINE)
    (d / "victim").mkdir()
    (d / "victim" / "precious.txt").write_text("a user's file beside the run folder\n")
    r = _cli(["pipeline", "run", "p.yaml", "--no-progress"], d)
    assert r.exit_code == 0, r.output
    _bad_files(d, tiny_bert, glue_dir)
    return d


def _checksum(folder: Path) -> dict:
    """Every file under ``folder`` with its sha256 (a sibling of the run folder that must never change)."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _snapshot(run: Path) -> dict:
    """Every file of the run folder with its size and mtime, and the run record's bytes."""
    out = {"manifest": (run / "manifest.json").read_bytes()}
    for p in sorted(run.rglob("*")):
        if p.name != ".content_hashes.json":
            st = p.stat()
            out[str(p.relative_to(run))] = (st.st_mtime_ns, st.st_size if p.is_file() else None)
    return out


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # overrides and flags after the pipeline file
    expect: tuple[str, ...]  # distinctive parts of the message: the key/file/line and the fix
    file: str = "p.yaml"
    env: dict = field(default_factory=dict)

    def __post_init__(self):  # a bare string would be checked a character at a time, and pass
        assert isinstance(self.expect, tuple) and isinstance(self.args, tuple), self.id


CASES = [
    Case("unknown_key", ("finetune.epoch=2",), ("finetune.epoch: unknown key", "Did you mean 'epochs'?")),
    Case("wrong_type", ("finetune.lr=fast",), ("finetune.lr", "valid number", "'fast'")),
    Case("out_of_range", ("finetune.batch_size=-4",), ("finetune.batch_size", "greater than 0")),
    Case("unknown_stage_type", ("export.type=exprt",), ("unknown stage type 'exprt'", "Did you mean 'export'?")),
    Case("unknown_method", ("finetune.method=lerner",), ("finetune.method", "'learner'", "'lerner'")),
    Case("stage_order", ("finetune.input=export",), ("finetune.input: 'export' is not a stage that runs before",)),
    Case("benchmark_without_export", ("stages=[finetune, benchmark]",), ("a benchmark times an exported ONNX",)),
    Case("bad_override_syntax", ("finetune.lr",), ("'finetune.lr' is not KEY=VALUE", "finetune.lr=3e-5")),
    Case("invalid_yaml", (), ("bad.yaml", "line 13", "not valid YAML", "indentation"), file="bad.yaml"),
    Case("missing_data_file", ("task.dev_file=nope.csv",), ("task.dev_file", "nope.csv does not exist")),
    Case("empty_data_file", ("task.dev_file=empty.csv",), ("empty.csv is empty", "header line")),
    Case(
        "ragged_tsv_line",
        ("task.train_file=ragged.tsv",),
        ("ragged.tsv line 3: 3 columns but the header has 2", "quote fields"),
    ),
    Case(
        "label_outside_label_set",
        ("task.dev_file=dev_badlabel.csv",),
        ("dev_badlabel.csv line 3: label '2' is not one of the known labels ['0', '1']", "task.labels"),
    ),
    Case("non_utf8_text", ("task.dev_file=latin1.csv",), ("latin1.csv line 3", "is not UTF-8", "iconv")),
    Case(
        "missing_text_column", ("task.text_columns=[sentence]",), ("no column(s) ['sentence']", "Set task.text_columns")
    ),
    Case(
        "single_label",
        ("task.train_file=one_label.csv", "task.dev_file=one_label.csv"),
        ("task.label_column", "only one label value ['pos']", "problem: regression"),
    ),
    Case(
        "f1_with_three_labels",
        ("task.train_file=three.csv", "task.dev_file=three.csv", "task.metric=f1"),
        ("task.metric: f1 is the binary F1", "3 labels", "use accuracy or mcc"),
    ),
    Case(
        "classification_metric_for_regression",
        ("task.problem=regression", "task.metric=accuracy"),
        ("task.metric: accuracy is a classification metric", "use pearson or spearman"),
    ),
    Case(
        "unknown_glue_task",
        ("task.name=sst3",),
        ("override task.name=sst3 (command line): task.name", "unknown task 'sst3'", "'sst2'"),
    ),
    Case(
        "empty_glue_file",
        ("task.name=sst2", "task.glue_dir=glue_empty"),
        ("glue_empty/SST-2/dev.tsv is empty", "Copy it again"),
    ),
    Case("model_without_weights", ("model=noweights",), ("noweights has config.json but no weights", "copy the")),
    Case(
        "tokenizer_does_not_fit",
        ("model=smallvocab",),
        ("model: the tokenizer in", "30,522 tokens", "vocab_size 1,000", "copy the tokenizer files"),
    ),
    Case(
        "hub_id_offline",
        ("model=someorg/not-a-local-model",),
        ("'someorg/not-a-local-model'", "HF_HUB_OFFLINE is set", "huggingface-cli download"),
        env={"HF_HUB_OFFLINE": "1"},
    ),
    Case("output_folder_is_a_file", ("--output-dir", "afile/out"), ("afile is a file", "--output-dir DIR")),
    Case("output_folder_not_writable", ("--output-dir", "/sys/compresstune"), ("cannot write in /sys", "--output-dir")),
    Case(
        "learner_rank_larger_than_layer",
        ("finetune.method=learner", "finetune.rank=60000"),
        ("finetune.rank: 60000 is larger than the smallest linear", "rank <= 32"),
    ),
    Case(
        "keep_layers_out_of_range",
        (COMPRESS, "compress.method=distill", "compress.keep_layers=[0, 5]"),
        ("compress.keep_layers: [0, 5] names layer(s) [5]", "the teacher has 2 layers"),
    ),
    Case(
        "student_layers_not_fewer",
        (COMPRESS, "compress.method=distill", "compress.student_layers=2"),
        ("compress.student_layers: 2 is not fewer than the teacher's 2 layers", "use 1..1"),
    ),
    Case(
        "missing_target_params",
        (COMPRESS, "compress.method=prune", "compress.target=params"),
        ("compress.target_params: required with target: params", "target: ratio"),
    ),
    Case(
        "pruning_budget_below_embeddings",
        (COMPRESS, "compress.method=prune", "compress.target=params", "compress.target_params=1000"),
        ("compress.target_params: 1,000 is below the", "parameters of the embeddings alone", "method: distill"),
    ),
    Case(
        "missing_text_file",
        (COMPRESS, "compress.method=distill", "compress.student_layers=1", "compress.text_file=nope.txt"),
        ("compress.text_file", "nope.txt does not exist", "leave text_file out"),
    ),
    Case(
        "all_zero_distillation_weights",
        (COMPRESS, "compress.method=distill", "compress.student_layers=1", "compress.hidden_weight=0"),
        ("compress: every loss weight of the task-agnostic distillation is 0", "hidden_weight: 1.0"),
    ),
    Case(
        "task_specific_without_teacher",
        (COMPRESS, "compress.method=distill", "compress.student_layers=1", "compress.distill_mode=task_specific"),
        ("distill_mode task_specific", "untrained head", "compress.input: teacher"),
    ),
    Case(
        "verify_shapes_is_export_shape",
        ("export.verify_shapes=[[2, 16], [1, 7]]",),
        ("export.verify_shapes: [2, 16] is the shape the model is exported at", "[[1, 7], [3, 41]]"),
    ),
    Case(
        "ship_shape_not_timed",
        ("stages=[finetune, export, benchmark, ship, report]", "ship.shape=[1, 999]"),
        ("ship.shape: [1, 999] is not timed by the benchmark", "[1, 16]"),
    ),
    pytest.param(
        Case(
            "cuda_benchmark_without_gpu",
            ("stages=[finetune, export, benchmark]", "benchmark.providers=[cuda]"),
            ("benchmark.providers: cuda was asked for but no CUDA GPU", "[cpu]"),
        ),
        marks=NO_GPU,
    ),
    pytest.param(
        Case("cuda_device_without_gpu", ("device=cuda",), ("device: cuda, but no CUDA GPU", "device: cpu")),
        marks=NO_GPU,
    ),
    # --- issue 19: names that become paths --------------------------------------------------------------------
    Case("stage_name_escapes", ("stages=[finetune, 'a/../../../victim']",), ("stage name 2", "not a plain name")),
    Case("stage_name_dotdot", ("stages=[finetune, '..']",), ("'..' is not a plain name",)),
    Case("stage_name_unicode", ("stages=[finetune, 'expört']",), ("is not a plain name", "for example")),
    Case("stage_name_300_chars", (f"stages=[finetune, {'e' * 300}]",), ("is not a plain name", "64 characters")),
    Case("pipeline_name_escapes", ("name=../../x",), ("name: '../../x' is not a plain name",)),
    Case("pipeline_name_300_chars", (f"name={'n' * 300}",), ("name: 'nnnn", "at most 64 characters")),
    Case("run_name_escapes", ("--run-name", "../../x"), ("--run-name: '../../x' is not a plain name",)),
    Case("run_name_with_separator", ("--run-name", "a/b"), ("--run-name: 'a/b' is not a plain name", "'a-b'")),
    Case("run_name_empty", ("--run-name", ""), ("--run-name: '' is not a plain name",)),
    # --- numbers that are not finite, or far out of range --------------------------------------------------------
    Case("epochs_inf", ("finetune.epochs=.inf",), ("finetune.epochs", "finite number")),
    Case("epochs_nan", ("finetune.epochs=.nan",), ("finetune.epochs", "finite number")),
    Case("epochs_huge", ("finetune.epochs=1e300",), ("finetune.epochs", "less than or equal to 1000")),
    Case(
        "min_time_inf",
        ("stages=[finetune, export, benchmark]", "benchmark.min_time_s=.inf"),
        ("benchmark.min_time_s", "finite number"),
    ),
    Case("weight_decay_inf", ("finetune.weight_decay=.inf",), ("finetune.weight_decay", "finite number")),
    Case("weight_decay_huge", ("finetune.weight_decay=1e300",), ("finetune.weight_decay", "less than or equal to 10")),
    Case("scale_negative", ("finetune.method=learner", "finetune.scale=-1"), ("finetune.scale", "greater than 0")),
    Case("scale_nan", ("finetune.method=learner", "finetune.scale=.nan"), ("finetune.scale", "finite number")),
    Case("seed_huge", ("seed=100000000000000000000000",), ("seed: expected an integer from 0 to 4294967295",)),
    Case("seed_negative", ("seed=-1",), ("seed: expected an integer from 0 to 4294967295",)),
    Case("stage_seed_negative", ("finetune.seed=-5",), ("finetune.seed", "greater than or equal to 0")),
    Case("batch_size_huge", ("finetune.batch_size=1e300",), ("finetune.batch_size", "exceeded maximum size")),
    Case(
        "bench_batch_huge",
        ("stages=[finetune, export, benchmark]", "benchmark.batch_sizes=[1e12]"),
        ("benchmark.batch_sizes", "less than or equal to 65536"),
    ),
    # --- lengths against the model's 512 position embeddings, and too short to hold text ------------------------
    Case("max_length_past_positions", ("task.max_length=1000",), ("task.max_length: sequence length 1000", "512")),
    Case("max_length_too_short", ("task.max_length=2",), ("task.max_length: 2 tokens leave no room", "at least 3")),
    Case(
        "verify_shape_past_positions",
        ("export.verify_shapes=[[1, 600]]",),
        ("export.verify_shapes: sequence length 600", "512 position embeddings"),
    ),
    Case(
        "bench_seq_past_positions",
        ("stages=[finetune, export, benchmark]", "benchmark.seq_lengths=[16, 600]"),
        ("benchmark.seq_lengths: sequence length 600", "Use at most 512"),
    ),
    Case(
        "fixed_shape_past_positions",
        ("stages=[finetune, export, benchmark, ship, report]", "ship.fixed_shape=[1, 700]"),
        ("ship.fixed_shape: sequence length 700",),
    ),
    # --- settings one stage gives another, checked before the first stage ---------------------------------------
    Case(
        "bench_variant_unknown",
        ("stages=[finetune, export, benchmark]", "benchmark.variants=[int9]"),
        ("benchmark.variants: unknown variant(s) ['int9']", "not built by export"),
    ),
    Case(
        "bench_variant_not_built",
        ("stages=[finetune, export, benchmark]", "benchmark.variants=[int8_dynamic]"),
        ("benchmark.variants: ['int8_dynamic'] are not built by export", "add them to export.variants"),
    ),
    # --- data that would silently become wrong training ---------------------------------------------------------
    Case("empty_label", ("task.train_file=empty_label.csv",), ("empty_label.csv line 7", "label is missing")),
    Case("null_label_jsonl", ("task.train_file=null_label.jsonl",), ("null_label.jsonl line 4", "label is missing")),
    Case("null_text_jsonl", ("task.train_file=null_text.jsonl",), ("null_text.jsonl line 4", "empty or null text")),
    Case("blank_text", ("task.train_file=empty_text.csv",), ("empty_text.csv line 7", "empty or null text")),
    Case(
        "nan_regression_label",
        ("task.problem=regression", "task.metric=pearson", "task.train_file=nan_value.csv"),
        ("nan_value.csv line 10", "not a finite number"),
    ),
    Case("text_column_is_label", ("task.text_columns=[label]",), ("includes the label column 'label'",)),
    Case(
        "tokenizer_without_vocabulary",
        ("model=novocab",),
        ("model: the tokenizer in", "novocab", "has only", "tokens but the model's embedding table has 30,522"),
    ),
    Case("csv_field_over_limit", ("task.dev_file=huge_field.csv",), ("huge_field.csv line", "field", "limit")),
    Case("nan_label_jsonl", ("task.train_file=nan_label.jsonl",), ("nan_label.jsonl line 7", "NaN")),
    Case("nan_label_csv", ("task.train_file=nan_label.csv",), ("nan_label.csv line 8", "NaN")),
    Case("list_as_text", ("task.train_file=list_text.jsonl",), ("list_text.jsonl line 3", "hold list, not text")),
    Case("number_as_text", ("task.train_file=number_text.jsonl",), ("number_text.jsonl line 3", "hold int, not text")),
    Case("jsonl_huge_number", ("task.train_file=bignum.jsonl",), ("bignum.jsonl line 3", "not usable JSON")),
    Case("jsonl_deep_nesting", ("task.train_file=deep.jsonl",), ("deep.jsonl line 3", "not usable JSON")),
    Case("csv_duplicate_header", ("task.train_file=dup_header.csv",), ("dup_header.csv line 1", "more than once")),
    Case("data_path_is_a_folder", ("task.train_file=a_folder.csv",), ("a_folder.csv is not a regular file",)),
    Case("nul_in_a_path", ("task.train_file='train.csv\0'",), ("task.train_file: the value holds a NUL character",)),
    Case(
        "superseded_is_a_link", (BENCH, "--run-name", "aside"), ("aside/superseded is a symbolic link", "real folder")
    ),
    Case("run_folder_is_a_link", ("--run-name", "linked"), ("exported/linked is a symbolic link", "real folder")),
    Case(
        "glue_blank_sentence",
        ("task.name=sst2", "task.glue_dir=glue_blank"),
        ("glue_blank/SST-2/train.tsv line 21: empty text",),
    ),
    Case(
        "glue_env_is_a_file",
        ("task.name=sst2",),
        ("$COMPRESSTUNE_GLUE_DIR: afile is not a folder", "task.glue_dir=PATH"),
        env={"COMPRESSTUNE_GLUE_DIR": "afile"},
    ),
    # --- lists of choices: at least one, each once; one message per key, not one per union member --------------
    Case(
        "providers_empty", (BENCH, "benchmark.providers=[]"), ("benchmark.providers: List should have at least 1 item",)
    ),
    Case(
        "providers_twice",
        (BENCH, "benchmark.providers=[cpu,cpu]"),
        ("benchmark.providers: 'cpu' listed more than once",),
    ),
    Case("shapes_empty", (BENCH, "benchmark.shapes=[]"), ("benchmark.shapes: List should have at least 1 item",)),
    Case("shapes_twice", (BENCH, "benchmark.shapes=[[1,16],[1,16]]"), ("(1, 16) listed more than once",)),
    Case("variants_empty", ("export.variants=[]",), ("export.variants: List should have at least 1 item", "or 'auto'")),
    Case("bench_variants_empty", (BENCH, "benchmark.variants=[]"), ("benchmark.variants:", "or 'all'")),
    Case("bf16_word", ("finetune.bf16=maybe",), ("finetune.bf16: expected true or false, or 'auto' (got 'maybe')",)),
    Case("switch_as_number", ("finetune.bf16=1",), ("finetune.bf16: expected true or false, or 'auto' (got 1)",)),
    Case("switch_as_quoted_word", ("export.reduce_range='off'",), ("export.reduce_range: expected true or false",)),
    Case("number_as_switch", ("finetune.epochs=true",), ("finetune.epochs: expected a number, not true or false",)),
    Case("numbers_as_switches", (BENCH, "benchmark.shapes=[[true,16]]"), ("benchmark.shapes: expected a number",)),
    Case(
        "unknown_key_named_like_a_type", ("finetune.none=3", "task.list=1"), ("finetune.none: unknown key", "task.list")
    ),
    Case("nested_unknown_key_named_none", ("export.tolerances.none=1",), ("export.tolerances.none: unknown key",)),
    Case("nested_unknown_key", ("export.tolerances.fp32=1",), ("export.tolerances.fp32: unknown key", "logits_fp16")),
    # --- malformed or oversized pipeline files ------------------------------------------------------------------
    Case("yaml_billion_laughs", (), ("laughs.yaml", "aliases expand to more than 100,000 values"), file="laughs.yaml"),
    Case("yaml_deep_nesting", (), ("deep.yaml", "nested more than 32 levels deep"), file="deep.yaml"),
    Case("yaml_duplicate_section", (), ("dupe.yaml", "key 'finetune' appears twice", "keep one"), file="dupe.yaml"),
    Case("yaml_not_utf8", (), ("latin1.yaml", "line 3", "is not UTF-8"), file="latin1.yaml"),
    Case("yaml_too_large", (), ("huge.yaml", "at most 1 MiB"), file="huge.yaml"),
    Case(
        "every_problem_at_once",
        ("finetune.epoch=2", "task.dev_file=dev_badlabel.csv", "model=smallvocab", "export.verify_shapes=[[2, 16]]"),
        ("4 problems", "finetune.epoch: unknown key", "label '2'", "vocab_size 1,000", "export.verify_shapes"),
    ),
]


def _ids(c):
    return c.id if isinstance(c, Case) else None


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bad_input_is_refused_before_any_work(case: Case, project: Path, monkeypatch):
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    run = project / "exported" / "t"
    before, sibling = _snapshot(run), _checksum(project / "victim")
    for cmd in (["pipeline", "validate", case.file], ["pipeline", "run", case.file, "--no-progress"]):
        r = _cli([*cmd, *case.args], project)
        assert r.exit_code == 2, (cmd, r.output)
        assert "Traceback" not in r.output and "nothing was run" in r.output, r.output
        missing = [s for s in case.expect if s not in r.output]
        assert not missing, (cmd, missing, r.output)
        assert "] running" not in r.output
    assert _snapshot(run) == before  # the finished stages and the run record are untouched
    assert _checksum(project / "victim") == sibling  # and nothing beside the run folder
    assert not (project.parent / "x").exists() and not (project / "x").exists()


def test_a_locked_run_folder_is_refused(project: Path):
    run = project / "exported" / "t"
    before = _snapshot(run)
    held, done = threading.Event(), threading.Event()

    def hold():
        with run_lock(run):
            held.set()
            done.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(30)
        r = _cli(["pipeline", "run", "p.yaml", "--no-progress"], project)
        after = _snapshot(run)
    finally:
        done.set()
        t.join()
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"the run folder {Path('exported') / 't'} is in use by another compresstune process" in r.output
    assert "--run-name NAME" in r.output and "nothing needs deleting by hand" in r.output
    for snap in (before, after):  # the holder's own lock files
        snap.pop(".lock", None)
        snap.pop(".lock.owner", None)
    assert after == before


def test_a_corrupt_run_record_is_refused_and_left_alone(project: Path):
    broken = project / "exported" / "broken"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text('{"stages": {"finetune": {"status": "do')  # cut short
    for cmd in (["pipeline", "validate", "p.yaml"], ["pipeline", "run", "p.yaml", "--no-progress"]):
        r = _cli([*cmd, "--run-name", "broken"], project)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert "exported/broken/manifest.json: the run record cannot be read" in r.output
        assert "Move it away" in r.output and "] running" not in r.output
    assert (broken / "manifest.json").read_text() == '{"stages": {"finetune": {"status": "do'


def test_a_file_that_is_not_onnx_is_refused(project: Path, tiny_bert: Path):
    (project / "notonnx.onnx").write_text("this is not an ONNX model\n")
    r = _cli(["bench", "onnx", "notonnx.onnx", "--shapes", "1x8", "--no-footprint"], project)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "notonnx.onnx: not an ONNX model" in r.output and "export it again" in r.output
    bundle = project / "bundle"
    bundle.mkdir()
    config = {"problem_type": "single_label_classification", "labels": ["0", "1"], "max_length": 32}
    (bundle / "config.json").write_text(json.dumps({**config, "text_fields": ["text"]}))
    shutil.copy(tiny_bert / "tokenizer.json", bundle / "tokenizer.json")
    (bundle / "model.onnx").write_bytes(b"\x08\x07garbage" * 64)
    r = _cli(["predict", "bundle", "a fine film"], project)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "bundle/model.onnx: not an ONNX model" in r.output and "deploy/" in r.output


def test_a_truncated_checkpoint_is_logged_and_training_restarts(project: Path):
    """Not a refusal: a damaged checkpoint is named in the log and its stage trains again from step 0."""
    run, ck = project / "exported" / "t", project / "exported" / "ck"
    shutil.copytree(run, ck, ignore=shutil.ignore_patterns(".lock*"))
    man = json.loads((ck / "manifest.json").read_text())
    tmp = ck / "01_finetune.tmp"
    (ck / "01_finetune").rename(tmp)  # as a run killed mid-training leaves it
    (tmp / ".fingerprint").write_text(man["stages"]["finetune"]["fingerprint"])
    (tmp / "checkpoints").mkdir()
    (tmp / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 half a zip file" * 10)
    man["stages"]["finetune"]["status"] = "running"
    (ck / "manifest.json").write_text(json.dumps(man))
    r = _cli(["pipeline", "run", "p.yaml", "--no-progress", "--run-name", "ck"], project)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "checkpoints/last.pt cannot be read" in r.output and "starts over from step 0" in r.output
    assert "[finetune] running" in r.output and (ck / "01_finetune" / "model" / "model.safetensors").is_file()
