"""Determinism on CPU: the same config and seed give the same dev metrics and the same exported ONNX weights,
in two processes with different hash seeds (a list built from a set of strings changes order between them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent

# Taylor pruning healed by distillation, Learners with priming merged, and LoRA merged: the methods whose
# parameter lists are assembled from groups; two exports.
EXTRA = """
compress: {method: prune, importance: taylor, head_ratio: 0.5, ffn_ratio: 0.5, calibration_examples: 64,
           heal_epochs: 0.5, lr: 1.0e-3, batch_size: 16}
finetune: {method: learner, rank: 4, priming_epochs: 1, epochs: 2, lr: 1.0e-3, batch_size: 16}
merge: {}
export: {verify_shapes: [[1, 7]], variants: [fp32, int8_dynamic]}
lora: {type: finetune, input: pretrained, method: lora, rank: 4, epochs: 1, lr: 1.0e-3, batch_size: 16}
lora_merge: {type: merge, input: lora}
lora_export: {type: export, input: lora_merge, verify_shapes: [[1, 7]], variants: [fp32]}
"""
STAGES = "[compress, finetune, merge, export, lora, lora_merge, lora_export]"


def _run(tmp_path: Path, pipeline: Path, out: str, hash_seed: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": hash_seed}
    for k in ("COMPRESSTUNE_FAULT_KILL_AT", "COMPRESSTUNE_FAULT_KILL_AFTER_STEP"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "compresstune.cli", "pipeline", "run", str(pipeline), "--no-progress"]
    r = subprocess.run([*cmd, "--output-dir", out], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((tmp_path / out / "t" / "manifest.json").read_text())


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_same_config_and_seed_give_the_same_metrics_and_onnx_weights(tmp_path, tiny_bert, glue_dir):
    p = tmp_path / "p.yaml"
    p.write_text(
        f"name: t\nmodel: {tiny_bert}\nseed: 7\ndevice: cpu\nstages: {STAGES}\n"
        f"task: {{name: sst2, glue_dir: {glue_dir}, train_subset: 96, dev_subset: 48, max_length: 32}}\n{EXTRA}"
    )
    a = _run(tmp_path, p, "a", "1")
    b = _run(tmp_path, p, "b", "2")
    for name in ("compress", "finetune", "lora"):
        sa, sb = a["stages"][name]["summary"], b["stages"][name]["summary"]
        if name != "compress":
            assert abs(sa["dev_metric"] - sb["dev_metric"]) <= 1e-6, name
            assert [h["dev_main"] for h in sa["history"]] == [h["dev_main"] for h in sb["history"]], name
            assert [h["train_loss"] for h in sa["history"]] == [h["train_loss"] for h in sb["history"]], name
    for name in ("export", "lora_export"):
        ea, eb = a["stages"][name]["summary"], b["stages"][name]["summary"]
        assert abs(ea["dev_onnx"]["main"] - eb["dev_onnx"]["main"]) <= 1e-6
        assert abs(ea["dev_pytorch"]["main"] - eb["dev_pytorch"]["main"]) <= 1e-6
        for variant, rec in ea["variants"].items():
            assert rec["passed"] and abs(rec["dev"]["main"] - eb["variants"][variant]["dev"]["main"]) <= 1e-6
            f = "model.onnx" if variant == "fp32" else f"model.{variant}.onnx"
            wa = _initializers(tmp_path / "a" / "t" / a["stages"][name]["output"] / f)
            wb = _initializers(tmp_path / "b" / "t" / b["stages"][name]["output"] / f)
            assert wa.keys() == wb.keys(), (name, variant)
            differ = [k for k in wa if not np.array_equal(wa[k], wb[k])]
            assert not differ, (name, variant, differ[:5])


def test_gradient_clipping_does_not_depend_on_the_order_methods_list_parameters(
    tiny_bert, glue_dir, tmp_path, monkeypatch
):
    """The training loop clips (a float sum of squares) over the parameters in the model's order, whatever
    order the method handed them in: the Learner method once built that list from a set of group names, whose
    order changes with the process's hash seed."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compresstune.data.glue import load_glue
    from compresstune.methods.groups import param_groups
    from compresstune.methods.learner import BASE_GROUPS
    from compresstune.methods.learner_layer import attach_learners
    from compresstune.train.loop import train
    from compresstune.train.options import TrainOptions

    task = load_glue("sst2", "local", str(glue_dir))
    task.train, task.dev = task.train.subset(48, 0), task.dev.subset(16, 0)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    opts = TrainOptions(epochs=1, lr=3e-3, batch_size=16, max_grad_norm=0.05, select="last", seed=3)
    clip = torch.nn.utils.clip_grad_norm_
    calls: list = []

    def spy(params, *a, **kw):
        norm = clip(params, *a, **kw)
        calls.append(([names[id(p)] for p in params], norm.item()))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    runs = []
    for order in (1, -1):
        torch.manual_seed(0)
        m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        attach_learners(m, 4)
        names = {id(p): n for n, p in m.named_parameters()}
        groups = param_groups(m)
        params = [p for g in BASE_GROUPS[::order] for _, p in groups[g][::order]]
        chosen = {id(p) for p in params}
        for p in m.parameters():
            p.requires_grad_(id(p) in chosen)
        calls.clear()
        train(m, task, tok, opts, tmp_path / str(order), max_length=32, optimizer_params=params, progress=False)
        runs.append((list(calls), {k: v.clone() for k, v in m.state_dict().items()}))
    (calls_a, wa), (calls_b, wb) = runs
    model_order = [n for n, p in m.named_parameters() if id(p) in chosen]
    assert len(calls_a) == 3 and all(order == model_order for order, _ in calls_a + calls_b)
    assert [n for _, n in calls_a] == [n for _, n in calls_b]  # the same norms, bit for bit
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
