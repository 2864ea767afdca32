"""``report``: ``REPORT.md`` and ``report.json`` for the whole run, a training-curve plot,
and the deployable files published at the top of the run folder (model.onnx,
tokenizer/, labels.json)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..machine import describe, profile
from ..manifest import Manifest, write_json_atomic
from ..measure.markdown import md_table
from ..models.artifacts import versions
from . import ship
from .base import Stage, StageContext, register


def _fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _plot_history(histories: dict[str, list], metric: str, path: Path) -> bool:
    pts = {k: h for k, h in histories.items() if h}
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, h in pts.items():
        ax.plot([r["epoch"] for r in h], [r["dev_main"] for r in h], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"dev {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _publish(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``, replacing it atomically. A copy, never a hard link: a file edited or replaced at
    the top of the run folder must not change the stage output it was published from."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copy2(src, tmp)
    if dst.is_dir():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


@register
class ReportStage(Stage):
    type = "report"
    uses_model_and_task = False

    def run(self, ctx: StageContext) -> dict:
        manifest = Manifest.load(ctx.run_dir)
        stages = {}
        for ref in ctx.inputs:
            rec = manifest.stages.get(ref.name, {})
            stages[ref.name] = {
                "type": ref.type,
                "fingerprint": rec.get("fingerprint"),
                "output": rec.get("output"),
                "wall_time_s": rec.get("wall_time_s"),
                "peak_rss_mb": rec.get("peak_rss_mb"),
                "summary": ref.summary,
                "reused_from": rec.get("reused_from"),
            }
        report = {
            "run": ctx.run_dir.name,
            "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "config_file": ctx.pipeline.source,
            "model": ctx.pipeline.model,
            "task": ctx.pipeline.task.name,
            "evaluated_on": _evaluated_on(ctx),
            "machine": profile(),
            "versions": versions(),
            "stages": stages,
        }
        md = self._markdown(report, ctx)
        hist = {n: s["summary"].get("history") for n, s in stages.items() if s["type"] == "finetune"}
        metric = next((s["summary"].get("metric") for s in stages.values() if s["summary"].get("metric")), "metric")
        if _plot_history(hist, metric, ctx.out_dir / "training_curve.png"):
            md += "\n![training curve](training_curve.png)\n"
        ship_md, report["ship"], pngs = self._ship(ctx, stages, metric)
        md += "\n".join(ship_md) + "\n" + "".join(f"\n![{p[:-4]}]({p})\n" for p in pngs)
        (ctx.out_dir / "REPORT.md").write_text(md)
        write_json_atomic(ctx.out_dir / "report.json", report)
        published = self._publish_all(ctx, stages, pngs)
        return {"published": published, "ship": report["ship"]}

    def _ship(self, ctx: StageContext, stages: dict, metric: str) -> tuple[list[str], dict, list[str]]:
        """Choose the variant to ship by the stated rule, write its deploy bundle; markdown, record, plots."""
        cfg = ctx.cfg
        cands = ship.candidates(stages, cfg.ship_shape)
        if not cands:
            return [], {}, []
        decision = ship.choose(cands, cfg.ship_rule, cfg.ship_shape)
        decision["candidates"] = [{k: v for k, v in c.items() if k != "timed"} for c in cands]
        pngs = ship.plots(cands, stages, cfg.ship_shape, metric, ctx.out_dir)
        if decision["chosen"] and cfg.bundle:
            decision["bundle"] = self._bundle(ctx, stages, decision)
        ctx.log(f"[{ctx.name}] shipped: {decision['chosen']} ({decision['why']})")
        shipped = next((c for c in cands if c["variant"] == decision["chosen"]), None)
        if shipped and shipped.get("paired"):
            ctx.log(f"[{ctx.name}] {decision['chosen']} against PyTorch on dev: {ship.paired_text(shipped['paired'])}")
        return ship.variant_markdown(cands, decision, stages, metric), decision, pngs

    def _bundle(self, ctx: StageContext, stages: dict, decision: dict) -> dict:
        from ..deploy.bundle import bundle_sizes, normalize_config, write_bundle
        from ..deploy.card import model_card
        from ..deploy.edge import mobile_note, mobile_usability
        from ..deploy.verify import machine_record, write_verification_set
        from .card_facts import card_meta

        cfg, path, tok_dir, source = ship.bundle_config(stages, decision, ctx.run_dir)
        names = ctx.task.label_names
        if names and not ctx.task.is_regression and len(names) == len(cfg.get("label_names") or names):
            cfg["label_names"] = list(names)  # the task's names (GLUE: negative/positive, ...), also for older runs
        if ctx.pipeline.task.holdout:  # the metric was measured on held-out training examples, not on dev
            cfg["metric"]["split"] = f"held-out ({ctx.pipeline.task.holdout} training examples, task.holdout)"
        cfg["built_on"] = {**machine_record(decision.get("provider") or "cpu"), **ship.int8_settings(stages, decision)}
        mobile = mobile_usability(path)  # ORT's estimate of what NNAPI / CoreML could run, for the card
        note = mobile_note(mobile)
        card = model_card(
            {
                **normalize_config(cfg),
                "problem_type": "regression" if cfg.get("is_regression") else "single_label_classification",
            },
            description=None,
            data=_data_line(ctx),
            latency=ship.card_latency(stages, decision["chosen"]),
            machine=describe(profile()),
            verified_on="\n\n".join(x for x in (ship.verified_on_line(decision["chosen"], cfg["built_on"]), note) if x),
            how_made=f"compresstune pipeline `{Path(ctx.pipeline.source or 'pipeline.yaml').name}` "
            f"(stages: {', '.join(ctx.pipeline.stages)}); "
            f"variant {decision['chosen']} chosen by {decision['why']}.",
            bundle_name="deploy",
            meta=card_meta(ctx),
        )
        rep = write_bundle(ctx.out_dir / "deploy", path, tok_dir, cfg, card, source_dir=source)
        rep["mobile_usability"] = mobile
        if ctx.cfg.trim_vocab:
            rep["vocab"] = self._trim(ctx)
        rep["verification"] = write_verification_set(
            ctx.out_dir / "deploy", ship.plain(ctx.task.dev.texts), seed=ctx.pipeline.seed
        )
        ctx.log(
            f"[{ctx.name}] verification set: {rep['verification']['examples']} inputs with this machine's labels and "
            "logits in deploy/verify.json (`compresstune verify deploy` checks the bundle on another machine)"
        )
        rep.update(bundle_sizes(ctx.out_dir / "deploy"))  # the files as shipped (edge/ is extra, not counted)
        if ctx.cfg.edge or ctx.cfg.fixed_shape:
            model = ctx.out_dir / "deploy" / rep["config"]["files"]["model"]
            rep["edge"] = ship.edge_packaging(ctx.out_dir / "deploy", model, ctx.cfg)
        rep["dir"] = "deploy"
        return rep

    @staticmethod
    def _trim(ctx: StageContext) -> dict:
        v = ship.trim_bundle(ctx.out_dir / "deploy", ctx.task, ctx.cfg.trim_min_agreement, ctx.log)
        if v["trimmed"]:
            with open(ctx.out_dir / "deploy" / "README.md", "a", encoding="utf-8") as f:
                f.write(
                    f"\nVocabulary trimmed to the {v['vocab_after']} word pieces of the training text (from "
                    f"{v['vocab_before']}): dev metric {v['dev_metric']:.2f}, dev labels agree "
                    f"{v['check']['label_agreement']:.2%} with the untrimmed model; words never seen in "
                    "training split into shorter pieces or [UNK].\n"
                )
        return v

    def _publish_all(self, ctx: StageContext, stages: dict, pngs: list[str]) -> list[str]:
        out = []
        for name in ("REPORT.md", "report.json", "training_curve.png", "deploy", *pngs):
            if (ctx.out_dir / name).exists():
                _publish(ctx.out_dir / name, ctx.run_dir / name)
                out.append(name)
        exports = [n for n, s in stages.items() if s["type"] == "export"]
        if exports:
            src = ctx.run_dir / stages[exports[-1]]["output"]
            for name in ("model.onnx", "tokenizer", "labels.json"):
                if (src / name).exists():
                    _publish(src / name, ctx.run_dir / name)
                    out.append(name)
        return out

    def _markdown(self, r: dict, ctx: StageContext) -> str:
        L = _md_head(r) + _md_stage_table(r["stages"])
        for n, s in r["stages"].items():
            section = _MD_SECTIONS.get(s["type"])
            if section is not None:
                L += section(n, s["summary"], ctx)
        L += _md_latency(r["stages"])
        return "\n".join(L) + "\n"


def _md_head(r: dict) -> list[str]:
    return [
        f"# compresstune report: {r['run']}",
        "",
        f"Pipeline `{r['config_file']}`, model `{r['model']}`, task `{r['task']}`. Generated {r['generated_at']}.",
        f"Every metric below is on {r.get('evaluated_on', 'the dev set')}.",
        f"Machine: {describe(r['machine'])}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
    ]


def _md_stage_table(stages: dict) -> list[str]:
    rows = []
    for n, s in stages.items():
        reused = f" (reused from {s['reused_from']})" if s.get("reused_from") else ""
        rows.append(
            [n, s["type"], _fmt(s["wall_time_s"], 1) + reused, _fmt(s["peak_rss_mb"], 0), f"`{s['fingerprint']}`"]
        )
    headers = ["stage", "type", "wall time (s)", "peak RSS (MB)", "fingerprint"]
    return ["", "## Stages", "", md_table(headers, rows)]


def _md_finetune(n: str, sm: dict, ctx: StageContext) -> list[str]:
    if sm.get("resumed_from_step"):
        excluded = f" (evaluation excluded; resumed once from step {sm['resumed_from_step']})"
    else:
        excluded = " (evaluation excluded)"
    select = getattr(ctx.pipeline.stages.get(n), "select", "best")
    return [
        "",
        f"## Training: {n}",
        "",
        f"Method `{sm['method']}`; {sm['train_examples']} train / {sm['dev_examples']} dev examples; "
        f"{sm['steps']} steps ({sm['epochs']} epochs) in {_fmt(sm['train_time_s'], 1)} s{excluded}.",
        f"Parameters: {sm['total_params']:,} total, {sm['trainable_params']:,} trained.",
        f"Dev {sm['metric']}: best of {len(sm.get('history') or [])} dev evaluations {_fmt(sm['best_dev_metric'])} "
        f"(step {sm['best_step']}), "
        f"final {_fmt(sm['final_dev_metric'])}; the stage outputs the {select} weights.",
    ]


def _md_export(n: str, sm: dict, ctx: StageContext) -> list[str]:
    diffs = ", ".join(f"{k}: {v:.2e}" for k, v in sm["max_abs_diff"].items())
    rows = [[k, f"{sm['dev_pytorch'][k]:.2f}", f"{sm['dev_onnx'][k]:.2f}"] for k in sm["dev_pytorch"] if k != "main"]
    return [
        "",
        f"## Export: {n}",
        "",
        f"ONNX opset {sm['opset']}, {sm['size_mb']} MB. Max |logit difference| vs PyTorch: {diffs}"
        f" (tolerance {sm['atol']}).",
        "",
        md_table(["dev metric", "PyTorch", "ONNX Runtime"], rows),
    ]


def _md_benchmark(n: str, sm: dict, ctx: StageContext) -> list[str]:
    rows = [
        [
            row["engine"],
            row["batch"],
            row["seq"],
            f"{row['p50_ms']:.2f}",
            f"{row['p90_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['throughput_seq_s']:.1f}",
        ]
        for row in sm["rows"]
    ]
    L = [
        "",
        f"## Benchmark: {n}",
        "",
        f"{sm['threads']} threads; providers {sm['active_providers']}. Latency in ms over full-length random inputs.",
        "",
        md_table(["engine", "batch", "seq", "p50", "p90", "p99", "seq/s"], rows),
    ]
    cmp = sm.get("comparison")
    return L + _md_comparison(cmp) if cmp else L


def _md_comparison(cmp: dict) -> list[str]:
    rows = [
        [
            row["engine"],
            f"{row['batch']} x {row['seq']}",
            f"{row['p50_ms']:.2f}",
            f"{row['baseline_p50_ms']:.2f}",
            f"{row['speedup']:.2f}x",
        ]
        for row in cmp["rows"]
    ]
    headers = ["engine", "batch x seq", "this p50 (ms)", "baseline p50 (ms)", "speed-up"]
    return [
        "",
        f"Back to back against `{cmp['baseline']}` ({cmp['baseline_onnx']}, {cmp['baseline_onnx_mb']} MB vs this "
        f"model's {cmp['onnx_mb']} MB): {cmp['rounds']} rounds per point, each timing both back to back (order "
        "alternating); each p50 is over all calls of all rounds, the speed-up the median of the per-round ratios.",
        "",
        md_table(headers, rows),
    ]


def _md_compress(n: str, sm: dict, ctx: StageContext) -> list[str]:
    b, a = sm["before"], sm["after"]
    rows = [
        ["parameters", f"{b['params']['total']:,}", f"{a['params']['total']:,}"],
        ["embeddings", f"{b['params']['embeddings']:,}", f"{a['params']['embeddings']:,}"],
        ["encoder", f"{b['params']['encoder']:,}", f"{a['params']['encoder']:,}"],
        ["encoder layers", b["layers"], a["layers"]],
    ]
    for seq in b["gflops_per_seq"]:
        rows.append([f"encoder GFLOPs / sequence of {seq}", b["gflops_per_seq"][seq], a["gflops_per_seq"][seq]])
    rows.append([f"dev {sm['metric']}", _fmt(b.get("dev")), _fmt(a.get("dev"))])
    rows.append(["weights on disk (MB)", "", sm["size_mb"]])
    L = ["", f"## Compression: {n} ({sm['method']})", "", md_table(["", "before", "after"], rows)]
    if sm.get("prune"):
        shapes = ", ".join(f"({x['heads']}, {x['ffn']})" for x in sm["prune"]["layer_shapes_after"])
        L += ["", "Per-layer (heads, FFN) after pruning: " + shapes]
    return L


_MD_SECTIONS = {"finetune": _md_finetune, "export": _md_export, "benchmark": _md_benchmark, "compress": _md_compress}


def _md_latency(stages: dict) -> list[str]:
    """ONNX Runtime p50s of every benchmark stage against the first one's (when there are two or more)."""
    benches = [(n, s["summary"]) for n, s in stages.items() if s["type"] == "benchmark"]
    if len(benches) < 2:
        return []
    base_name, base = benches[0]
    ref = {(row["engine"], row["batch"], row["seq"]): row["p50_ms"] for row in base["rows"]}
    rows = []
    for name, sm in benches:
        for row in sm["rows"]:
            if not row["engine"].startswith("ort"):
                continue
            k = (row["engine"], row["batch"], row["seq"])
            sp = f"{ref[k] / row['p50_ms']:.2f}x" if k in ref else "-"
            rows.append([name, row["engine"], f"{row['batch']} x {row['seq']}", f"{row['p50_ms']:.2f}", sp])
    return [
        "",
        f"## Latency against {base_name}",
        "",
        "ONNX Runtime p50 (ms) per grid point; speed-up = baseline p50 / this p50. The stages ran at "
        "different times, so machine drift enters these ratios; a benchmark stage with `baseline:` measures "
        "back to back (above).",
        "",
        md_table(["benchmark", "engine", "batch x seq", "p50 (ms)", "speed-up"], rows),
    ]


def _evaluated_on(ctx: StageContext) -> str:
    h = ctx.pipeline.task.holdout
    return f"{h} training examples held out (task.holdout; the dev set was not used)" if h else "the dev set"


def _data_line(ctx: StageContext) -> str:
    t = ctx.pipeline.task
    if t.holdout:
        return (
            f"{t.name}: trained on its training set less {t.holdout} examples held out at random (task.holdout), "
            "evaluated on those held-out examples; the dev set was not used."
        )
    return f"{t.name}: trained on its training set, evaluated on its dev set."
