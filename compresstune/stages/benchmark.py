"""``benchmark``: latency of every verified export variant, back to back with the references users
compare against, on ONNX Runtime (CPU always, CUDA when present or asked).

Engines per point, all timed in the same interleaved rounds (measure/compare.py):
``ort-PROV`` (the fp32 export), ``ort-PROV:VARIANT`` (optimized, int8_dynamic, ...),
``torch-PROV`` (this model in PyTorch eager) and, with ``baseline: EXPORT_STAGE`` (the
uncompressed model's export), ``baseline:ort-PROV`` and ``baseline:torch-PROV``. Speed-ups
are the median over rounds of per-round ratios; the references are the uncompressed model's
PyTorch eager and fp32 ONNX (the baseline's when given, else this model's own)."""

from __future__ import annotations

import dataclasses
import gc

import torch

from ..config.results import Engine, ExportResult, References, shape_key
from ..errors import UserError
from ..export.onnx import make_session
from ..export.variants import runs_on, variant_file
from ..measure.compare import interleaved, ort_timed_runner, process_footprint, speedup
from ..measure.latency import machine_info
from ..methods import load_artifact
from ..models.inputs import dummy_inputs, model_inputs
from .base import Stage, StageContext, register


def resolve_providers(requested) -> list[str]:
    import onnxruntime as ort

    if requested == "auto":
        out = ["cpu"]
        if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            out.append("cuda")
        return out
    return list(requested)


def ship_provider(providers: list[str]) -> str:
    """The provider whose timings decide (the variant table, the speed-up references, the ship rule): CUDA when
    the run times on it, since that is where the model would be served; the CPU rows are kept beside it."""
    return "cuda" if "cuda" in providers else providers[0]


def _vocab_size(export_ref) -> int:
    """How many token ids the exported model takes (random ids must be valid): its embedding table's rows
    (deploy/edge.py ``vocab_of``, the one reader), else the tokenizer saved beside it."""
    from tokenizers import Tokenizer

    from ..deploy.edge import vocab_of

    rows = vocab_of(export_ref.dir / "model.onnx")
    if rows:
        return rows
    path = export_ref.dir / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            f"benchmark: {path} is missing; the export stage {export_ref.name!r} writes it: rerun it "
            f"(`--from {export_ref.name}`)."
        )
    return Tokenizer.from_file(str(path)).get_vocab_size()


@dataclasses.dataclass
class _Engine:
    """One thing to time: an ONNX Runtime session or a PyTorch model on a provider."""

    id: Engine
    session: object = None
    model: object = None

    @property
    def name(self) -> str:
        return self.id.key

    @property
    def provider(self) -> str:
        return self.id.provider

    def runner(self, inp: dict):
        if self.session is not None:
            names = {i.name for i in self.session.get_inputs()}
            feed = {k: v.numpy() for k, v in inp.items() if k in names}
            return ort_timed_runner(self.session, feed, self.provider), None
        dev = "cuda" if self.provider == "cuda" else "cpu"
        m = self.model.to(dev).eval()
        names = set(model_inputs(m))
        tin = {k: v.to(dev) for k, v in inp.items() if k in names}

        def fn():
            with torch.inference_mode():
                m(**tin)

        return fn, (torch.cuda.synchronize if dev == "cuda" else None)


@register
class BenchmarkStage(Stage):
    type = "benchmark"
    uses_model_and_task = False  # it times what its input exported

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.cfg
        ctx, base_ref, export_ref = self._split_inputs(ctx)
        providers = self._providers(ctx)
        threads_before = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        gc.collect()  # sessions of earlier stages in this process must not keep thread pools alive while timing
        variants = self._variants_to_time(ctx, export_ref)
        engines = self._engines(ctx, providers, export_ref, base_ref, variants)
        ctx.log(
            f"[{ctx.name}] {', '.join(e.name for e in engines)}; {cfg.threads} threads; "
            f"{cfg.rounds} interleaved rounds of {max(3, -(-cfg.iters // cfg.rounds))} calls per point"
        )
        try:
            stats = self._time(ctx, engines, _vocab_size(export_ref))
        finally:
            torch.set_num_threads(threads_before)  # later stages in this process train with their own threads
        import onnxruntime as ort

        provider = ship_provider(providers)
        refs = self._references(base_ref, provider, engines)
        return {
            "onnx": ctx.rel(export_ref.dir / "model.onnx"),
            "providers": providers,
            "active_providers": {e.name: e.session.get_providers() for e in engines if e.session is not None},
            "threads": cfg.threads,
            "iters": cfg.iters,
            "rounds": cfg.rounds,
            "rows": self._rows(stats),
            "machine": machine_info(),
            "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
            "provider": provider,
            "references": refs,
            "variants": self._variant_table(ctx, export_ref, variants, stats, refs),
            "variants_other_providers": {  # labelled by provider; never read by the ship rule
                p: self._variant_table(
                    ctx, export_ref, variants, stats, self._references(base_ref, p, engines), p, footprint=False
                )
                for p in providers
                if p != provider
            },
            "comparison": self._comparison(ctx, base_ref, export_ref, stats) if base_ref is not None else None,
        }

    @staticmethod
    def _split_inputs(ctx: StageContext):
        """The context without the baseline input, the baseline's input (or None), and the export input to time."""
        cfg = ctx.cfg
        base_ref = next((r for r in ctx.inputs if cfg.baseline and r.name == cfg.baseline), None)
        if base_ref is not None:  # the baseline is an extra input; the model to time is the main one
            ctx = dataclasses.replace(ctx, inputs=[r for r in ctx.inputs if r is not base_ref])
        ref = ctx.input_of_kind("onnx")
        if ref is None:
            raise UserError(
                f"{ctx.name}: benchmark needs an exported model.onnx from an earlier export stage; "
                "put `export` before it."
            )
        if base_ref is not None and not (base_ref.dir / "model.onnx").is_file():
            raise UserError(
                f"{ctx.name}.baseline: {cfg.baseline!r} has no model.onnx in {base_ref.dir}; "
                "the baseline must be an export stage."
            )
        if base_ref is not None and (base_ref.dir / "model.onnx").resolve() == (ref.dir / "model.onnx").resolve():
            raise UserError(
                f"{ctx.name}.baseline: {cfg.baseline!r} is the model this stage times; "
                "name another export stage (the uncompressed model's)."
            )
        return ctx, base_ref, ref

    @staticmethod
    def _providers(ctx: StageContext) -> list[str]:
        providers = resolve_providers(ctx.cfg.providers)
        if "cuda" in providers and not torch.cuda.is_available():
            raise UserError(
                f"{ctx.name}.providers: cuda was requested but no CUDA GPU is visible to this process; "
                "use providers: auto or [cpu]."
            )
        return providers

    @staticmethod
    def _variants_to_time(ctx: StageContext, export_ref) -> list[str]:
        """The verified variants of the export (fp32 only for an export made before variants existed)."""
        export: ExportResult = export_ref.result
        recorded = export.variants
        wanted = list(recorded) if ctx.cfg.variants == "all" else list(ctx.cfg.variants)
        unknown = [v for v in wanted if v not in recorded]
        if unknown:
            raise UserError(
                f"{ctx.name}.variants: {unknown} were not built by {export_ref.name} "
                f"(it built {', '.join(recorded)}); set {export_ref.name}.variants or drop them here."
            )
        return [v for v in wanted if recorded[v].passed]

    def _engines(self, ctx, providers, export_ref, base_ref, variants) -> list[_Engine]:
        cfg = ctx.cfg
        out = []
        model = load_artifact(ctx.input_model_dir())[0] if cfg.pytorch and ctx.input_model_dir() else None
        base_model = None
        base_dir = base_ref.result.model_dir if base_ref is not None else None
        if cfg.pytorch and base_dir:
            base_model = load_artifact(ctx.run_dir / base_dir)[0]
        for prov in providers:
            usable = runs_on(prov)
            for v in (v for v in variants if v in usable):
                sess = make_session(variant_file(export_ref.dir, v), prov, cfg.threads)
                out.append(_Engine(Engine(runtime="ort", provider=prov, variant=v), session=sess))
            if model is not None:
                out.append(_Engine(Engine(runtime="torch", provider=prov), model=model))
            if base_ref is not None:
                sess = make_session(base_ref.dir / "model.onnx", prov, cfg.threads)
                out.append(_Engine(Engine(runtime="ort", provider=prov, role="baseline"), session=sess))
                if base_model is not None:
                    out.append(_Engine(Engine(runtime="torch", provider=prov, role="baseline"), model=base_model))
        return out

    @staticmethod
    def _time(ctx: StageContext, engines: list[_Engine], vocab: int) -> dict:
        """(batch, seq) -> engine name -> statistics, every engine of a provider interleaved at each point (random
        token ids below ``vocab``)."""
        cfg = ctx.cfg
        stats = {}
        for b, s in cfg.points():
            inp = dummy_inputs(("input_ids", "attention_mask", "token_type_ids"), b, s, vocab, pad_tail=False)
            point = {}
            for prov in dict.fromkeys(e.provider for e in engines):
                runners = {e.name: e.runner(inp) for e in engines if e.provider == prov}
                point.update(interleaved(runners, cfg.warmup, cfg.iters, cfg.rounds, cfg.min_time_s))
            stats[(b, s)] = point
            ctx.log(
                "  " + f"batch {b:3d} x seq {s:4d}: " + ", ".join(f"{n} {r['p50_ms']:.2f}" for n, r in point.items())
            )
        return stats

    @staticmethod
    def _rows(stats: dict) -> list[dict]:
        return [
            {**r, "engine": name, "batch": b, "seq": s, "throughput_seq_s": b * 1000.0 / r["p50_ms"]}
            for (b, s), point in stats.items()
            for name, r in point.items()
        ]

    @staticmethod
    def _references(base_ref, prov: str, engines) -> References:
        role = "baseline" if base_ref is not None else "model"
        eager = Engine(runtime="torch", provider=prov, role=role)
        return References(
            pytorch_eager=eager if any(e.id == eager for e in engines) else None,
            onnx_fp32=Engine(runtime="ort", provider=prov, role=role),
            of="baseline" if base_ref is not None else "this model",
        )

    def _variant_table(
        self, ctx, export_ref, variants, stats, refs, prov: str | None = None, footprint: bool = True
    ) -> dict:
        """Per variant timed on ``prov`` (default: the ship provider): size, footprint, and per point its latency
        and speed-ups against the references (``refs``, timed on the same provider)."""
        cfg, out = ctx.cfg, {}
        prov = prov or ship_provider(self._providers(ctx))
        for v in variants:
            name = Engine(runtime="ort", provider=prov, variant=v).key
            if not any(name in point for point in stats.values()):
                continue
            path = variant_file(export_ref.dir, v)
            points = {}
            for (b, s), point in stats.items():
                r = point[name]
                points[shape_key((b, s))] = {k: r[k] for k in ("p50_ms", "p90_ms", "p99_ms", "runs")} | {
                    f"speedup_vs_{key}": round(speedup(point, name, ref.key), 3)
                    for key, ref in (("pytorch_eager", refs.pytorch_eager), ("onnx_fp32", refs.onnx_fp32))
                    if ref is not None and ref.key in point
                }
            fp = process_footprint(path, cfg.points(), prov, cfg.threads) if cfg.footprint and footprint else None
            out[v] = {
                "engine": name,
                "provider": prov,
                "file": ctx.rel(path),
                "size_mb": round(path.stat().st_size / 2**20, 2),
                "footprint": fp,
                "points": points,
            }
        return out

    @staticmethod
    def _comparison(ctx: StageContext, base_ref, export_ref, stats: dict) -> dict:
        """fp32 ONNX against the baseline's fp32 ONNX (what `bench tradeoff` reads)."""
        rows = []
        for (b, s), point in stats.items():
            for engine in (Engine.parse(n) for n in point):
                if engine.runtime != "ort" or engine.variant != "fp32" or engine.role != "model":
                    continue
                name, base = engine.key, engine.model_copy(update={"role": "baseline"}).key
                m, bl = point[name], point[base]
                rows.append(
                    {
                        "engine": name,
                        "batch": b,
                        "seq": s,
                        "p50_ms": m["p50_ms"],
                        "baseline_p50_ms": bl["p50_ms"],
                        "speedup": speedup(point, name, base),
                        "rounds_p50_ms": m["rounds_p50_ms"],
                        "rounds_baseline_p50_ms": bl["rounds_p50_ms"],
                    }
                )
        base_path, path = base_ref.dir / "model.onnx", export_ref.dir / "model.onnx"
        return {
            "baseline": ctx.cfg.baseline,
            "baseline_onnx": ctx.rel(base_path),
            "rounds": ctx.cfg.rounds,
            "rows": rows,
            "onnx_mb": round(path.stat().st_size / 2**20, 2),
            "baseline_onnx_mb": round(base_path.stat().st_size / 2**20, 2),
        }
