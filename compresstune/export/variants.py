"""Export variants built from the verified fp32 ONNX model, each verified on its own.

| variant | how | default for |
|---|---|---|
| ``fp32`` | the plain export (export/onnx.py) | cpu, cuda |
| ``optimized`` | ORT's transformer optimizer, real head counts and hidden size (optimize.py) | cpu, cuda |
| ``int8_dynamic`` | ``quantize_dynamic`` (per-channel by default) on the fp32 graph (quantize.py) | cpu |
| ``int8_static`` | QDQ ``quantize_static`` on training examples, accuracy-driven fallback | cpu |
| ``fp16`` | ORT's float16 conversion of the optimized graph, int64 ids in, fp32 logits out | cuda |

Each is one :class:`Variant` entry in the registry at the end of this module (its builder, tolerance class,
providers, defaults, whether the search may use it); the config, export, benchmark, ship rule and search read the
registry, so adding a variant is ``register_variant(Variant(...))`` (tests/test_variant_registry.py adds one).

Every variant is verified like the fp32 export: logits at shapes other than the export shape
(recorded) and the dev metric through ONNX Runtime against PyTorch, within a tolerance per
kind. A variant that fails is marked failed with its numbers and never shipped; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..machine import int8_reduce_range

TOLERANCE_CLASSES = ("fp32", "optimized", "fp16", "int8")  # export.tolerances' fields (fp32: export's own checks)


@dataclass(frozen=True)
class Variant:
    """One export variant: everything the config, export, benchmark, ship rule and search need to know of it.

    ``build(builder, dst) -> details`` writes the file (``builder`` is the :class:`VariantBuilder`: its fp32 file,
    settings, shapes); ``tolerance``: its class in ``export.tolerances`` (``optimized``, ``fp16``, ``int8``: the
    dev-metric gap and ``logits_<class>``), or ``fp32`` (``export.metric_tolerance`` and ``export.atol``);
    ``runs_on``: the ONNX Runtime providers it is verified and timed on; ``default_on``: the providers on which
    ``variants: auto`` builds it; ``searchable``: the search's ``space.variant`` may take it."""

    name: str
    build: Callable[[VariantBuilder, Path], dict]
    tolerance: str
    runs_on: tuple[str, ...]
    default_on: tuple[str, ...] = ()
    searchable: bool = False
    summary: str = ""
    batch_dependent: bool = False  # results depend on batch-mates: scored at batch 1 and at the predictor's batching


_VARIANTS: dict[str, Variant] = {}


def register_variant(v: Variant) -> Variant:
    """Add (or replace) a variant; the built-in ones are registered at the end of this module."""
    if v.tolerance not in TOLERANCE_CLASSES:
        raise ValueError(f"variant {v.name}: tolerance {v.tolerance!r} is not one of {TOLERANCE_CLASSES}")
    _VARIANTS[v.name] = v
    return v


def unregister_variant(name: str) -> None:
    _VARIANTS.pop(name, None)


def all_variants() -> dict[str, Variant]:
    return dict(_VARIANTS)


def get_variant(name: str) -> Variant:
    if name not in _VARIANTS:
        raise KeyError(f"unknown export variant {name!r} (known: {', '.join(_VARIANTS)})")
    return _VARIANTS[name]


def runs_on(provider: str) -> tuple[str, ...]:
    """The variants timed on ``provider``."""
    return tuple(n for n, v in _VARIANTS.items() if provider in v.runs_on)


def target_provider(variant: str, cuda: bool) -> str:
    """Where ``variant`` is verified and would ship: CUDA when the run uses it and the variant runs there."""
    return "cuda" if cuda and variant in _VARIANTS and "cuda" in _VARIANTS[variant].runs_on else "cpu"


def kind_of(variant: str) -> str:
    """The tolerance class of a variant: fp32, optimized, fp16 or int8."""
    return get_variant(variant).tolerance


def searchable_variants() -> tuple[str, ...]:
    return tuple(n for n, v in _VARIANTS.items() if v.searchable)


def resolve_variants(requested, device: str) -> list[str]:
    """``auto`` -> the defaults of the target device; fp32 always comes first (the others are built from it)."""
    target = "cuda" if device.startswith("cuda") else "cpu"
    auto = [n for n, v in _VARIANTS.items() if target in v.default_on]
    names = list(auto if requested == "auto" else requested)
    return ["fp32"] + [v for v in names if v != "fp32"]


def variant_file(out_dir: Path, variant: str) -> Path:
    return out_dir / ("model.onnx" if variant == "fp32" else f"model.{variant}.onnx")


class VariantBuilder:
    """Builds variants from ``fp32_path`` into ``out_dir``; ``evaluate(path) -> dev metric`` is used by the
    static-quantisation fallback, ``calibration_feeds`` by static quantisation."""

    def __init__(
        self,
        fp32_path: Path,
        out_dir: Path,
        heads: int | list[int],
        hidden: int,
        model_type: str,
        cfg,
        calibration_feeds: Callable[[], list[dict[str, np.ndarray]]],
        evaluate: Callable[[Path], float],
        reference: float,
        log=print,
        agreement: Callable[[Path], float] | None = None,
    ):
        self.fp32, self.out_dir, self.heads, self.hidden, self.model_type = (
            fp32_path,
            out_dir,
            heads,
            hidden,
            model_type,
        )
        self.cfg, self.calibration_feeds, self.evaluate, self.reference, self.log = (
            cfg,
            calibration_feeds,
            evaluate,
            reference,
            log,
        )
        self.agreement = agreement  # dynamic int8's fallback: label agreement with PyTorch (None: off)
        self.built: dict[str, Path] = {"fp32": fp32_path}
        self.reduce_range = int8_reduce_range(getattr(cfg, "reduce_range", False))

    def build(self, variant: str) -> dict:
        """Build one variant; returns its details (what was fused or quantised). Raises on failure."""
        t = time.perf_counter()
        details = get_variant(variant).build(self, variant_file(self.out_dir, variant))
        self.built[variant] = variant_file(self.out_dir, variant)
        return {**details, "build_s": round(time.perf_counter() - t, 2)}

    def _source_graph(self) -> Path:
        """Quantisation and fp16 start from the fused graph when it was built (faster, fewer nodes)."""
        if "optimized" not in self.built:
            self.build("optimized")
        return self.built["optimized"]

    def _optimized(self, dst: Path) -> dict:
        from .optimize import optimize_onnx

        rep = optimize_onnx(self.fp32, dst, self.heads, self.hidden, self.model_type)
        self.log(f"  optimized: fused {rep.get('fused')}; unfused layers: {rep.get('unfused_layers') or 'none'}")
        return {
            k: rep.get(k) for k in ("fused", "num_layers", "unfused_layers", "layers", "fully_fused", "max_abs_diff")
        }

    def _int8_dynamic(self, dst: Path) -> dict:
        """From the unfused fp32 graph: measured on MiniLM-L6 (docs/RESULTS.md), its int8 MatMuls ran as fast at
        batch 1 and faster at batch 32 than the fused graph's QAttention; per-channel scales kept more accuracy.
        When fewer than ``min_agreement`` of the dev labels equal PyTorch's, the most sensitive encoder layers
        stay float, one more per try (:meth:`_dynamic_fallback`)."""
        from .quantize import quantize_int8_dynamic

        setting = self.cfg.quantize_embeddings
        emb = setting is not False  # "auto" tries the int8 embedding tables first

        def build(exclude=()):
            return quantize_int8_dynamic(
                self.fp32,
                dst,
                per_channel=self.cfg.per_channel,
                quantize_embeddings=emb,
                reduce_range=self.reduce_range,
                nodes_to_exclude=exclude,
            )

        rep = build()
        target, agreement = self.cfg.min_agreement, self.agreement
        first = agreement(dst) if target and agreement is not None else None
        if first is None:  # off, or a regression task
            return {**rep, "quantize_embeddings_setting": setting}
        if setting == "auto" and first < target:  # int8 embeddings cost agreement: keep them float if that helps
            emb = False
            without = build()
            second = agreement(dst)
            self.log(f"  int8_dynamic: label agreement {first:.2%} with int8 embeddings, {second:.2%} without")
            if second > first:
                rep, first = without, second
            else:
                emb = True
                build()
        fallback = self._dynamic_fallback(dst, build, agreement, target, first)
        return {**rep, "quantize_embeddings_setting": setting, "fallback": fallback}

    def _dynamic_fallback(self, dst: Path, build, agreement, target: float, first: float) -> dict:
        """Keep the fewest weight MatMuls in float that bring the label agreement to ``target``: rank encoder
        layers by the agreement reached when only that layer stays float; within the most sensitive layer rank
        its MatMuls the same way and keep them float one at a time (best first); then whole layers, in rank
        order. Stops at the first passing try; the best try is what stays in ``dst``."""
        from .quantize import node_groups

        tries = [{"float_nodes": [], "agreement": first}]
        if first >= target:
            return {"target": target, "float_nodes": [], "tries": tries, "passed": True}
        groups = node_groups(self.fp32)
        layer_rank = self._rank(build, agreement, dst, dict(groups))
        top = [n for n in groups[layer_rank[0]] if n in _weight_matmuls(self.fp32)]  # act x act MatMuls stay float
        node_rank = self._rank(build, agreement, dst, {n: [n] for n in top})
        plan = [node_rank[:k] for k in range(1, len(node_rank) + 1)]
        plan += [[n for g in layer_rank[:k] for n in groups[g]] for k in range(2, len(layer_rank))]
        for float_nodes in plan:
            build(float_nodes)
            tries.append({"float_nodes": float_nodes, "agreement": agreement(dst)})
            if tries[-1]["agreement"] >= target:
                break
        best = tries[-1] if tries[-1]["agreement"] >= target else max(tries, key=lambda t: t["agreement"])
        if best is not tries[-1]:
            build(best["float_nodes"])
        self.log(
            f"  int8_dynamic: label agreement {first:.2%} < {target:.0%}; {len(best['float_nodes'])} MatMuls "
            f"kept in float -> {best['agreement']:.2%}"
        )
        return {
            "target": target,
            "float_nodes": best["float_nodes"],
            "tries": tries,
            "layer_rank": layer_rank,
            "passed": best["agreement"] >= target,
        }

    @staticmethod
    def _rank(build, agreement, dst: Path, candidates: dict[str, list[str]]) -> list[str]:
        """Candidates ordered by the agreement reached when only that candidate's nodes stay float, best first."""
        score = {}
        for name, nodes in candidates.items():
            build(nodes)
            score[name] = agreement(dst)
        return sorted(candidates, key=lambda k: -score[k])

    def _int8_static(self, dst: Path) -> dict:
        from .quantize_static import quantize_int8_static, static_with_fallback

        feeds = self.calibration_feeds()
        src = self._source_graph()
        if not self.cfg.static_fallback:
            return quantize_int8_static(
                src, dst, feeds, self.cfg.calibration_method, self.cfg.per_channel, reduce_range=self.reduce_range
            )
        rep = static_with_fallback(
            src,
            dst,
            feeds,
            self.evaluate,
            self.reference,
            self.cfg.tolerances.int8,
            method=self.cfg.calibration_method,
            per_channel=self.cfg.per_channel,
            reduce_range=self.reduce_range,
        )
        acts = rep["report"].get("activations_quantized", 0)
        self.log(
            f"  int8_static: {len(rep['tries'])} tries; kept in float: {rep['float_groups'] or 'nothing'}; "
            + (f"{acts} activations quantised" if acts else "WEIGHT-ONLY: no activation was quantised")
        )
        keys = ("passed", "float_groups", "tries", "method", "per_channel", "reduce_range")
        return {**{k: rep[k] for k in keys}, "activations_quantized": acts, "weight_only": acts == 0}

    def _fp16(self, dst: Path) -> dict:
        from .quantize import convert_fp16

        return convert_fp16(self._source_graph(), dst)


def _weight_matmuls(path: Path) -> set[str]:
    """Names of the MatMul nodes with a weight (initializer) input: the ones dynamic quantisation turns int8."""
    import onnx

    g = onnx.load(str(path)).graph
    inits = {i.name for i in g.initializer}
    return {n.name for n in g.node if n.op_type == "MatMul" and any(x in inits for x in n.input)}


def verify_variant(
    name: str,
    path: Path,
    logit_diffs: Callable,
    dev_metric: Callable,
    reference: float,
    tolerance: float,
    logit_tolerance: float = float("inf"),
) -> dict:
    """Dev metric through ONNX Runtime against the PyTorch ``reference`` (pass within ``tolerance`` points)
    and the largest logit difference at the verification shapes (pass within ``logit_tolerance``)."""
    try:
        diffs = logit_diffs(path)
        metrics = dev_metric(path)
    except Exception as exc:  # noqa: BLE001 - ORT refuses a graph (its Fail, InvalidGraph, NotImplemented...)
        return {"passed": False, "error": f"{exc.__class__.__name__}: {str(exc)[:300]}", "tolerance": tolerance}
    gap = abs(metrics["main"] - reference)
    worst = max(diffs.values()) if diffs else 0.0
    return {
        "passed": gap <= tolerance and worst <= logit_tolerance,
        "dev": metrics,
        "gap_points": round(gap, 4),
        "tolerance": tolerance,
        "logit_tolerance": logit_tolerance,
        "error": None if worst <= logit_tolerance else f"logits differ by {worst:.2e} > {logit_tolerance:g}",
        "max_abs_diff": diffs,
        "size_mb": round(path.stat().st_size / 2**20, 2),
        "file": path.name,
    }


def _fp32(builder: VariantBuilder, dst: Path) -> dict:
    return {}  # the export itself; built before any variant


for _v in (
    Variant("fp32", _fp32, "fp32", ("cpu", "cuda"), ("cpu", "cuda"), True, "the exported graph"),
    Variant(
        "optimized",
        VariantBuilder._optimized,
        "optimized",
        ("cpu", "cuda"),
        ("cpu", "cuda"),
        True,
        "ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu)",
    ),
    Variant(
        "int8_dynamic",
        VariantBuilder._int8_dynamic,
        "int8",
        ("cpu",),
        ("cpu",),
        True,
        "int8 weights (embeddings too), activations quantised per call",
        batch_dependent=True,
    ),
    # int8 is a CPU path; the CPU provider runs fp16 graphs with fp32 arithmetic, so fp16 is verified on CUDA
    Variant("int8_static", VariantBuilder._int8_static, "int8", ("cpu",), ("cpu",), False, "calibrated QDQ int8"),
    Variant("fp16", VariantBuilder._fp16, "fp16", ("cuda",), ("cuda",), True, "fp16 from the fused graph"),
):
    register_variant(_v)
