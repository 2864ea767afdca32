"""What the export stage checks its files against, and on which examples.

* **Choices are made off the dev set.** The int8 fallbacks (which MatMuls or layers stay float) are decided on
  a *selection slice*: ``export.selection_examples`` training examples (a fixed slice, seeded apart from the
  calibration slice), with PyTorch's labels (dynamic int8: label agreement) or the task's labels (static int8:
  the metric within tolerance of PyTorch's on the same slice). The dev set is scored once, afterwards.
* **int8 is measured the way it runs.** Dynamic int8 quantises activations per call, so a result depends on
  the batch it is in. An int8 variant's dev metric is measured at batch 1 (one input per call, the ship shape's
  batch) and at the batching :class:`~compresstune.deploy.predictor.Predictor` uses by default (32, longest
  first); both are recorded and the worse one is the variant's metric.
* **Paired against PyTorch.** Every variant's dev predictions are compared with PyTorch's on the same examples:
  how many only PyTorch gets right, how many only the variant, and McNemar's exact test on those two counts."""

from __future__ import annotations

import numpy as np

from ..data.batching import collate, encode
from ..data.metrics import compute_metrics
from ..export.onnx import make_session, max_abs_diff_at_shapes, ort_predict, ort_run
from ..models.inputs import model_inputs
from ..train.evaluate import logits_to_preds, predict
from .base import StageContext

PREDICT_BATCH = 32  # Predictor's default batch size (deploy/predictor.py)
SELECTION_SEED_OFFSET = 7919  # the selection slice is drawn apart from the calibration slice (same seed + this)


def predictor_order_logits(sess, encoded: list[dict], pad_id: int, batch_size: int) -> np.ndarray:
    """Logits as :class:`Predictor` computes them: batches of ``batch_size``, longest inputs first."""
    names = [i.name for i in sess.get_inputs()]
    lengths = np.array([len(e["input_ids"]) for e in encoded])
    order = np.argsort(-lengths, kind="stable")
    out = None
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = collate([encoded[i] for i in idx], pad_id, "token_type_ids" in names)
        res = ort_run(sess, {k: v.numpy() for k, v in batch.items()})
        out = np.empty((len(encoded), res.shape[1]), dtype=np.float32) if out is None else out
        out[idx] = res
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)


def mcnemar(ref_right: np.ndarray, var_right: np.ndarray) -> dict:
    """McNemar's exact test of two classifiers on the same examples: the discordant counts and the two-sided p."""
    from scipy.stats import binomtest

    b = int((ref_right & ~var_right).sum())  # only the reference right
    c = int((~ref_right & var_right).sum())  # only the variant right
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"examples": int(len(ref_right)), "only_pytorch_right": b, "only_variant_right": c, "p_value": p}


class Checker:
    """The verification data of one export: dev and selection examples encoded once, PyTorch's outputs once."""

    def __init__(self, ctx: StageContext, model, tok):
        self.ctx, self.model, self.tok = ctx, model, tok
        self.max_length = ctx.pipeline.task.max_length
        self.enc = encode(tok, ctx.task.dev, self.max_length)
        self.pad = tok.pad_token_id or 0
        n = getattr(ctx.cfg, "selection_examples", 512)
        self.selection = ctx.task.train.subset(n, ctx.seed + SELECTION_SEED_OFFSET)
        self.sel_enc = encode(tok, self.selection, self.max_length)
        self._torch_dev = self._torch_sel = None

    # --- PyTorch, once ------------------------------------------------------------------------------------
    def torch_dev_logits(self) -> np.ndarray:
        if self._torch_dev is None:
            self._torch_dev = predict(self.model, self.enc, self.pad)
        return self._torch_dev

    def torch_sel_logits(self) -> np.ndarray:
        if self._torch_sel is None:
            self._torch_sel = predict(self.model, self.sel_enc, self.pad)
        return self._torch_sel

    def torch_metrics(self) -> dict:
        task = self.ctx.task
        return compute_metrics(task, logits_to_preds(task, self.torch_dev_logits()), task.dev.labels)

    def torch_selection_metric(self) -> float:
        task = self.ctx.task
        return compute_metrics(task, logits_to_preds(task, self.torch_sel_logits()), self.selection.labels)["main"]

    # --- choices, on the selection slice (never the dev set) ---------------------------------------------------
    def agreement(self, path) -> float | None:
        """Share of selection examples whose ONNX Runtime label equals PyTorch's (None for regression): the lowest
        over batches of 1 and of 32, since dynamic int8 quantises activations per batch and so depends on it."""
        if self.ctx.task.is_regression:
            return None
        want = self.torch_sel_logits().argmax(-1)
        sess = make_session(path, "cpu")
        got = [ort_predict(sess, self.sel_enc, self.pad, batch_size=bs).argmax(-1) for bs in (1, 32)]
        return min(float((g == want).mean()) for g in got)

    def selection_metric(self, path) -> float:
        """The task metric on the selection slice (static int8's fallback accepts by it)."""
        task = self.ctx.task
        logits = ort_predict(make_session(path, "cpu"), self.sel_enc, self.pad)
        return compute_metrics(task, logits_to_preds(task, logits), self.selection.labels)["main"]

    # --- verification on dev, once, after the file is made ----------------------------------------------------
    def dev_metric_of_session(self, sess) -> dict:
        task = self.ctx.task
        return compute_metrics(task, logits_to_preds(task, ort_predict(sess, self.enc, self.pad)), task.dev.labels)

    def dev_metric(self, path, provider: str = "cpu", per_call: bool = False) -> dict:
        """The dev metrics of ``path`` on ``provider``; ``per_call`` (dynamic int8): measured at batch 1 and at
        Predictor's batching, both under ``by_batching``, the worse one as the metrics (``main`` included), and
        the paired comparison with PyTorch under ``paired_vs_pytorch``."""
        task, sess = self.ctx.task, make_session(path, provider)
        runs = {"length_sorted_128": ort_predict(sess, self.enc, self.pad)}
        if per_call:
            runs = {
                f"predict_{PREDICT_BATCH}": predictor_order_logits(sess, self.enc, self.pad, PREDICT_BATCH),
                "batch_1": predictor_order_logits(sess, self.enc, self.pad, 1),
            }
        scored = {k: compute_metrics(task, logits_to_preds(task, v), task.dev.labels) for k, v in runs.items()}
        worst = min(scored, key=lambda k: scored[k]["main"])
        out = dict(scored[worst])
        if per_call:
            out["by_batching"] = {k: m["main"] for k, m in scored.items()}
            out["decided_by"] = worst
        if not task.is_regression:
            labels = np.asarray(task.dev.labels)
            ref_right = self.torch_dev_logits().argmax(-1) == labels
            out["paired_vs_pytorch"] = mcnemar(ref_right, runs[worst].argmax(-1) == labels)
        return out

    def logit_diffs(self, path, provider: str = "cpu") -> dict:
        return max_abs_diff_at_shapes(self.model, make_session(path, provider), self.ctx.cfg.verify_shapes)

    def cuda_usable(self) -> bool:
        """The run uses CUDA and ONNX Runtime has its CUDA provider: variants are then verified there."""
        import onnxruntime as ort
        import torch

        return (
            self.ctx.device.startswith("cuda")
            and torch.cuda.is_available()
            and "CUDAExecutionProvider" in ort.get_available_providers()
        )

    def calibration_feeds(self) -> list[dict]:
        """Training examples (a fixed subset), batched with dynamic padding, as ONNX Runtime feeds."""
        ctx = self.ctx
        split = ctx.task.train.subset(ctx.cfg.calibration_examples, ctx.seed)
        enc = encode(self.tok, split, self.max_length)
        names = model_inputs(self.model)
        feeds = []
        for i in range(0, len(enc), 16):
            batch = collate(enc[i : i + 16], self.pad, "token_type_ids" in names)
            feeds.append({k: v.numpy() for k, v in batch.items() if k in names})
        return feeds
