"""Edge packaging with ONNX Runtime's own tools.

* :func:`to_ort_format`: the ``.ort`` (flatbuffer) model that ONNX Runtime Mobile / minimal builds load,
  plus the ``required_operators.config`` file a reduced ORT build is compiled with
  (``build.sh --minimal_build --include_ops_by_config <file>``).
* :func:`fixed_shape`: a copy with static input shapes for accelerators that need them (NNAPI,
  CoreML, QNN, some NPUs); run it with inputs padded to exactly that (batch, seq).

Both verify the result against the source model with ONNX Runtime and raise
:class:`~compresstune.errors.CheckFailed` when the logits differ.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path

import numpy as np

from ..errors import CheckFailed, UserError
from .predictor import make_session

ATOL = 1e-3  # logits: fusions done at conversion time reorder float sums


def sample_feed(session, batch: int, seq: int, seed: int = 0, vocab: int | None = None) -> dict:
    """Random BERT-style inputs for ``session`` (compresstune/feeds.py), later rows padded to exercise the mask."""
    from ..feeds import session_feed

    return session_feed(session, batch, seq, vocab, seed)


def vocab_of(onnx_path) -> int | None:
    """The vocabulary size a bundle's config.json records when it was trimmed, else the rows of the model's
    word-embedding table (None: neither is known)."""
    from .layout import CONFIG_FILE, load_config

    graph = embedding_rows(onnx_path)
    if graph is not None:
        return graph

    for folder in (Path(onnx_path).parent, Path(onnx_path).parent.parent):  # format 1 / format 2 (onnx/)
        if (folder / CONFIG_FILE).is_file():
            try:
                return (load_config(folder).get("vocab") or {}).get("size")
            except UserError:
                return None
    return None


def embedding_rows(onnx_path) -> int | None:
    """How many token ids the model takes: the rows of the table its ``input_ids`` index (a Gather, or a fused
    EmbedLayerNormalization), read from the graph without loading external weights. None when not found."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable here: the caller's own load reports it
        return None
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] == "input_ids":
            table = n.input[0]
        elif n.op_type == "EmbedLayerNormalization" and n.input and n.input[0] in ("input_ids", "input_ids_int32"):
            table = n.input[2]
        else:
            continue
        table = next(
            (i.input[0] for i in model.graph.node if table in i.output and i.op_type == "DequantizeLinear"), table
        )
        if table in dims and dims[table]:
            return int(dims[table][0])
    return None


def compare(ref_session, session, shapes, atol: float = ATOL, what: str = "model", vocab: int | None = None) -> dict:
    """Max |logits difference| between two sessions at each (batch, seq); :class:`CheckFailed` above ``atol``."""
    diffs = {}
    for b, s in shapes:
        feed = sample_feed(ref_session, b, s, seed=b * 1000 + s, vocab=vocab)
        ref = ref_session.run(None, feed)[0]
        got = session.run(None, feed)[0]
        if got.shape != ref.shape:
            raise CheckFailed(f"{what}: output shape {got.shape} != source model's {ref.shape} at {b} x {s}.")
        diffs[f"{b}x{s}"] = float(np.abs(got - ref).max())
    worst = max(diffs.values())
    if not np.isfinite(worst) or worst > atol:
        raise CheckFailed(f"{what}: logits differ from the source ONNX model by {worst:.2e} (> {atol}) at {diffs}.")
    return diffs


def _read_operators(config_path: Path) -> list[str]:
    """``domain;opset;Op1,Op2`` lines of a required_operators.config as ``domain:opset:Op`` strings."""
    ops = []
    for line in config_path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, names = (line.split(";") + ["", ""])[:3]
        ops += [f"{domain}:{opset}:{n.strip()}" for n in names.split(",") if n.strip()]
    return ops


def to_ort_format(onnx_path, out_dir, *, verify_shapes=((1, 7), (3, 19)), atol: float = ATOL) -> dict:
    """Convert ``onnx_path`` to ORT format in ``out_dir`` with ``onnxruntime.tools.convert_onnx_models_to_ort``
    (fixed optimizations at level ``all``, portable: no x86-only NCHWc layout).

    Returns ``{"ort_model", "operators_config", "operators", "onnx_bytes", "ort_bytes", "max_abs_diff"}``; the
    ``.ort`` model is loaded in an InferenceSession and compared with the ONNX model at ``verify_shapes``."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    src = Path(onnx_path).resolve()
    if not src.is_file() or src.suffix.lower() != ".onnx":
        raise UserError(f"{onnx_path}: not an existing .onnx file.")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    quiet = logging.getLogger("ort_format_model.utils")  # it logs "Created config in ..." at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(log):
            convert_onnx_models_to_ort(src, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
    except Exception as e:  # noqa: BLE001 - the tool raises plain exceptions and prints its progress
        raise CheckFailed(f"ORT-format conversion of {src} failed: {e}\n{log.getvalue()[-2000:]}") from None
    finally:
        quiet.setLevel(level)
    ort_model = out / (src.stem + ".ort")
    configs = sorted(out.glob(src.stem + ".required_operators*.config"))
    if not ort_model.is_file() or not configs:
        raise CheckFailed(
            f"ORT-format conversion of {src} wrote no {ort_model.name} / operator config in {out}:\n"
            + log.getvalue()[-2000:]
        )
    _relative_header(configs[0], out)
    diffs = compare(
        make_session(src), make_session(ort_model), verify_shapes, atol, what=str(ort_model), vocab=vocab_of(src)
    )
    return {
        "ort_model": str(ort_model),
        "operators_config": str(configs[0]),
        "operators": _read_operators(configs[0]),
        "onnx_bytes": src.stat().st_size,
        "ort_bytes": ort_model.stat().st_size,
        "max_abs_diff": diffs,
    }


def _relative_header(config_path: Path, out: Path) -> None:
    """The converter names the model it read by its absolute path in a comment line; a bundle carries no path of
    the machine that built it, so the comment names the file relative to the config's folder."""
    lines = config_path.read_text().splitlines()
    fixed = [
        "# - " + (Path(ln[4:]).name if Path(ln[4:]).is_absolute() else ln[4:]) if ln.startswith("# - ") else ln
        for ln in lines
    ]
    config_path.write_text("\n".join(fixed) + "\n")


def fixed_shape(onnx_path, dst, batch: int, seq: int, *, atol: float = ATOL) -> dict:
    """Write a copy of ``onnx_path`` to ``dst`` whose inputs are fixed at ``(batch, seq)``
    (``onnxruntime.tools.onnx_model_utils.make_input_shape_fixed`` + ``fix_output_shapes``, as the
    ``make_dynamic_shape_fixed`` tool does), then run it at that shape against the source model.

    Returns ``{"path", "input_shape", "output_shape", "max_abs_diff"}``. Metadata props are kept."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    for name, v in (("batch", batch), ("seq", seq)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"fixed_shape: {name} must be a positive integer, not {v!r}.")
    src, dst = Path(onnx_path), Path(dst)
    if not src.is_file():
        raise UserError(f"{onnx_path}: no such ONNX file.")
    model = onnx.load(str(src))
    inits = {t.name for t in model.graph.initializer}
    for inp in [i for i in model.graph.input if i.name not in inits]:
        try:
            make_input_shape_fixed(model.graph, inp.name, [batch, seq])
        except ValueError as e:
            raise UserError(f"{src}: cannot fix input {inp.name} to {batch} x {seq}: {e}") from None
    fix_output_shapes(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(model, str(tmp))
    shutil.move(str(tmp), str(dst))
    ref, fixed = make_session(src), make_session(dst)
    diffs = compare(ref, fixed, [(batch, seq)], atol, what=str(dst), vocab=vocab_of(onnx_path))
    return {
        "path": str(dst),
        "input_shape": [batch, seq],
        "output_shape": fixed.get_outputs()[0].shape,
        "max_abs_diff": diffs,
    }


# ONNX Runtime's own estimate, per mobile execution provider, of what it could run (operator types only)
_MOBILE_EPS = (("NNAPI", "nnapi", None), ("CoreML", "coreml", "coreml_supported_mlprogram_ops.md"))


def mobile_usability(onnx_path) -> dict:
    """How much of the graph Android's NNAPI and Apple's CoreML (MLProgram) execution providers could take, by
    ONNX Runtime's mobile usability checker (``onnxruntime.tools.mobile_helpers``; operator types and ranks, no
    run): per provider ``nodes``, ``supported_nodes``, ``partitions`` and ORT's ``verdict`` (YES / MAYBE / NO).
    ``{"error": ...}`` when the checker is not available in this onnxruntime."""
    try:
        import onnx
        from onnxruntime.tools.mobile_helpers import usability_checker as uc
    except ImportError as exc:
        return {"error": f"onnxruntime's mobile usability checker is not available ({exc})"}
    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
        out = {}
        for name, key, ops in _MOBILE_EPS:
            info = (
                uc.check_nnapi_partitions(model, False)
                if ops is None
                else uc.check_coreml_partitions(model, False, ops)
            )
            out[key] = {
                "provider": name,
                "nodes": info.num_nodes,
                "supported_nodes": info.num_supported_nodes,
                "partitions": info.num_partitions,
                "verdict": info.suitability().name,
            }
        return out
    except Exception as exc:  # noqa: BLE001 - a tool's failure costs the note, not the bundle
        return {"error": f"{exc.__class__.__name__}: {str(exc)[:200]}"}


def mobile_note(usability: dict) -> str | None:
    """One sentence for the model card from :func:`mobile_usability`."""
    if not usability or "error" in usability:
        return None
    parts = [
        f"{u['provider']} could take {u['supported_nodes']} of {u['nodes']} nodes in {u['partitions']} partitions "
        f"(ORT's verdict: {u['verdict']})"
        for u in usability.values()
    ]
    usable = [u["provider"] for u in usability.values() if u["verdict"] != "NO"]
    advice = (
        f"worth trying {' and '.join(usable)}" if usable else "run it with ONNX Runtime's CPU provider on phones too"
    )
    return (
        "Execution providers: ONNX Runtime's CPU provider runs the whole graph (the verification above). By ONNX "
        "Runtime's mobile usability check (operator types only, nothing run): " + "; ".join(parts) + f": {advice}."
    )
