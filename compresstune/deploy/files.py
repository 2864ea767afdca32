"""Inputs from files and the ``compresstune predict`` loop: plain lines (pairs tab-separated) or JSONL,
predicted in chunks and printed as JSON lines. Imports only what the predictor imports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UserError
from .predictor import CHUNK, Predictor, check_item


def _decode_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) for every non-blank line; non-UTF-8 bytes name the line."""
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as e:
        raise UserError(f"input file {path}: cannot read it ({e.strerror or e}).") from None
    out = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise UserError(
                f"input file {path} line {n}: not UTF-8 (byte {e.start + 1} of the line); save the file as UTF-8."
            ) from None
        if line.strip():
            out.append((n, line))
    return out


def read_input_file(path: str | Path, text_fields: list[str]) -> tuple[list, list[int]]:
    """Inputs and their line numbers from a text file (one input per line, pairs tab-separated; ``-`` is
    stdin) or a ``.jsonl`` file (one JSON object per line with the text fields). Blank lines are skipped;
    there is no header line."""
    path = Path(path)
    if str(path) != "-" and not path.is_file():
        raise UserError(f"input file {path} " + ("is not a file." if path.exists() else "does not exist."))
    lines = _decode_lines(path)
    if not lines:
        raise UserError(f"input file {path} has no inputs (it is empty or blank).")
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    n = len(text_fields)
    items = []
    for ln, line in lines:
        where = f"input file {path} line {ln}"
        if jsonl:
            items.append(check_item(_json_row(line, where, text_fields), n, text_fields, where))
            continue
        parts = line.split("\t")
        if len(parts) != n:
            raise UserError(
                f"{where}: {len(parts)} tab-separated field{'s' if len(parts) != 1 else ''} but this model "
                f"takes {n} ({', '.join(text_fields)}); put {'one text' if n == 1 else 'the two texts'} "
                f"per line{'' if n == 1 else ', separated by one tab'}."
            )
        items.append(check_item(parts[0] if n == 1 else tuple(parts), n, text_fields, where))
    return items, [ln for ln, _ in lines]


def _json_row(line: str, where: str, fields: list[str]) -> dict:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise UserError(f"{where}: not valid JSON ({e}).") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply; give one flat object with the text fields.") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with fields {fields}, got {type(row).__name__}.")
    for f in fields:
        if f not in row:
            raise UserError(f"{where}: missing field {f!r} (the line has {sorted(row)}; this model reads {fields}).")
        if not isinstance(row[f], str):
            raise UserError(f"{where}: field {f!r} must be a string, not {type(row[f]).__name__}.")
    return row


def predict_main(
    bundle, texts=(), file=None, batch_size: int = 32, provider: str = "cpu", threads: int | None = None, out=None
) -> int:
    """Body of ``compresstune predict BUNDLE [TEXT...] [--file FILE]``: one JSON line per input on ``out``.

    Give either ``texts`` (pair tasks: each text is ``a<TAB>b``) or ``file`` (see :func:`read_input_file`).
    Each line holds ``index`` (0-based), ``line`` (file inputs) and the prediction. A truncation count goes
    to stderr. Returns the exit code (0); bad input raises :class:`UserError`."""
    out = out or sys.stdout
    texts = list(texts or ())
    if texts and file:
        raise UserError("give input texts or --file, not both.")
    if not texts and not file:
        raise UserError("nothing to predict: give one or more TEXT arguments or --file FILE.")
    pred = Predictor(bundle, provider=provider, threads=threads)
    fields = pred.text_fields
    if file:
        items, lines = read_input_file(file, fields)
    else:
        lines = None
        items = [
            check_item(t.split("\t") if len(fields) == 2 else t, len(fields), fields, f"TEXT argument {i + 1}")
            for i, t in enumerate(texts)
        ]
    truncated = 0
    for s in range(0, len(items), CHUNK):
        res = pred.predict(items[s : s + CHUNK], batch_size=batch_size, warn=False)
        truncated += pred.last_truncated
        buf = []
        for i, r in enumerate(res, start=s):
            rec = {"index": i, **({"line": lines[i]} if lines else {}), **r}
            buf.append(json.dumps(rec, ensure_ascii=False))
        out.write("\n".join(buf) + "\n")
    if truncated:
        print(
            f"compresstune predict: {truncated} of {len(items)} inputs were longer than max_length="
            f"{pred.max_length} tokens and were truncated.",
            file=sys.stderr,
        )
    return 0
