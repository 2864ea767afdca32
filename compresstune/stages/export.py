"""``export``: ONNX model, its optimised and quantised variants, and their verification.

Writes ``model.onnx`` (fp32) with the tokenizer and label metadata beside it, then checks
(1) logits against PyTorch at shapes other than the export shape and (2) the dev-set metric
computed with ONNX Runtime against the PyTorch one; either failing stops the run. Then it
builds the configured variants (export/variants.py: ``model.optimized.onnx``,
``model.int8_dynamic.onnx``, ...) and verifies each the same way with its own tolerance; a
variant that fails is recorded as failed and never shipped, and the stage goes on."""

from __future__ import annotations

import json
import os

from ..data.glue import GLUE_TASKS
from ..errors import CheckFailed, UserError
from ..export.onnx import EXPORT_SHAPE, export_onnx, make_session, max_abs_diff_at_shapes
from ..export.variants import VariantBuilder, get_variant, kind_of, resolve_variants, target_provider, verify_variant
from ..methods import load_artifact as load_model
from ..models.arch import arch_for
from ..models.artifacts import layer_shapes
from .base import Stage, StageContext, register
from .export_check import Checker


def text_fields(ctx: StageContext) -> list[str]:
    """The names of the task's text inputs (one, or two for a sentence pair), for the deploy bundle."""
    t = ctx.pipeline.task
    return list(t.text_columns) if t.name == "custom" else list(GLUE_TASKS[t.name].hf_text)


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
        labels = {**meta.get("task", {}), "text_fields": text_fields(ctx)}
        (ctx.out_dir / "labels.json").write_text(json.dumps(labels, indent=2))
        check = Checker(ctx, model, tok)
        summary = self._fp32(ctx, path, check)
        summary["model_dir"] = ctx.rel(mdir)
        summary["variants"] = self._variants(ctx, model, path, check, summary["dev_pytorch"]["main"])
        return summary

    def _fp32(self, ctx: StageContext, path, check) -> dict:
        cfg, task = ctx.cfg, ctx.task
        sess = make_session(path, "cpu")
        diffs = max_abs_diff_at_shapes(check.model, sess, cfg.verify_shapes)
        worst = max(diffs.values())
        if worst > cfg.atol:
            raise CheckFailed(
                f"{ctx.name}: ONNX logits differ from PyTorch by {worst:.2e} (> atol {cfg.atol}) at shapes {diffs}; "
                "the export is wrong."
            )
        torch_metrics = check.torch_metrics()
        onnx_metrics = check.dev_metric_of_session(sess)
        gap = abs(onnx_metrics["main"] - torch_metrics["main"])
        cuda = self._check_cuda(path, check, torch_metrics, cfg, ctx)
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
            "attention": "eager",
            "max_abs_diff": diffs,
            "atol": cfg.atol,
            "metric": task.metric,
            "dev_pytorch": torch_metrics,
            "dev_onnx": onnx_metrics,
            "dev_gap_points": gap,
            **cuda,
        }

    def _variants(self, ctx: StageContext, model, fp32_path, check, reference: float) -> dict:
        cfg = ctx.cfg
        shapes = layer_shapes(model)
        heads = [s["heads"] for s in shapes]
        builder = VariantBuilder(
            fp32_path,
            ctx.out_dir,
            heads[0] if len(set(heads)) == 1 else heads,
            getattr(model.config, arch_for(model).config_hidden),
            model.config.model_type,
            cfg,
            check.calibration_feeds,
            check.selection_metric,  # static int8's fallback accepts on the selection slice, never on dev
            check.torch_selection_metric(),
            log=lambda s: ctx.log(f"[{ctx.name}] {s}"),
            agreement=check.agreement,  # dynamic int8's fallback: label agreement on the selection slice
        )
        cuda = check.cuda_usable()
        out = {}
        for name in resolve_variants(cfg.variants, ctx.device):
            prov = target_provider(name, cuda)  # verified where it would ship: CUDA for fp16/fp32/optimized on a GPU
            tol = cfg.metric_tolerance if name == "fp32" else getattr(cfg.tolerances, kind_of(name))
            details = {}
            if name != "fp32":
                try:
                    details = builder.build(name)
                except Exception as exc:  # noqa: BLE001 - a variant that cannot be built is reported, never shipped
                    out[name] = {
                        "passed": False,
                        "error": f"build failed: {exc.__class__.__name__}: {str(exc)[:300]}",
                        "tolerance": tol,
                    }
                    ctx.log(f"[{ctx.name}] {name}: FAILED to build ({out[name]['error']})")
                    continue
            res = verify_variant(
                name,
                builder.built[name],
                lambda p, prov=prov: check.logit_diffs(p, prov),
                lambda p, prov=prov, name=name: check.dev_metric(p, prov, per_call=get_variant(name).batch_dependent),
                reference,
                tol,
                cfg.atol if name == "fp32" else getattr(cfg.tolerances, f"logits_{kind_of(name)}"),
            )
            out[name] = {**res, "verified_on": prov, "details": details}
            self._log_variant(ctx, name, out[name])
        return out

    @staticmethod
    def _log_variant(ctx: StageContext, name: str, v: dict) -> None:
        if "dev" not in v:
            ctx.log(f"[{ctx.name}] {name}: FAILED ({v.get('error')})")
            return
        why = v.get("error") or f"more than {v['tolerance']} points from PyTorch"
        verdict = "ok" if v["passed"] else f"FAILED ({why})"
        by = v["dev"].get("by_batching")
        batchings = " [" + ", ".join(f"{k} {x:.2f}" for k, x in by.items()) + "]" if by else ""
        p = v["dev"].get("paired_vs_pytorch")
        paired = f"; vs PyTorch {p['only_pytorch_right']}/{p['only_variant_right']}, p {p['p_value']:.2g}" if p else ""
        ctx.log(
            f"[{ctx.name}] {name} ({v['verified_on']} provider): {v['size_mb']} MB, dev {ctx.task.metric} "
            f"{v['dev']['main']:.2f}{batchings} (gap {v['gap_points']:.2f}{paired}), "
            f"max |logit diff| {max(v['max_abs_diff'].values()):.2e}: {verdict}"
        )

    @staticmethod
    def _check_cuda(path, check, torch_metrics, cfg, ctx) -> dict:
        """Where a GPU and onnxruntime-gpu are present, the CUDA provider's dev metric is checked too
        (other kernels, other summation order; TF32 is off there, see ``feeds.PROVIDER_OPTIONS``)."""
        if not check.cuda_usable():
            return {}
        m = check.dev_metric_of_session(make_session(path, "cuda"))
        gap = abs(m["main"] - torch_metrics["main"])
        ctx.log(f"[{ctx.name}] dev {ctx.task.metric} on the CUDA provider: {m['main']:.2f}")
        if gap > cfg.metric_tolerance:
            raise CheckFailed(
                f"{ctx.name}: ONNX Runtime CUDA dev {ctx.task.metric} {m['main']:.2f} differs from "
                f"PyTorch {torch_metrics['main']:.2f} by more than {cfg.metric_tolerance} points."
            )
        return {"dev_onnx_cuda": m, "dev_gap_points_cuda": gap}
