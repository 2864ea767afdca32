"""Deployment: run an exported bundle without torch or transformers, write bundles, edge formats.

``Predictor``/``predict_main`` (onnxruntime + tokenizers + numpy only) import eagerly; the bundle
and edge helpers (which also need ``onnx``) load on first use, so ``from compresstune.deploy
import Predictor`` never imports onnx, torch or transformers."""

from __future__ import annotations

from .files import predict_main, read_input_file
from .predictor import Predictor

_LAZY = {
    "write_bundle": "bundle",
    "model_card": "card",
    "bundle_config": "bundle",
    "bundle_sizes": "bundle",
    "to_ort_format": "edge",
    "fixed_shape": "edge",
    "trim_vocab": "vocab",
}

__all__ = [
    "Predictor",
    "predict_main",
    "read_input_file",
    "write_bundle",
    "model_card",
    "bundle_config",
    "bundle_sizes",
    "to_ort_format",
    "fixed_shape",
    "trim_vocab",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
