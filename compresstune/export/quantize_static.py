"""Static int8: ``quantize_static`` in QDQ format with calibration, and the accuracy-driven fallback that keeps the
most sensitive layers in float (see :mod:`compresstune.export.quantize` for the whole story)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx

from ..errors import UserError
from .quantize import METHODS, _quiet_hint, _report, _size_mb, node_groups


class FeedsReader:
    """A ``CalibrationDataReader`` over a list of feed dicts, keeping only the model's inputs.

    Batches may differ in length (see the strided calibration in :func:`quantize_int8_static`)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]], input_names: Iterable[str]):
        names = set(input_names)
        self._feeds = [{k: np.asarray(v) for k, v in f.items() if k in names} for f in feeds]
        self._it = iter(self._feeds)

    def get_next(self):
        """The next feed dict, or None when exhausted (the CalibrationDataReader protocol)."""
        return next(self._it, None)

    def __len__(self):
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int):
        """Serve only feeds ``start_index:end_index`` next (ORT's strided calibration calls this)."""
        self._it = iter(self._feeds[start_index:end_index])


def _calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in table:
        raise UserError(f"quantize: calibration method {method!r} is not one of {', '.join(METHODS)}.")
    return table[method]


def prepare_for_static(src: str | Path, dst: str | Path) -> Path:
    """Symbolic shape inference (types for the outputs of fused contrib ops) without graph changes.

    Falls back to ONNX shape inference alone when the symbolic one fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_optimization=True, auto_merge=True)
    except Exception:  # noqa: BLE001 - ORT raises a bare Exception when symbolic inference gives up; ONNX inference
        # alone still types a graph of standard ops
        quant_pre_process(str(src), str(dst), skip_optimization=True, skip_symbolic_shape=True)
    return Path(dst)


def _check_feeds(calibration_feeds) -> None:
    if not calibration_feeds:
        raise UserError(
            "quantize: static quantization needs at least one calibration batch (calibration_feeds is empty)."
        )


def quantize_int8_static(
    src: str | Path,
    dst: str | Path,
    calibration_feeds: list[dict[str, np.ndarray]],
    method: str = "minmax",
    per_channel: bool = False,
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] = ("MatMul",),
    activation_type: str = "uint8",
    percentile: float = 99.999,
    calibration_cache: str | Path | None = None,
    prepared: bool = False,
    reduce_range: bool = False,
) -> dict:
    """Static int8 quantization in QDQ format, calibrated on ``calibration_feeds`` (name -> array dicts).

    ``method``: minmax, entropy or percentile (``percentile`` sets the clipping percentile).
    ``activation_type``: ``uint8`` (U8S8, the fast x86 path) or ``int8``. ``calibration_cache``:
    a JSON file of ranges; when it exists calibration is skipped (ranges must come from the same
    graph and method). ``prepared``: ``src`` already went through :func:`prepare_for_static`.
    ``reduce_range``: 7-bit weights, for x86 CPUs without VNNI (machine.py).
    Returns what :func:`quantize_int8_dynamic` returns plus the method and the excluded nodes."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    _check_feeds(calibration_feeds)
    meth = _calibration_method(method)
    act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}.get(activation_type)
    if act is None:
        raise UserError(f"quantize: activation_type {activation_type!r} must be uint8 or int8.")
    # one batch per collection round: ORT's histogram calibrators stack all batches of a round into one array,
    # which fails for batches padded to different lengths; strided rounds merge their ranges/histograms instead
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, "CalibPercentile": percentile, "CalibStridedMinMax": 1}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ct_static_") as tmp:
        model_in = Path(src) if prepared else prepare_for_static(src, Path(tmp) / "prepared.onnx")
        names = [i.name for i in onnx.load(str(model_in), load_external_data=False).graph.input]
        with _quiet_hint():
            quantize_static(
                str(model_in),
                str(dst),
                FeedsReader(calibration_feeds, names),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                activation_type=act,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(nodes_to_exclude),
                calibrate_method=meth,
                reduce_range=reduce_range,
                extra_options=extra,
                calibration_cache_path=str(calibration_cache) if calibration_cache else None,
            )
    return _report(
        src,
        dst,
        {
            "mode": "static_qdq",
            "method": method,
            "per_channel": per_channel,
            "activation_type": activation_type,
            "op_types": list(op_types),
            "reduce_range": reduce_range,
            "nodes_excluded": list(nodes_to_exclude),
        },
    )


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = min(2, os.cpu_count() or 1)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _outputs(path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    sess = _session(path)
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {k: v for k, v in f.items() if k in names})[0].astype(np.float32) for f in feeds]


def logit_mse(reference: list[np.ndarray], path, feeds: list[dict[str, np.ndarray]]) -> float:
    """Mean squared difference between ``path``'s first output and ``reference`` over ``feeds``."""
    got = _outputs(path, feeds)
    return float(np.mean([np.mean((g - r) ** 2) for g, r in zip(got, reference)]))


class _StaticRunner:
    """Static quantization of one prepared graph with one calibration (ranges cached on first use)."""

    def __init__(self, src, tmp: Path, calibration_feeds, **kwargs):
        _check_feeds(calibration_feeds)
        self.src = Path(src)
        self.prepared = prepare_for_static(src, tmp / "prepared.onnx")
        self.cache = tmp / f"calibration_{kwargs.get('method', 'minmax')}.json"
        self.feeds = calibration_feeds
        self.kwargs = kwargs

    def quantize(self, dst, exclude: Sequence[str]) -> dict:
        """Quantize everything but ``exclude`` into ``dst``."""
        rep = quantize_int8_static(
            self.prepared,
            dst,
            self.feeds,
            nodes_to_exclude=exclude,
            prepared=True,
            calibration_cache=self.cache,
            **self.kwargs,
        )
        rep["size_mb_before"] = _size_mb(self.src)
        return rep


def _sensitivity(runner: _StaticRunner, tmp: Path, probe_feeds, base_exclude: Sequence[str]) -> dict:
    groups = node_groups(runner.prepared, runner.kwargs.get("op_types", ("MatMul",)))
    ref = _outputs(runner.src, probe_feeds)
    probe = tmp / "probe.onnx"
    runner.quantize(probe, base_exclude)
    mse_all = logit_mse(ref, probe, probe_feeds)
    rows = []
    for name, nodes in groups.items():
        runner.quantize(probe, [*base_exclude, *nodes])
        mse = logit_mse(ref, probe, probe_feeds)
        rows.append({"group": name, "nodes": len(nodes), "mse_with_group_float": mse, "gain": mse_all - mse})
    rows.sort(key=lambda r: r["gain"], reverse=True)
    return {
        "scheme": "leave-one-group-float; logit MSE vs fp32 on probe batches",
        "mse_all_quantized": mse_all,
        "groups": rows,
        "nodes": groups,
    }


def layer_sensitivity(
    src: str | Path,
    calibration_feeds: list[dict[str, np.ndarray]],
    probe_feeds: list[dict[str, np.ndarray]] | None = None,
    method: str = "minmax",
    per_channel: bool = False,
    op_types: Sequence[str] = ("MatMul",),
    base_exclude: Sequence[str] = (),
    activation_type: str = "uint8",
) -> dict:
    """How much each node group (``layer.N``, ``embeddings``, ``head``) hurts under static int8.

    Quantizes everything, then everything but one group, and compares the logit MSE against
    the fp32 model on ``probe_feeds`` (default: the first 4 calibration batches). ``gain`` is
    the MSE removed by keeping that group in float; groups come sorted by gain, most sensitive
    first. Calibration runs once. Returns ``scheme``, ``mse_all_quantized``, ``groups`` (rows)
    and ``nodes`` (group -> node names)."""
    probe = probe_feeds or calibration_feeds[:4]
    with tempfile.TemporaryDirectory(prefix="ct_sens_") as tmp:
        runner = _StaticRunner(
            src,
            Path(tmp),
            calibration_feeds,
            method=method,
            per_channel=per_channel,
            op_types=tuple(op_types),
            activation_type=activation_type,
        )
        return _sensitivity(runner, Path(tmp), probe, base_exclude)


def _try(runner: _StaticRunner, dst, float_groups: list[str], nodes: dict[str, list[str]], evaluate, reference) -> dict:
    exclude = [n for g in float_groups for n in nodes[g]]
    rep = runner.quantize(dst, exclude)
    metric = float(evaluate(Path(dst)))
    return {
        "float_groups": list(float_groups),
        "float_nodes": len(exclude),
        "metric": metric,
        "drop": reference - metric,
        "size_mb": rep["size_mb_after"],
        "report": rep,
    }


def static_with_fallback(
    src: str | Path,
    dst: str | Path,
    calibration_feeds: list[dict[str, np.ndarray]],
    evaluate: Callable[[Path], float],
    reference: float,
    tolerance: float,
    method: str = "minmax",
    per_channel: bool = False,
    probe_feeds: list[dict[str, np.ndarray]] | None = None,
    op_types: Sequence[str] = ("MatMul",),
    max_float_groups: int | None = None,
    activation_type: str = "uint8",
    reduce_range: bool = False,
) -> dict:
    """Static int8 with accuracy-driven fallback to float for the most sensitive node groups.

    Quantizes everything; if ``reference - evaluate(dst) > tolerance``, ranks the groups with
    :func:`layer_sensitivity` (logit MSE proxy, cheap) and re-quantizes with the top 1, 2, ...
    groups kept in float, accepting by ``evaluate`` (higher is better), until it passes or
    ``max_float_groups`` (default: all groups but one) is reached. ``dst`` ends up holding the
    passing model, or the best one tried. Returns ``passed``, ``float_groups``, ``float_nodes``
    (names), ``metric``, ``tries`` (every try with its metric), ``sensitivity`` and the final report."""
    kwargs = {
        "method": method,
        "per_channel": per_channel,
        "op_types": tuple(op_types),
        "activation_type": activation_type,
        "reduce_range": reduce_range,
    }
    with tempfile.TemporaryDirectory(prefix="ct_fallback_") as tmp:
        runner = _StaticRunner(src, Path(tmp), calibration_feeds, **kwargs)
        nodes = node_groups(runner.prepared, op_types)
        tries = [_try(runner, dst, [], nodes, evaluate, reference)]
        sens = None
        if tries[0]["drop"] > tolerance:
            sens = _sensitivity(runner, Path(tmp), probe_feeds or calibration_feeds[:4], ())
            order = [r["group"] for r in sens["groups"]]
            limit = len(order) - 1 if max_float_groups is None else min(max_float_groups, len(order))
            for k in range(1, limit + 1):
                tries.append(_try(runner, dst, order[:k], nodes, evaluate, reference))
                if tries[-1]["drop"] <= tolerance:
                    break
        passed = tries[-1]["drop"] <= tolerance
        best = tries[-1] if passed else max(tries, key=lambda t: t["metric"])
        if best is not tries[-1]:
            runner.quantize(dst, [n for g in best["float_groups"] for n in nodes[g]])
    return {
        "passed": passed,
        "reference": reference,
        "tolerance": tolerance,
        "metric": best["metric"],
        "float_groups": best["float_groups"],
        "float_nodes": [n for g in best["float_groups"] for n in nodes[g]],
        "tries": [{k: v for k, v in t.items() if k != "report"} for t in tries],
        "sensitivity": sens,
        "report": best["report"],
        **kwargs,
    }
