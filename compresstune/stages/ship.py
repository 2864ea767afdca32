"""What the report stage ships: the variant chosen by a stated rule, its deploy bundle, edge
packaging, the variant table and the two decision plots.

Rules (``report.ship_rule``), always among the variants that passed verification (dev metric
within their tolerance of PyTorch) and were timed at the target shape (``report.ship_shape``):
``fastest`` (lowest p50 at the target shape; the default), ``smallest`` (fewest bytes on disk),
``most_accurate`` (highest dev metric, then fastest)."""

from __future__ import annotations

import json
from pathlib import Path

from ..measure.markdown import md_table


def _last(stages: dict, stype: str):
    names = [n for n, s in stages.items() if s["type"] == stype]
    return (names[-1], stages[names[-1]]) if names else (None, None)


def candidates(stages: dict, shape: tuple[int, int]) -> list[dict]:
    """Every variant of the last export with its verification, size and latency at ``shape``."""
    _, export = _last(stages, "export")
    _, bench = _last(stages, "benchmark")
    if export is None:
        return []
    timed = (bench or {}).get("summary", {}).get("variants") or {}
    provider = (bench or {}).get("summary", {}).get("provider", "cpu")  # the provider whose timings decide
    key = f"{shape[0]}x{shape[1]}"
    out = []
    for name, v in (export["summary"].get("variants") or {}).items():
        point = (timed.get(name) or {}).get("points", {}).get(key)
        verified_on = v.get("verified_on", "cpu")
        elsewhere = bool(point) and verified_on != provider  # e.g. timed on CUDA but checked on the CPU provider
        out.append(
            {
                "variant": name,
                "passed": bool(v.get("passed")) and not elsewhere,
                "provider": provider if point else None,
                "verified_on": verified_on,
                "dev": (v.get("dev") or {}).get("main"),
                "gap_points": v.get("gap_points"),
                "tolerance": v.get("tolerance"),
                "size_mb": v.get("size_mb"),
                "error": f"verified on {verified_on}, timed on {provider}" if elsewhere else v.get("error"),
                "paired": (v.get("dev") or {}).get("paired_vs_pytorch"),
                "by_batching": (v.get("dev") or {}).get("by_batching"),
                "p50_ms": point["p50_ms"] if point else None,
                "timed": point,
            }
        )
    return out


def choose(cands: list[dict], rule: str, shape) -> dict:
    """The shipped variant and the reason, in words; ``chosen`` is None when nothing qualifies."""
    ok = [c for c in cands if c["passed"] and c["p50_ms"] is not None]
    if not ok:
        return {
            "rule": rule,
            "shape": list(shape),
            "chosen": None,
            "why": f"no variant both passed verification and was timed at {shape[0]} x {shape[1]}",
        }
    key = {
        "fastest": lambda c: (c["p50_ms"], c["size_mb"]),
        "smallest": lambda c: (c["size_mb"], c["p50_ms"]),
        "most_accurate": lambda c: (-c["dev"], c["p50_ms"]),
    }[rule]
    best = min(ok, key=key)
    failed = [c["variant"] for c in cands if not c["passed"]]
    where = f" on the {best['provider']} provider" if best.get("provider") else ""
    what = {
        "fastest": f"the lowest p50 at batch {shape[0]} x seq {shape[1]}{where} ({best['p50_ms']:.2f} ms; "
        f"{best['size_mb']} MB)",
        "smallest": f"the smallest file ({best['size_mb']} MB; p50 {best['p50_ms']:.2f} ms at {shape[0]} x {shape[1]})",
        "most_accurate": f"the highest dev metric ({best['dev']:.2f}; {best['p50_ms']:.2f} ms, {best['size_mb']} MB)",
    }[rule]
    why = (
        f"rule `{rule}`: among the {len(ok)} variants whose dev metric is within tolerance of PyTorch, "
        f"{best['variant']} has {what}"
        + (f"; not eligible (failed verification): {', '.join(failed)}" if failed else "")
    )
    return {"rule": rule, "shape": list(shape), "chosen": best["variant"], "provider": best.get("provider"), "why": why}


def bundle_config(stages: dict, decision: dict, run_dir: Path) -> tuple[dict, Path, Path, Path | None]:
    """(bundle config, ONNX file, tokenizer folder, the exported checkpoint's folder) of the chosen variant."""
    from ..export.variants import variant_file
    from ..models.artifacts import read_meta

    _, export = _last(stages, "export")
    sm = export["summary"]
    v = sm["variants"][decision["chosen"]]
    out_dir = run_dir / export["output"]
    labels = json.loads((out_dir / "labels.json").read_text())
    metric = {"name": sm["metric"], "dev": v["dev"]["main"], "dev_pytorch": sm["dev_pytorch"]["main"]}
    metric.update({k: v["dev"][k] for k in ("by_batching", "paired_vs_pytorch") if k in v["dev"]})
    cfg = {
        **labels,
        "variant": decision["chosen"],
        "metric": metric,
        "selection": {k: decision[k] for k in ("rule", "shape", "why")},
    }
    source = run_dir / sm["model_dir"] if sm.get("model_dir") else None
    meta = read_meta(source) if source else {}
    if meta.get("layer_shapes") and not meta.get("plain_hf", True):
        # a pruned model's widths differ per layer, which the transformers config cannot say: recorded beside it
        cfg["layer_shapes"] = meta["layer_shapes"]
    return cfg, variant_file(out_dir, decision["chosen"]), out_dir / "tokenizer", source


def int8_settings(stages: dict, decision: dict) -> dict:
    """How the shipped variant was quantised where that depends on the target CPU (``reduce_range``)."""
    _, export = _last(stages, "export")
    details = ((export["summary"].get("variants") or {}).get(decision["chosen"]) or {}).get("details") or {}
    return {"int8_reduce_range": details["reduce_range"]} if "reduce_range" in details else {}


def verified_on_line(variant: str, built: dict) -> str:
    """'int8_dynamic verified on: x86-64 AVX-512 VNNI (AMD EPYC, ...), onnxruntime 1.32.0, CPU provider', with
    what that means for other CPUs when the variant is int8."""
    line = (
        f"{variant} verified on: {built['isa']}, onnxruntime {built['onnxruntime']}, {built['provider'].upper()} "
        f"provider ({built.get('cpu') or 'unknown CPU'}, {built.get('logical_cores')} logical cores)."
    )
    if "int8_reduce_range" in built:
        line += (
            " int8 weights use 7 bits (`reduce_range`), so ONNX Runtime's int8 kernels cannot saturate on x86 CPUs "
            "without VNNI."
            if built["int8_reduce_range"]
            else " int8 weights use 8 bits (`reduce_range` off): exact on CPUs with VNNI; on x86 CPUs without VNNI "
            "ONNX Runtime's int8 kernels can saturate, so check the bundle there with `compresstune verify` first."
        )
    return line


def card_latency(stages: dict, variant: str) -> list[dict]:
    _, bench = _last(stages, "benchmark")
    timed = ((bench or {}).get("summary", {}).get("variants") or {}).get(variant) or {}
    rows = []
    for key, p in timed.get("points", {}).items():
        b, s = key.split("x")
        rows.append({"engine": timed["engine"], "batch": int(b), "seq": int(s), **p})
    return rows


def edge_packaging(bundle_dir: Path, onnx_path: Path, cfg) -> dict:
    """ORT-format model + the operator config a minimal ONNX Runtime build needs; optionally a fixed-shape copy."""
    from ..deploy.edge import fixed_shape, to_ort_format

    out = {}
    try:
        out["ort_format"] = to_ort_format(onnx_path, bundle_dir / "edge")
    except Exception as exc:  # noqa: BLE001 - edge packaging is extra: report why it is missing
        out["ort_format"] = {"error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
    if cfg.fixed_shape:
        b, s = cfg.fixed_shape
        try:
            out["fixed_shape"] = fixed_shape(onnx_path, bundle_dir / "edge" / f"model.{b}x{s}.onnx", b, s)
        except Exception as exc:  # noqa: BLE001
            out["fixed_shape"] = {"error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
    return out


def variant_markdown(cands: list[dict], decision: dict, stages: dict, metric: str) -> list[str]:
    _, bench = _last(stages, "benchmark")
    timed = (bench or {}).get("summary", {}).get("variants") or {}
    refs = (bench or {}).get("summary", {}).get("references") or {}
    rows = []
    for c in cands:
        t = timed.get(c["variant"], {})
        fp = t.get("footprint") or {}
        lat = "; ".join(
            f"{k}: {p['p50_ms']:.2f} ms ({p.get('speedup_vs_pytorch_eager', float('nan')):.2f}x eager, "
            f"{p.get('speedup_vs_onnx_fp32', float('nan')):.2f}x fp32)"
            for k, p in t.get("points", {}).items()
        )
        gap = f"gap {c['gap_points']} > {c['tolerance']}"
        verdict = "ok" if c["passed"] else f"FAILED ({c['error'] or gap})"
        rows.append(
            [
                c["variant"] + (" **(shipped)**" if c["variant"] == decision.get("chosen") else ""),
                "-" if c["dev"] is None else f"{c['dev']:.2f}" + _batchings(c.get("by_batching")),
                paired_text(c.get("paired")),
                verdict,
                c["size_mb"],
                fp.get("load_s", "-"),
                fp.get("peak_rss_mb", "-"),
                lat or "not timed",
            ]
        )
    headers = [
        "variant",
        f"dev {metric}",
        "vs PyTorch, same examples",
        "verification",
        "size (MB)",
        "load (s)",
        "peak RSS (MB)",
        "p50 per batch x seq (speed-up vs the uncompressed model's PyTorch eager, fp32 ONNX)",
    ]
    return [
        "",
        "## Variants and the shipped model",
        "",
        f"Speed-ups are against {refs.get('of', 'this model')}: PyTorch eager (`{refs.get('pytorch_eager')}`) and "
        f"fp32 ONNX (`{refs.get('onnx_fp32')}`), timed back to back in the same rounds.",
        "",
        md_table(headers, rows),
        "",
        f"Shipped: **{decision.get('chosen')}**. {decision['why']}.",
    ]


def _batchings(by: dict | None) -> str:
    return (
        " (" + ", ".join(f"{k.replace('_', ' ')}: {v:.2f}" for k, v in by.items()) + "; the lower counts)" if by else ""
    )


def paired_text(p: dict | None) -> str:
    """'3 right only for PyTorch, 1 only for this model (McNemar exact p = 0.62)'."""
    if not p:
        return "-"
    return (
        f"{p['only_pytorch_right']} right only for PyTorch, {p['only_variant_right']} only for this model "
        f"(McNemar exact p = {p['p_value']:.2g})"
    )


def _point_of(stages: dict, engine: str | None, key: str):
    _, bench = _last(stages, "benchmark")
    for r in (bench or {}).get("summary", {}).get("rows", []):
        if r["engine"] == engine and f"{r['batch']}x{r['seq']}" == key:
            return r["p50_ms"]
    return None


def plots(cands: list[dict], stages: dict, shape, metric: str, out_dir: Path) -> list[str]:
    """accuracy_vs_latency.png (every variant and the uncompressed references at the target shape) and
    latency_vs_batch.png (p50 of every timed variant against batch size, per sequence length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, bench = _last(stages, "benchmark")
    if bench is None:
        return []
    key, refs = f"{shape[0]}x{shape[1]}", bench["summary"].get("references") or {}
    exports = [s for s in stages.values() if s["type"] == "export"]
    ref_export = exports[0]["summary"] if refs.get("of") == "baseline" else exports[-1]["summary"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, c in enumerate(cands):
        if c["p50_ms"] is not None and c["dev"] is not None:
            ax.scatter(c["p50_ms"], c["dev"], marker="o" if c["passed"] else "x", s=40)
            ax.annotate(
                c["variant"],
                (c["p50_ms"], c["dev"]),
                textcoords="offset points",
                xytext=(5, 6 - 12 * (i % 2)),
                fontsize=8,
            )
    for label, engine, dev in (
        ("uncompressed PyTorch eager", refs.get("pytorch_eager"), ref_export["dev_pytorch"]),
        ("uncompressed fp32 ONNX", refs.get("onnx_fp32"), ref_export["dev_onnx"]),
    ):
        p = _point_of(stages, engine, key)
        if p is not None and (refs.get("of") == "baseline" or "PyTorch" in label):
            ax.scatter(p, dev["main"], marker="s", s=40, color="grey")
            ax.annotate(label, (p, dev["main"]), textcoords="offset points", xytext=(-10, -14), fontsize=8, ha="right")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {shape[0]} x seq {shape[1]} (ms, log)")
    ax.set_ylabel(f"dev {metric}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_latency.png", dpi=110)
    plt.close(fig)
    return ["accuracy_vs_latency.png"] + _latency_vs_batch(bench["summary"], out_dir)


def _latency_vs_batch(sm: dict, out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    series = {}
    for r in sm["rows"]:
        series.setdefault((r["engine"], r["seq"]), []).append((r["batch"], r["p50_ms"]))
    seqs = sorted({s for (_, s), pts in series.items() if len(pts) > 1})  # lengths timed at 2+ batch sizes
    if not seqs:
        return []
    fig, axes = plt.subplots(1, len(seqs), figsize=(5 * len(seqs), 3.8), squeeze=False)
    for ax, seq in zip(axes[0], seqs):
        for (engine, s), pts in sorted(series.items()):
            if s == seq and len(pts) > 1:
                pts.sort()
                ax.plot([b for b, _ in pts], [p for _, p in pts], marker="o", label=engine)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"seq {seq}")
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "latency_vs_batch.png", dpi=110)
    plt.close(fig)
    return ["latency_vs_batch.png"]


def plain(texts) -> list:
    """Task texts as the tokenizer takes them: a string, or a (first, second) pair."""
    return [t[0] if len(t) == 1 else tuple(t) for t in texts]


def bundle_metric(bundle_dir: Path, task) -> float:
    """The main metric of a deploy bundle on ``task.dev``, through the torch-free Predictor."""
    from ..data.metrics import compute_metrics
    from ..deploy.predictor import Predictor

    out = Predictor(bundle_dir).predict(plain(task.dev.texts), warn=False)
    preds = [r["value"] for r in out] if task.is_regression else [r["label_id"] for r in out]
    return compute_metrics(task, preds, list(task.dev.labels))["main"]


def _record_trimmed_metric(bundle: Path, metric: float) -> None:
    """The trimmed bundle's own metric becomes the bundle's metric; the untrimmed one is kept beside it."""
    from ..deploy.bundle import rewrite_config
    from ..deploy.layout import load_config

    cfg = load_config(bundle)
    before = cfg.get("metric") or {}
    cfg["metric"] = {
        **{k: before[k] for k in ("name", "dev_pytorch", "split") if k in before},
        "dev": metric,
        "measured": "the trimmed bundle, through Predictor (batches of 32)",
        "before_trim": before,
    }
    rewrite_config(bundle, cfg)


def trim_bundle(bundle_dir: Path, task, min_agreement: float, log) -> dict:
    """``report.trim_vocab``: the bundle's vocabulary cut to the word pieces of the task's training text plus
    the special tokens (deploy/vocab.py), then verified: training-text tokenization and scores unchanged, dev
    labels agreeing with the untrimmed bundle on at least ``min_agreement``, and the dev metric of the trimmed
    bundle measured. A failed check keeps the untrimmed bundle and records why."""
    import os
    import shutil

    from ..deploy.vocab import trim_vocab
    from ..errors import CheckFailed, UserError

    tmp, old = bundle_dir.with_name(bundle_dir.name + ".trim"), bundle_dir.with_name(bundle_dir.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    dev = plain(task.dev.texts)
    try:
        res = trim_vocab(bundle_dir, plain(task.train.texts), tmp, check_texts=dev, min_agreement=min_agreement)
    except (CheckFailed, UserError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"  vocabulary not trimmed: {exc}")
        return {"trimmed": False, "error": str(exc)}
    res["dev_metric"] = bundle_metric(tmp, task)
    _record_trimmed_metric(tmp, res["dev_metric"])
    shutil.rmtree(old, ignore_errors=True)
    os.replace(bundle_dir, old)  # the untrimmed bundle set aside until the trimmed one is in place
    os.replace(tmp, bundle_dir)
    shutil.rmtree(old, ignore_errors=True)
    chk = res.get("check", {})
    log(
        f"  vocabulary trimmed {res['vocab_before']} -> {res['vocab_after']} tokens, bundle "
        f"{res['bytes_before'] / 2**20:.2f} -> {res['bytes_after'] / 2**20:.2f} MB; dev: labels agree "
        f"{chk.get('label_agreement', 0):.2%} with the untrimmed bundle, [UNK] rate {chk.get('unk_rate', 0):.3%}, "
        f"metric {res['dev_metric']:.2f}"
    )
    return {"trimmed": True, **res}
