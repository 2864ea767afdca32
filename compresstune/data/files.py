"""The user's own labelled CSV/TSV/JSONL files.

Every file is decoded as UTF-8 first (a byte that is not UTF-8 is reported with its line);
problems in rows (ragged lines, missing columns, unknown labels) are collected over the whole
file and reported together, the first few with their line numbers."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..errors import UserError
from .task import Split, TaskData

MAX_LISTED = 10  # row problems listed per file; the rest are counted


def read_utf8(path: Path, what: str = "task data") -> str:
    """The text of ``path`` (a UTF-8 byte-order mark is dropped); bytes that are not UTF-8 are a
    :class:`UserError` naming the line and the fix."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(
            f"{what}: {path} line {line}: byte 0x{data[exc.start]:02x} at column {col} is not UTF-8; the file "
            "must be UTF-8 text. Convert it (for example `iconv -f latin1 -t utf-8 FILE > FILE.utf8`, or save as "
            "UTF-8 from your editor) and point the config at the converted file."
        ) from None


class RowProblems:
    """Problems found in the rows of one file, raised together as one :class:`UserError`."""

    def __init__(self, path: Path):
        self.path = path
        self.items: list[str] = []

    def add(self, line: int, message: str) -> None:
        self.items.append(f"task data: {self.path} line {line}: {message}")

    def raise_if_any(self, fix: str = "") -> None:
        if not self.items:
            return
        shown = self.items[:MAX_LISTED]
        more = len(self.items) - len(shown)
        tail = f"\n    ... and {more} more line{'s' if more != 1 else ''} like these" if more else ""
        head = (
            shown[0]
            if len(self.items) == 1
            else f"{len(self.items)} bad lines in {self.path}:\n    " + ("\n    ".join(shown))
        )
        raise UserError(head + tail + (f"\n    {fix}" if fix else ""))


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict]]:
    out, bad = [], RowProblems(path)
    for n, line in enumerate(io.StringIO(text, newline=""), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.add(n, f"not valid JSON ({exc.msg})")
            continue
        except (ValueError, RecursionError) as exc:  # a number past Python's digit limit, nesting past the stack
            bad.add(n, f"not usable JSON ({exc.__class__.__name__}: {str(exc)[:120] or 'nested too deep'})")
            continue
        if not isinstance(rec, dict):
            bad.add(n, f"expected a JSON object per line, found {type(rec).__name__}")
            continue
        out.append((n, rec))
    bad.raise_if_any('A .jsonl file holds one JSON object per line, for example {"text": "...", "label": 1}.')
    return out


def _read_delimited(path: Path, text: str, delim: str) -> list[tuple[int, dict]]:
    if delim == "\t":  # TSV: plain tab-separated, no quote handling (as GLUE)
        rows = [line.rstrip("\r\n").split("\t") for line in io.StringIO(text, newline="")]
    else:
        rows = _csv_rows(path, text)
    if not rows or all(r in ([], [""]) for r in rows):
        raise UserError(
            f"task data: {path} is empty; it needs a header line naming the columns, then one example a line."
        )
    header = [h.strip() for h in rows[0]]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise UserError(
            f"task data: {path} line 1: column(s) {twice} appear more than once in the header, so it is unclear "
            "which one holds the text or label; give every column its own name."
        )
    out, bad = [], RowProblems(path)
    for n, r in enumerate(rows[1:], start=2):
        if r in ([], [""]):
            continue
        if len(r) != len(header):
            bad.add(n, f"{len(r)} columns but the header has {len(header)} ({header})")
            continue
        out.append((n, dict(zip(header, r))))
    bad.raise_if_any("Fix these rows, or quote fields that contain the delimiter (CSV only; TSV has no quoting).")
    return out


def _csv_rows(path: Path, text: str) -> list[list[str]]:
    """CSV rows; a malformed row or a field past the csv module's size limit is an error naming the line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            rows.append(row)
    except csv.Error as exc:
        raise UserError(
            f"task data: {path} line {reader.line_num}: {exc} (a field over {csv.field_size_limit():,} characters, "
            "or an unclosed quote that swallowed the rest of the file); fix that line or close the quote."
        ) from None
    return rows


def _read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) pairs from a CSV, TSV or JSONL file."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv", ".txt"):
        raise UserError(f"task data: {path}: unknown file type {suffix!r}; use .csv, .tsv or .jsonl.")
    text = read_utf8(path)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, text)
    return _read_delimited(path, text, "," if suffix == ".csv" else "\t")


def _read_split(split: str, file: str, text_columns: list[str], label_column: str) -> tuple[Path, list]:
    """The path and (line, record) pairs of the ``split`` file, which must exist, have examples, and
    have the text and label columns in its first record."""
    p = Path(file)
    if p.exists() and not p.is_file():
        raise UserError(
            f"task.{split}_file: {p} is not a regular file (a folder, a device or a pipe); give the path of your "
            f"{split} file."
        )
    if not p.is_file():
        raise UserError(
            f"task.{split}_file: {p} does not exist; give the path of your {split} file "
            "(relative paths are resolved against the pipeline file's folder)."
        )
    rows = _read_records(p)
    if not rows:
        raise UserError(f"task.{split}_file: {p} has no examples; add labelled rows after the header.")
    n0, first = rows[0]
    missing = [c for c in list(text_columns) + [label_column] if c not in first]
    if missing:
        raise UserError(
            f"task.text_columns/label_column: {p} line {n0} has no column(s) {missing}; its columns are "
            f"{list(first)}. Set task.text_columns and task.label_column to names that exist."
        )
    return p, rows


def norm_label(value) -> str | None:
    """A class label as one string: numbers that are whole (1, 1.0, "1.0", " 1 ") all become "1", so one class
    is never split in two by how a file wrote it; None for a missing or empty label (JSON null, "")."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, (list, dict)):
        return None
    text = str(value).strip()
    if not text or text.lower() in ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        return None  # NaN or infinity is no class
    try:
        f = float(text)
    except (ValueError, OverflowError):
        return text
    if not math.isfinite(f):
        return None
    return str(int(f)) if f == int(f) else text


def _label(raw, regression: bool, labels: list[str] | None):
    """The label value: a float for regression, else the index of ``raw`` in ``labels``; a str is a problem."""
    if regression:
        try:
            v = float(str(raw).strip()) if raw is not None and not isinstance(raw, bool) else None
        except ValueError:
            v = None
        if v is None or not math.isfinite(v):
            return f"label {raw!r} is not a finite number, but task.problem is regression"
        return v
    raw = norm_label(raw)
    if raw is None:
        return "the label is missing, empty, NaN or not a single value; every example needs one class label"
    if raw not in labels:
        return f"label {raw!r} is not one of the known labels {labels} (taken from task.labels or the training file)"
    return labels.index(raw)


def _to_split(p: Path, rows: list, text_columns: list[str], label_column: str, regression: bool, labels) -> Split:
    texts, ys, bad = [], [], RowProblems(p)
    for n, r in rows:
        missing = [c for c in list(text_columns) + [label_column] if c not in r]
        if missing:
            bad.add(n, f"column(s) {missing} missing")
            continue
        y = _label(r[label_column], regression, labels)
        if isinstance(y, str):
            bad.add(n, y)
            continue
        odd = [c for c in text_columns if not isinstance(r[c], str)]
        if odd:
            bad.add(n, f"column(s) {odd} hold {type(r[odd[0]]).__name__}, not text (empty or null text included)")
            continue
        empty = [c for c in text_columns if not r[c].strip()]
        if empty:
            bad.add(n, f"empty or null text in column(s) {empty}")
            continue
        ys.append(y)
        texts.append(tuple(str(r[c]) for c in text_columns))
    fix = "Correct these rows (labels not in task.labels can be listed there)." if not regression else ""
    bad.raise_if_any(fix)
    return Split(texts, ys)


def load_user_files(
    train_file: str,
    dev_file: str,
    text_columns: list[str],
    label_column: str,
    problem: str = "classification",
    metric: str | None = None,
    labels: list[str] | None = None,
    name: str = "custom",
) -> TaskData:
    """The user's own labelled text. String or int labels for classification (ids follow
    ``labels`` if given, else the sorted set of training labels); numbers for regression."""
    recs = {
        split: _read_split(split, f, text_columns, label_column)
        for split, f in (("train", train_file), ("dev", dev_file))
    }
    regression = problem == "regression"
    if label_column in text_columns:
        raise UserError(
            f"task.text_columns: {list(text_columns)} includes the label column {label_column!r}, so the model "
            "would read the answer; give the text column(s) only."
        )
    if not regression:
        found = {norm_label(r.get(label_column)) for _, r in recs["train"][1]} - {None}
        labels = sorted(found) if labels is None else [norm_label(x) or str(x) for x in labels]
    splits = {
        split: _to_split(p, rows, text_columns, label_column, regression, labels) for split, (p, rows) in recs.items()
    }
    if metric is None:
        metric = "pearson" if regression else ("f1" if len(labels) == 2 else "accuracy")
    return TaskData(
        name,
        splits["train"],
        splits["dev"],
        1 if regression else len(labels),
        metric,
        regression,
        None if regression else list(labels),
        {"train": str(train_file), "dev": str(dev_file)},
    )
