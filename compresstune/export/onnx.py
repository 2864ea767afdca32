"""Export a sequence-classification model to ONNX and run it with ONNX Runtime.

The TorchScript-based exporter (``dynamo=False``) with dynamic batch and sequence axes
works on transformers 5 BERT/DistilBERT. Dynamic axes can be silently baked in, so
the caller must check outputs at shapes other than the export shape
(:func:`max_abs_diff_at_shapes`)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..data.batching import collate
from ..deploy.predictor import make_session  # noqa: F401 - the one session builder, re-exported for export users
from ..errors import CheckFailed
from ..models.inputs import dummy_inputs, model_inputs

EXPORT_SHAPE = (2, 16)  # (batch, seq) of the dummy input; verification uses other shapes


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args))).logits


@contextmanager
def eager_attention(model: nn.Module):
    """Trace the eager attention path: transformers 5's default SDPA path exports a graph that ONNX
    Runtime's transformer optimizer cannot fuse, and that runs slower (see PITFALLS). Same weights,
    same function; the model's setting is restored afterwards."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    saved = {k: getattr(c, "_attn_implementation", None) for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield model
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` (fp32, eval, eager attention) as ONNX with inputs named like the HF ones and a
    ``logits`` output. The model is left in eval mode."""
    path = Path(path)
    model = model.float().eval().to("cpu")
    with eager_attention(model):
        _trace(model, path, opset)
    model.eval()  # torch.onnx.export restores the wrapper's training flag, which would leave dropout on
    import onnx

    onnx.checker.check_model(str(path))
    return path


def _trace(model: nn.Module, path: Path, opset: int) -> None:
    names = model_inputs(model)
    example = dummy_inputs(names, *EXPORT_SHAPE, model.config.vocab_size)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsOnly(model, names).eval(),
            tuple(example[n] for n in names),
            str(path),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def ort_run(sess, inputs: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(["logits"], {k: v for k, v in inputs.items() if k in names})[0]


def ort_predict(sess, encoded: list[dict], pad_id: int, batch_size: int = 128) -> np.ndarray:
    """Logits for every encoded example, in order (same batching as the PyTorch path)."""
    names = [i.name for i in sess.get_inputs()]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    outs = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = collate([encoded[i] for i in idx], pad_id, "token_type_ids" in names)
        outs.append(ort_run(sess, {k: v.numpy() for k, v in batch.items()}))
    logits = np.concatenate(outs) if outs else np.zeros((0, 1), dtype=np.float32)
    res = np.empty_like(logits)
    res[np.array(order, dtype=int)] = logits
    return res


@torch.no_grad()
def max_abs_diff_at_shapes(model: nn.Module, sess, shapes) -> dict[str, float]:
    """Max |logits_onnx - logits_torch| at each (batch, seq) shape, with padded rows."""
    model.eval()
    names = model_inputs(model)
    out = {}
    for b, s in shapes:
        inp = dummy_inputs(names, int(b), int(s), model.config.vocab_size, seed=int(b) * 1000 + int(s))
        ref = model(**inp).logits.float().numpy()
        got = ort_run(sess, {k: v.numpy() for k, v in inp.items()})
        if got.shape != ref.shape:
            raise CheckFailed(
                f"ONNX output shape {got.shape} != PyTorch {ref.shape} at batch {b} x seq {s}: "
                "a dynamic axis was baked into the export."
            )
        out[f"{b}x{s}"] = float(np.abs(got - ref).max())
    return out
