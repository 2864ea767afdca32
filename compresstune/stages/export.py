"""``export``: ONNX model + verification.

Writes ``model.onnx`` with the tokenizer and label metadata beside it (a self-contained
deployable folder), then checks (1) logits against PyTorch at shapes other than the
export shape and (2) the dev-set metric computed with ONNX Runtime against the
PyTorch one. Either check failing stops the run."""

from __future__ import annotations

import json
import os

from ..data.batching import encode
from ..data.metrics import compute_metrics
from ..errors import CheckFailed, UserError
from ..export.onnx import EXPORT_SHAPE, export_onnx, make_session, max_abs_diff_at_shapes, ort_predict
from ..methods import load_artifact as load_model
from ..train.evaluate import logits_to_preds, predict
from .base import Stage, StageContext, register


@register
class ExportStage(Stage):
    type = "export"

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.cfg
        mdir = ctx.require_input_model_dir("export")
        for b, s in cfg.verify_shapes:
            if (b, s) == EXPORT_SHAPE:
                raise UserError(
                    f"{ctx.name}.verify_shapes: {b}x{s} is the export shape; verification must use other shapes."
                )
        model, tok, meta = load_model(mdir)
        path = ctx.out_dir / "model.onnx"
        ctx.log(f"[{ctx.name}] exporting {mdir} to ONNX (opset {cfg.opset})")
        export_onnx(model, path, cfg.opset)
        tok.save_pretrained(ctx.out_dir / "tokenizer")
        (ctx.out_dir / "labels.json").write_text(json.dumps(meta.get("task", {}), indent=2))

        sess = make_session(path, "cpu")
        diffs = max_abs_diff_at_shapes(model, sess, cfg.verify_shapes)
        worst = max(diffs.values())
        if worst > cfg.atol:
            raise CheckFailed(
                f"{ctx.name}: ONNX logits differ from PyTorch by {worst:.2e} (> atol {cfg.atol}) at shapes {diffs}; "
                "the export is wrong."
            )

        task = ctx.task
        enc = encode(tok, task.dev, ctx.pipeline.task.max_length)
        pad = tok.pad_token_id or 0
        torch_metrics = compute_metrics(task, logits_to_preds(task, predict(model, enc, pad)), task.dev.labels)
        onnx_logits = ort_predict(sess, enc, pad)
        onnx_metrics = compute_metrics(task, logits_to_preds(task, onnx_logits), task.dev.labels)
        gap = abs(onnx_metrics["main"] - torch_metrics["main"])
        cuda = self._check_cuda(path, enc, pad, task, torch_metrics, cfg, ctx)
        ctx.log(
            f"[{ctx.name}] max |diff| {worst:.2e}; "
            f"dev {task.metric}: onnx {onnx_metrics['main']:.2f} vs pytorch {torch_metrics['main']:.2f}"
        )
        if gap > cfg.metric_tolerance:
            raise CheckFailed(
                f"{ctx.name}: ONNX dev {task.metric} {onnx_metrics['main']:.2f} differs from "
                f"PyTorch {torch_metrics['main']:.2f} by more than {cfg.metric_tolerance} points."
            )
        return {
            "onnx": "model.onnx",
            "opset": cfg.opset,
            "size_mb": round(os.path.getsize(path) / 2**20, 2),
            "model_dir": ctx.rel(mdir),
            "max_abs_diff": diffs,
            "atol": cfg.atol,
            "metric": task.metric,
            "dev_pytorch": torch_metrics,
            "dev_onnx": onnx_metrics,
            "dev_gap_points": gap,
            **cuda,
        }

    @staticmethod
    def _check_cuda(path, enc, pad, task, torch_metrics, cfg, ctx) -> dict:
        """Where a GPU and onnxruntime-gpu are present, the CUDA provider's dev metric is checked too
        (TF32 and fused kernels change the numbers)."""
        import onnxruntime as ort
        import torch

        if not (torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()):
            return {}
        sess = make_session(path, "cuda")
        m = compute_metrics(task, logits_to_preds(task, ort_predict(sess, enc, pad)), task.dev.labels)
        gap = abs(m["main"] - torch_metrics["main"])
        ctx.log(f"[{ctx.name}] dev {task.metric} on the CUDA provider: {m['main']:.2f}")
        if gap > cfg.metric_tolerance:
            raise CheckFailed(
                f"{ctx.name}: ONNX Runtime CUDA dev {task.metric} {m['main']:.2f} differs from "
                f"PyTorch {torch_metrics['main']:.2f} by more than {cfg.metric_tolerance} points."
            )
        return {"dev_onnx_cuda": m, "dev_gap_points_cuda": gap}
