"""Run a deployment bundle: ``Predictor`` and the ``compresstune predict`` command body.

A bundle is a folder in the Hugging Face layout: ``config.json`` (a transformers config with
compresstune's own section under ``"compresstune"``), ``tokenizer.json``, and the ONNX model under
``onnx/`` (see ``compresstune.deploy.bundle``); bundles of format 1 (``model.onnx`` beside a
compresstune-only ``config.json``) are still read. This module imports only the standard library, numpy,
onnxruntime and tokenizers (never torch or transformers), so a bundle runs in a small
environment: ``pip install onnxruntime tokenizers numpy`` plus this package.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import CheckFailed, UserError
from ..feeds import TOKEN_INPUTS, preload_cuda_libraries, session_providers
from ..names import inside
from .layout import (  # noqa: F401
    BUNDLE_FORMAT,
    CONFIG_FILE,
    PROBLEM_TYPES,
    _config_problems,
    bundle_file,
    default_model_file,
    load_config,
)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
}
CHUNK = 8192  # predict_main predicts and prints this many inputs at a time


def provider_name(provider: str) -> str:
    """The ONNX Runtime execution-provider name for a short name (``cpu``, ``cuda``, ...) or a full EP name."""
    if provider in PROVIDERS:
        return PROVIDERS[provider]
    if isinstance(provider, str) and provider.endswith("ExecutionProvider"):
        return provider
    raise UserError(
        f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)} or a full ONNX Runtime "
        "execution-provider name such as CUDAExecutionProvider."
    )


def make_session(model_path: str | Path, provider: str = "cpu", threads: int | None = None, optimization: str = "all"):
    """An ``onnxruntime.InferenceSession`` whose first active provider is exactly ``provider`` (the one session
    builder of the package: the predictor, export checks, benchmarks and the search all use it); ``optimization``:
    ONNX Runtime's graph optimisation level, ``all``, ``basic`` or ``none``.

    ONNX Runtime silently falls back to CPU when e.g. the CUDA libraries are missing; that is
    an error here, checked with ``get_providers()`` after creation."""
    import onnxruntime as ort

    if threads is not None and (not isinstance(threads, int) or not 1 <= threads <= 1024):
        raise UserError(f"threads must be an integer from 1 to 1024, not {threads!r:.40}.")
    ep = provider_name(provider)
    available = ort.get_available_providers()
    if ep not in available:
        raise UserError(
            f"ONNX Runtime provider {provider} ({ep}) is not available in this onnxruntime build "
            f"(available: {', '.join(available)}). For CUDA install onnxruntime-gpu, "
            "or use --provider cpu."
        )
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UserError(f"threads must be a positive integer, not {threads!r}.")
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    providers = session_providers(ep)
    preload_cuda_libraries(ort, ep)
    try:
        sess = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile, ...)
        raise UserError(_load_failure(model_path, e)) from None
    active = sess.get_providers()
    if not active or active[0] != ep:
        raise UserError(
            f"ONNX Runtime did not activate {ep} for {model_path} (active: {active}); it fell back "
            "silently, usually because the libraries that provider needs (CUDA/cuDNN, ...) are missing."
        )
    return sess


def _load_failure(model_path, exc: Exception) -> str:
    """What to tell the user when ONNX Runtime cannot load ``model_path``."""
    detail = (str(exc).splitlines() or [""])[0][:300]
    if "protobuf" in detail.lower() or "INVALID_PROTOBUF" in detail or "flatbuffer" in detail.lower():
        return (
            f"{model_path}: not an ONNX model: ONNX Runtime could not parse it ({type(exc).__name__}: {detail}). "
            "The file is damaged, cut short, or in another format. Give the path of a .onnx (or .ort) file, or "
            "export it again (`compresstune pipeline run FILE --from export`) and take model.onnx (or deploy/) "
            "from the run folder."
        )
    return (
        f"{model_path}: ONNX Runtime could not load the model ({type(exc).__name__}: {detail}). Check that it "
        "was written by a compatible exporter (opset 14-21), or export it again."
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_item(item, n_fields: int, fields: list[str], where: str):
    """One input as a string (one text field) or a tuple of strings (a pair); ``where`` names it in errors."""
    if isinstance(item, dict):
        missing = [f for f in fields if f not in item]
        if missing:
            raise UserError(f"{where}: missing field {missing[0]!r} (this model reads {fields}).")
        item = tuple(item[f] for f in fields) if n_fields == 2 else item[fields[0]]
    if n_fields == 1:
        if isinstance(item, (tuple, list)) and len(item) == 1:
            item = item[0]
        if not isinstance(item, str):
            raise UserError(f"{where}: expected a string, got {type(item).__name__} (this model takes one text).")
        if not item.strip():
            raise UserError(f"{where}: the text is empty.")
        return item
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not all(isinstance(x, str) for x in item):
        got = type(item).__name__ + (f" of {len(item)}" if isinstance(item, (tuple, list)) else "")
        raise UserError(f"{where}: this model takes a pair of texts ({fields[0]}, {fields[1]}); got {got}.")
    for name, x in zip(fields, item):
        if not x.strip():
            raise UserError(f"{where}: {name} is empty.")
    return tuple(item)


class Predictor:
    """Predictions from a bundle folder with ONNX Runtime and the bundle's own tokenizer.

    ``provider`` is ``cpu``, ``cuda`` (or another short name / full EP name); a provider that is not
    active after session creation is an error. ``threads`` sets ORT's intra-op threads (None: ORT's
    default). ``model_file`` picks another model file in the bundle (e.g. ``model.ort``)."""

    def __init__(
        self, bundle_dir: str | Path, provider: str = "cpu", threads: int | None = None, model_file: str | None = None
    ):
        self.bundle_dir = Path(bundle_dir)
        self.config = load_config(self.bundle_dir)
        self.problem_type = self.config["problem_type"]
        self.labels = list(self.config.get("labels") or [])
        self.text_fields = list(self.config["text_fields"])
        model_path = (
            inside(self.bundle_dir, model_file, "model_file")
            if model_file
            else bundle_file(self.bundle_dir, self.config, "model", default_model_file(self.config))
        )
        if not model_path.is_file():
            raise UserError(f"bundle {self.bundle_dir}: model file {model_path.name} is missing.")
        self.session = make_session(model_path, provider, threads)
        self.input_names = self._check_model_io(model_path)
        self.fixed_batch, fixed_seq = self._static_shape()
        self.fixed_seq = fixed_seq
        self.max_length = min(int(self.config["max_length"]), fixed_seq or 1 << 30)
        self.tokenizer = self._load_tokenizer()
        self.pad_id = self._pad_id()
        self.last_truncated = 0

    def _check_model_io(self, model_path: Path) -> list[str]:
        ins = self.session.get_inputs()
        names = [i.name for i in ins]
        unknown = [n for n in names if n not in TOKEN_INPUTS]
        if unknown or "input_ids" not in names:
            raise UserError(f"{model_path}: model inputs {names} are not BERT-style token inputs {list(TOKEN_INPUTS)}.")
        bad = [i.name for i in ins if i.type != "tensor(int64)"]
        if bad:
            raise UserError(f"{model_path}: inputs {bad} are not int64 tensors; this predictor feeds int64 token ids.")
        outs = [o.name for o in self.session.get_outputs()]
        want = self.config.get("output", "logits")
        self.output_name = want if want in outs else outs[0]
        width = self.session.get_outputs()[outs.index(self.output_name)].shape[-1]
        expect = 1 if self.problem_type == "regression" else len(self.labels)
        if isinstance(width, int) and width != expect:
            raise UserError(
                f"{model_path}: the model outputs {width} values per input but {CONFIG_FILE} describes "
                f"{expect} ({self.problem_type}, labels {self.labels})."
            )
        return names

    def _static_shape(self) -> tuple[int | None, int | None]:
        """(batch, seq) when the model was made fixed-shape (fixed_shape()), else (None, None)."""
        shape = self.session.get_inputs()[0].shape
        b, s = (shape + [None, None])[:2]
        return (b if isinstance(b, int) else None), (s if isinstance(s, int) else None)

    def _load_tokenizer(self):
        from tokenizers import Tokenizer

        path = bundle_file(self.bundle_dir, self.config, "tokenizer", "tokenizer.json")
        if not path.is_file():
            what = "is not a file (a folder or a device)" if path.exists() else "is missing"
            raise UserError(f"bundle {self.bundle_dir}: {path.name} {what}; copy the bundle's tokenizer.json there.")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception subclasses for bad files
            raise UserError(f"{path}: the tokenizers library could not read it ({e}).") from None
        # A saved tokenizer.json may carry fixed padding (e.g. to 128) and another truncation length: override both.
        tok.no_padding()
        need = tok.num_special_tokens_to_add(len(self.text_fields) == 2) + len(self.text_fields)
        if self.max_length < need:
            raise UserError(
                f"max_length {self.max_length} leaves no room for text after "
                f"{need - len(self.text_fields)} special tokens."
            )
        tok.enable_truncation(self.max_length, strategy="longest_first")
        return tok

    def _pad_id(self) -> int:
        if isinstance(self.config.get("pad_id"), int):
            if self.config["pad_id"] >= self.tokenizer.get_vocab_size():
                raise UserError(
                    f"{self.bundle_dir / CONFIG_FILE}: pad_id {self.config['pad_id']} is not a token of its tokenizer "
                    f"({self.tokenizer.get_vocab_size()} tokens); the config does not belong to this tokenizer."
                )
            return self.config["pad_id"]
        for t in ("[PAD]", "<pad>"):
            i = self.tokenizer.token_to_id(t)
            if i is not None:
                return i
        return 0

    def predict(self, inputs, batch_size: int = 32, warn: bool = True) -> list[dict]:
        """Predict each input (a string, or an ``(a, b)`` pair / dict of text fields for pair tasks).

        Returns one dict per input, in input order: ``{"label", "label_id", "score"}`` (softmax
        probability of the predicted label) for classification, ``{"value"}`` for regression.
        Inputs longer than ``max_length`` tokens are truncated; their count is ``last_truncated``
        and, when ``warn``, a warning says how many."""
        return self._format(self.logits(inputs, batch_size, warn))

    def logits(self, inputs, batch_size: int = 32, warn: bool = True) -> np.ndarray:
        """The model's raw outputs (inputs x labels, or x 1 for regression), in input order, batched as
        :meth:`predict` batches them."""
        items = self._normalize(inputs)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, not {batch_size!r}.")
        encs = self.tokenizer.encode_batch(items)
        self.last_truncated = sum(1 for e in encs if e.overflowing)
        if self.last_truncated and warn:
            warnings.warn(
                f"{self.last_truncated} of {len(items)} inputs were longer than max_length="
                f"{self.max_length} tokens and were truncated.",
                UserWarning,
                stacklevel=2,
            )
        out = self._run(encs, self.fixed_batch or batch_size)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise CheckFailed(
                f"bundle {self.bundle_dir}: the model gave NaN or infinite outputs for {int(bad.sum())} of {len(out)} "
                f"input(s) (the first: input {int(np.argmax(bad))}); its numbers cannot be trusted. Check the bundle "
                "on this machine with `compresstune verify`, or ship another variant (fp16 can overflow)."
            )
        return out

    def _normalize(self, inputs) -> list:
        if isinstance(inputs, (str, bytes, dict)):
            raise UserError("predict() takes a list of inputs; wrap a single text in a list.")
        try:
            items = list(inputs)
        except TypeError:
            raise UserError(f"predict() takes a list of inputs, not {type(inputs).__name__}.") from None
        if not items:
            raise UserError("no inputs: pass at least one text.")
        n = len(self.text_fields)
        return [check_item(x, n, self.text_fields, f"input {i}") for i, x in enumerate(items)]

    def _run(self, encs, batch_size: int) -> np.ndarray:
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        order = np.argsort(-lengths, kind="stable")  # longest first: peak memory is known at the first batch
        out = None
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            feed = self._arrays([encs[i] for i in idx])
            try:
                res = self.session.run([self.output_name], feed)[0][: len(idx)]
            except Exception as exc:  # noqa: BLE001 - onnxruntime's Fail / InvalidArgument / RuntimeException
                width = feed["input_ids"].shape[1]
                raise UserError(
                    f"bundle {self.bundle_dir}: ONNX Runtime could not run a batch of {len(idx)} input(s) of {width} "
                    f"tokens ({str(exc).splitlines()[0][:200]}). The model may take fewer tokens than the bundle's "
                    f"max_length {self.max_length} (its position embeddings): rebuild the bundle with a "
                    "task.max_length the model takes."
                ) from None
            if out is None:
                self._check_width(res)
                out = np.empty((len(encs), res.shape[1]), dtype=np.float32)
            out[idx] = res
        return out

    def _check_width(self, res: np.ndarray) -> None:
        """The output width, when the graph does not state it: one value per label (one for regression)."""
        expect = 1 if self.problem_type == "regression" else len(self.labels)
        if res.ndim != 2 or res.shape[1] != expect:
            raise UserError(
                f"bundle {self.bundle_dir}: the model outputs shape {list(res.shape)} per batch but {CONFIG_FILE} "
                f"describes {expect} value(s) per input ({self.problem_type}); the model and its config do not "
                "belong together. Write the bundle again."
            )

    def _arrays(self, batch) -> dict:
        width = self.fixed_seq or max(len(e.ids) for e in batch)
        rows = self.fixed_batch or len(batch)
        ids = np.full((rows, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        types = np.zeros((rows, width), dtype=np.int64)
        for r, e in enumerate(batch):
            n = len(e.ids)
            ids[r, :n] = e.ids
            mask[r, :n] = 1
            types[r, :n] = e.type_ids
        mask[len(batch) :, 0] = 1  # filler rows of a fixed-shape batch: one visible token, results dropped
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: feed[k] for k in self.input_names}

    def _format(self, logits: np.ndarray) -> list[dict]:
        if self.problem_type == "regression":
            return [{"value": float(v)} for v in logits[:, 0]]
        probs = _softmax(logits.astype(np.float64))
        top = probs.argmax(axis=1)
        return [
            {"label": self.labels[k], "label_id": int(k), "score": round(float(p[k]), 6)} for k, p in zip(top, probs)
        ]


def bundle_predictions(bundle_dir, texts, regression: bool) -> list:
    """A bundle's predictions for ``texts`` (strings or (a, b) pairs) through :class:`Predictor` at its default
    batching, as a metric takes them: values for a regression task, label ids otherwise."""
    out = Predictor(bundle_dir).predict(list(texts), warn=False)
    return [r["value"] for r in out] if regression else [r["label_id"] for r in out]
