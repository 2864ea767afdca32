"""Random BERT-style token inputs: the one feed builder for ONNX Runtime sessions, PyTorch models and the
benchmark's fresh-process probe (numpy only; a PyTorch caller wraps the arrays with ``torch.from_numpy``);
and the providers (with their options) every ONNX Runtime session of the package is created with, and what
such a session needs loaded first.

Token ids are drawn from [1000, 2000) (ordinary word pieces in every BERT/DistilBERT vocabulary), or from the
upper half of a smaller ``vocab`` (a trimmed bundle's, a tiny test model's): never an id the model lacks."""

from __future__ import annotations

import numpy as np

from .errors import UserError

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def id_range(vocab: int | None) -> tuple[int, int]:
    """[low, high) of the random token ids for a model taking ids below ``vocab``."""
    high = 2000 if vocab is None else max(2, min(2000, int(vocab)))
    return min(1000, high // 2), high


def token_feed(
    names, batch: int, seq: int, vocab: int | None = None, seed: int = 0, pad_tail: bool = True
) -> dict[str, np.ndarray]:
    """int64 arrays for the inputs ``names`` (a subset of ``TOKEN_INPUTS``); when ``pad_tail``, later rows are
    padded so masking is exercised; token types mark the second half of each row as a second segment."""
    unknown = [n for n in names if n not in TOKEN_INPUTS]
    if unknown:
        raise UserError(f"model inputs {unknown} are not BERT-style token inputs; cannot build test inputs.")
    rng = np.random.default_rng(seed)
    ids = rng.integers(*id_range(vocab), size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if pad_tail and seq > 2:
        for b in range(1, batch):
            keep = max(2, seq - (b * seq) // (batch + 1))
            mask[b, keep:] = 0
            ids[b, keep:] = 0
    types = np.zeros((batch, seq), dtype=np.int64)
    types[:, seq // 2 :] = 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}
    return {n: feed[n] for n in names}


def session_feed(session, batch: int, seq: int, vocab: int | None = None, seed: int = 0, pad_tail: bool = True):
    """:func:`token_feed` for every input of an ONNX Runtime ``session``."""
    return token_feed([i.name for i in session.get_inputs()], batch, seq, vocab, seed, pad_tail)


# ONNX Runtime's CUDA provider runs fp32 MatMul/Gemm in TF32 unless told not to, which moves logits by ~5e-4
# against PyTorch's fp32: off, so that a variant verified on CUDA computes as it is timed and shipped (fp16 is
# the fast GPU variant)
PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def session_providers(ep: str) -> list:
    """The ``providers`` argument of an InferenceSession meant to run on ``ep`` (with its options), with the
    CPU provider after it for any node ``ep`` lacks."""
    first = (ep, dict(PROVIDER_OPTIONS[ep])) if ep in PROVIDER_OPTIONS else ep
    return [first] if ep == "CPUExecutionProvider" else [first, "CPUExecutionProvider"]


def preload_cuda_libraries(ort, ep: str) -> None:
    """Before a session on ``ep``: let onnxruntime-gpu find CUDA and cuDNN from pip's ``nvidia-*`` wheels where no
    torch has loaded them (the torch-free predictor, the footprint probe): ``onnxruntime.preload_dlls`` (1.21+).
    Best effort and silent (it prints, and ``predict`` writes its results to stdout): if the libraries are still
    missing, the provider does not activate, which the session's creator checks."""
    import contextlib
    import io
    import sys

    preload = getattr(ort, "preload_dlls", None)
    if ep not in ("CUDAExecutionProvider", "TensorrtExecutionProvider") or preload is None or "torch" in sys.modules:
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
        preload()


def cuda_device_used_mb(lib=None) -> float | None:
    """Memory in use on CUDA device 0 (total - free, device-wide, in MB) through the driver's own library
    (``libcuda.so.1``, there wherever a CUDA provider can run; no torch, no CUDA runtime), retaining the primary
    context that CUDA runtimes (ONNX Runtime's provider, torch) share. The footprint probe reads it before the
    session and after its runs: the difference is what the session took on the GPU (weights, arena, cuBLAS/cuDNN
    workspaces), its CUDA context excluded. None where there is no driver or device. ``lib`` stands in for the
    driver in tests."""
    import ctypes

    try:
        cu = lib if lib is not None else ctypes.CDLL("libcuda.so.1")
        dev, ctx = ctypes.c_int(0), ctypes.c_void_p()
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        if cu.cuInit(0) != 0 or cu.cuDeviceGet(ctypes.byref(dev), 0) != 0:
            return None
        if cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) != 0 or cu.cuCtxPushCurrent_v2(ctx) != 0:
            return None
        try:
            ok = cu.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)) == 0
        finally:
            cu.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        return round((total.value - free.value) / 2**20, 1) if ok else None
    except (OSError, AttributeError):
        return None
