"""``compresstune-predict`` and ``compresstune-verify``: a deploy bundle's two commands for a small runtime install.

The same arguments, output and exit codes as ``compresstune predict`` and ``compresstune verify``, on argparse
instead of click, so that they run where only this package (installed with ``--no-deps``), onnxruntime,
tokenizers and numpy are::

    pip install onnxruntime numpy && pip install --no-deps compresstune tokenizers
    compresstune-predict BUNDLE "a gripping, funny film"
    compresstune-verify BUNDLE

Importing this module never imports torch, transformers, click or onnx. compresstune's own errors end the
command with ``error: MESSAGE`` on stderr and their exit code (2 for bad input, 3 for a failed check), as the
``compresstune`` command does; a bad command line exits 2 with argparse's usage message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__
from ..errors import CompresstuneError, from_os_error
from .files import predict_main
from .verify import DEFAULT_MAX_MEDIAN_DIFF, DEFAULT_MIN_AGREEMENT, Tolerance, verify_main

CLI_PROVIDERS = ("cpu", "cuda")  # what the runtime commands offer (Predictor takes more)


def _threads(value: str) -> int:
    """``--threads``: an integer from 1 to 1024, as ``compresstune``'s ``click.IntRange(1, 1024)``."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a valid integer.") from None
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"{n} is not in the range 1<=x<=1024.")
    return n


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--version", action="version", version=f"{prog} (compresstune) {__version__}")
    p.add_argument("bundle", metavar="BUNDLE", help="the deploy bundle folder")
    return p


def _run_options(p: argparse.ArgumentParser) -> None:
    """``--provider`` and ``--threads``, as ``compresstune.cli.common.bundle_run_options``."""
    p.add_argument("--provider", choices=CLI_PROVIDERS, default="cpu", help="execution provider (default: cpu)")
    p.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="N",
        help="ONNX Runtime intra-op threads (default: its own choice)",
    )


def _check_bundle_arg(p: argparse.ArgumentParser, bundle: str) -> None:
    if Path(bundle).is_file():  # as click.Path(file_okay=False)
        p.error(f"argument BUNDLE: {bundle!r} is a file, not a bundle folder.")


def _run(fn, *args, **kwargs) -> int:
    """compresstune's own errors: ``error: MESSAGE`` on stderr and their exit code, never a traceback."""
    try:
        return fn(*args, **kwargs)
    except (CompresstuneError, OSError) as exc:
        err = from_os_error(exc) if isinstance(exc, OSError) else exc
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def predict_parser() -> argparse.ArgumentParser:
    p = _parser(
        "compresstune-predict",
        "Label TEXTs (or a --file) with a deploy bundle; prints one JSON line per input (label and score, or "
        "value). Needs only onnxruntime, tokenizers and numpy.",
    )
    p.add_argument("texts", metavar="TEXT", nargs="*", help="inputs (a sentence pair: the two texts tab-separated)")
    p.add_argument(
        "--file",
        help="one input per line (a sentence pair tab-separated), or .jsonl with the bundle's text fields; - for stdin",
    )
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="inputs per model call (default: 32)")
    _run_options(p)
    return p


def verify_parser() -> argparse.ArgumentParser:
    p = _parser(
        "compresstune-verify",
        "Check a deploy bundle on the machine it is on: its stored dev inputs are run here and compared with the "
        "labels and logits of the machine that built it. Exits 0 when agreement reaches --min-agreement and the "
        "median logit difference is within --max-median-diff, 3 otherwise. Needs only onnxruntime, tokenizers and "
        "numpy.",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        metavar="X",
        help="least share of the verification inputs whose label must equal the build machine's (default: "
        f"{DEFAULT_MIN_AGREEMENT})",
    )
    p.add_argument(
        "--max-median-diff",
        type=float,
        default=DEFAULT_MAX_MEDIAN_DIFF,
        metavar="X",
        help="largest allowed median, over the verification inputs, of an input's largest logit difference "
        f"(default: {DEFAULT_MAX_MEDIAN_DIFF})",
    )
    _run_options(p)
    p.add_argument("--json", dest="as_json", action="store_true", help="print the result as JSON")
    return p


def predict(argv: list[str] | None = None) -> int:
    """``compresstune-predict BUNDLE [TEXT...] [--file FILE]`` (the console script; ``sys.exit`` takes the
    exit code it returns)."""
    p = predict_parser()
    a = p.parse_intermixed_args(argv)  # options may stand between the TEXTs, as with click
    _check_bundle_arg(p, a.bundle)
    return _run(predict_main, a.bundle, a.texts, a.file, a.batch_size, a.provider, a.threads)


def verify(argv: list[str] | None = None) -> int:
    """``compresstune-verify BUNDLE`` (the console script): returns the exit code (0 passed, 3 outside the
    tolerances)."""
    p = verify_parser()
    a = p.parse_args(argv)
    _check_bundle_arg(p, a.bundle)
    tol = Tolerance(a.min_agreement, a.max_median_diff)
    return _run(verify_main, a.bundle, tol, a.provider, a.threads, a.as_json, echo=print)
