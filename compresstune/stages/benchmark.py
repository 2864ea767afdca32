"""``benchmark``: latency of the exported model on ONNX Runtime (CPU always, CUDA when
present or asked), with PyTorch eager on the same grid as the baseline."""

from __future__ import annotations

import dataclasses
import statistics

import torch

from ..errors import UserError
from ..export.onnx import make_session, ort_run
from ..measure.latency import bench_grid, machine_info, time_fn
from ..methods import load_artifact as load_model
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


def _cuda_iobinding_runner(sess, feed: dict):
    """ORT on CUDA with inputs and output already on the GPU (I/O binding), so its timing,
    like PyTorch's on CUDA, excludes host-device copies; the run is synchronous."""
    import onnxruntime as ort

    names = {i.name for i in sess.get_inputs()}
    binding = sess.io_binding()
    keep = []
    for k, v in feed.items():
        if k in names:
            val = ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0)
            keep.append(val)
            binding.bind_ortvalue_input(k, val)
    binding.bind_output("logits", "cuda")

    def fn():
        sess.run_with_iobinding(binding)

    fn.keep = keep  # the bound device buffers must outlive the runner
    return fn


def _runner_factory(sessions: dict, model, names, vocab: int):
    """``make_runner(engine, batch, seq)`` for ``bench_grid``: a no-argument function that runs
    ``engine`` (ort-PROVIDER or torch-DEVICE) once on random inputs, and its sync function (or None)."""

    def make_runner(engine, b, s):
        inp = dummy_inputs(names, b, s, vocab, pad_tail=False)
        kind, prov = engine.split("-")
        if kind == "ort":
            sess = sessions[prov]
            feed = {k: v.numpy() for k, v in inp.items()}
            if prov == "cuda":
                return _cuda_iobinding_runner(sess, feed), None
            return (lambda: ort_run(sess, feed)), None
        dev = "cuda" if prov == "cuda" else "cpu"
        m = model.to(dev).eval()
        tin = {k: v.to(dev) for k, v in inp.items()}

        def fn():
            with torch.inference_mode():
                m(**tin)

        return fn, (torch.cuda.synchronize if dev == "cuda" else None)

    return make_runner


def _back_to_back(runners: dict, cfg) -> dict[str, list[float]]:
    """p50 (ms) of the "model" and "baseline" runners in each of ``cfg.rounds`` rounds, the order alternating."""
    per = {"model": [], "baseline": []}
    for r in range(cfg.rounds):
        for key in ("model", "baseline") if r % 2 == 0 else ("baseline", "model"):
            per[key].append(time_fn(runners[key], cfg.warmup, cfg.iters, cfg.min_time_s)["p50_ms"])
    return per


@register
class BenchmarkStage(Stage):
    type = "benchmark"
    uses_model_and_task = False  # it times what its input exported

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.cfg
        ctx, base_ref, onnx_path = self._split_inputs(ctx)
        providers = self._providers(ctx)
        torch.set_num_threads(cfg.threads)
        sessions = {p: make_session(onnx_path, p, cfg.threads) for p in providers}
        model = None
        mdir = ctx.input_model_dir()
        if cfg.pytorch and mdir is not None:
            model, _, _ = load_model(mdir)
        names = (
            model_inputs(model)
            if model is not None
            else tuple(i.name for i in next(iter(sessions.values())).get_inputs())
        )
        vocab = model.config.vocab_size if model is not None else 30000
        engines = [f"ort-{p}" for p in providers] + ([f"torch-{p}" for p in providers] if model is not None else [])
        ctx.log(f"[{ctx.name}] {onnx_path} on {', '.join(engines)}; {cfg.threads} threads")
        rows = bench_grid(
            _runner_factory(sessions, model, names, vocab),
            engines,
            cfg.batch_sizes,
            cfg.seq_lengths,
            cfg.warmup,
            cfg.iters,
            cfg.min_time_s,
            ctx.log,
        )
        import onnxruntime as ort

        comparison = self._compare(ctx, sessions, onnx_path, base_ref, names, vocab) if base_ref is not None else None
        return {
            "comparison": comparison,
            "onnx": ctx.rel(onnx_path),
            "providers": providers,
            "active_providers": {p: s.get_providers() for p, s in sessions.items()},
            "threads": cfg.threads,
            "rows": rows,
            "machine": machine_info(),
            "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
        }

    @staticmethod
    def _split_inputs(ctx: StageContext):
        """The context without the baseline input, the baseline's input (or None), and the model.onnx to time."""
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
        onnx_path = ref.dir / "model.onnx"
        if base_ref is not None and (base_ref.dir / "model.onnx").resolve() == onnx_path.resolve():
            raise UserError(
                f"{ctx.name}.baseline: {cfg.baseline!r} is the model this stage times; "
                "name another export stage (the uncompressed model's)."
            )
        return ctx, base_ref, onnx_path

    @staticmethod
    def _providers(ctx: StageContext) -> list[str]:
        providers = resolve_providers(ctx.cfg.providers)
        if "cuda" in providers and not torch.cuda.is_available():
            raise UserError(
                f"{ctx.name}.providers: cuda was requested but no CUDA GPU is visible to this process; "
                "use providers: auto or [cpu]."
            )
        return providers

    def _compare(self, ctx: StageContext, sessions: dict, onnx_path, base_ref, names, vocab) -> dict:
        """This model against the baseline export's model.onnx on ONNX Runtime: per grid point,
        ``rounds`` rounds, each timing both models back to back (order alternating between rounds),
        so a machine whose speed drifts slows both alike; speed-up = the median over rounds of the
        per-round ratio baseline p50 / this p50."""
        cfg = ctx.cfg
        base_path = base_ref.dir / "model.onnx"
        if not base_path.is_file():
            raise UserError(
                f"{ctx.name}.baseline: {cfg.baseline!r} has no model.onnx in {base_ref.dir}; "
                "the baseline must be an export stage."
            )
        rows = []
        for prov, sess in sessions.items():
            base_sess = make_session(base_path, prov, cfg.threads)
            base_names = tuple(i.name for i in base_sess.get_inputs())
            for b in cfg.batch_sizes:
                for s in cfg.seq_lengths:
                    inp = dummy_inputs(tuple(set(names) | set(base_names)), b, s, vocab, pad_tail=False)
                    runners = {}
                    for key, se, nm in (("model", sess, names), ("baseline", base_sess, base_names)):
                        feed = {k: v.numpy() for k, v in inp.items() if k in nm}
                        runners[key] = (
                            _cuda_iobinding_runner(se, feed)
                            if prov == "cuda"
                            else (lambda se=se, feed=feed: ort_run(se, feed))
                        )
                    rows.append(self._compared_point(ctx, prov, b, s, _back_to_back(runners, cfg)))
        return {
            "baseline": cfg.baseline,
            "baseline_onnx": ctx.rel(base_path),
            "rounds": cfg.rounds,
            "rows": rows,
            "onnx_mb": round(onnx_path.stat().st_size / 2**20, 2),
            "baseline_onnx_mb": round(base_path.stat().st_size / 2**20, 2),
        }

    @staticmethod
    def _compared_point(ctx: StageContext, prov: str, b: int, s: int, per: dict) -> dict:
        """One grid point's row from its per-round p50s (and its log line)."""
        m, bl = statistics.median(per["model"]), statistics.median(per["baseline"])
        sp = statistics.median(x / y for x, y in zip(per["baseline"], per["model"]))
        ctx.log(
            f"  vs {ctx.cfg.baseline}: ort-{prov} batch {b:3d} x seq {s:4d}: {m:8.2f} ms vs {bl:8.2f} ms -> {sp:.2f}x"
        )
        return {
            "engine": f"ort-{prov}",
            "batch": b,
            "seq": s,
            "p50_ms": m,
            "baseline_p50_ms": bl,
            "speedup": sp,
            "rounds_p50_ms": per["model"],
            "rounds_baseline_p50_ms": per["baseline"],
        }
