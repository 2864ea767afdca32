"""The user's own labelled CSV/TSV/JSONL files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import UserError
from .task import Split, TaskData


def _read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) pairs from a CSV, TSV or JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        out = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(
                        f"task data: {path} line {n}: not valid JSON ({exc.msg}); "
                        "a .jsonl file holds one JSON object per line."
                    ) from None
                if not isinstance(rec, dict):
                    raise UserError(
                        f"task data: {path} line {n}: expected a JSON object per line, found {type(rec).__name__}."
                    )
                out.append((n, rec))
        return out
    if suffix in (".csv", ".tsv", ".txt"):
        delim = "," if suffix == ".csv" else "\t"
        with open(path, encoding="utf-8-sig", newline="") as f:
            if delim == "\t":  # TSV: plain tab-separated, no quote handling (as GLUE)
                rows = [line.rstrip("\r\n").split("\t") for line in f]
            else:
                rows = list(csv.reader(f))
        if not rows:
            raise UserError(f"task data: {path} is empty; it needs a header line naming the columns.")
        header = [h.strip() for h in rows[0]]
        out = []
        for n, r in enumerate(rows[1:], start=2):
            if r in ([], [""]):
                continue
            if len(r) != len(header):
                raise UserError(
                    f"task data: {path} line {n}: {len(r)} columns but the header has {len(header)} ({header}); "
                    "fix the row or quote fields containing the delimiter."
                )
            out.append((n, dict(zip(header, r))))
        return out
    raise UserError(f"task data: {path}: unknown file type {suffix!r}; use .csv, .tsv or .jsonl.")


def _read_split(split: str, file: str, text_columns: list[str], label_column: str) -> tuple[Path, list]:
    """The path and (line, record) pairs of the ``split`` file, which must exist, have examples, and
    have the text and label columns in its first record."""
    p = Path(file)
    if not p.is_file():
        raise UserError(
            f"task.{split}_file: {p} does not exist; give the path of your {split} file "
            "(relative paths are resolved against the pipeline file's folder)."
        )
    rows = _read_records(p)
    if not rows:
        raise UserError(f"task.{split}_file: {p} has no examples.")
    n0, first = rows[0]
    missing = [c for c in list(text_columns) + [label_column] if c not in first]
    if missing:
        raise UserError(
            f"task.text_columns/label_column: {p} line {n0} has no column(s) {missing}; its columns are "
            f"{list(first)}. Set task.text_columns and task.label_column to names that exist."
        )
    return p, rows


def _label(p: Path, n: int, raw: str, regression: bool, labels: list[str] | None):
    """The label value of line ``n``: a float for regression, else the index of ``raw`` in ``labels``."""
    if regression:
        try:
            return float(raw)
        except ValueError:
            raise UserError(
                f"task data: {p} line {n}: label {raw!r} is not a number, but task.problem is regression."
            ) from None
    if raw not in labels:
        raise UserError(
            f"task data: {p} line {n}: label {raw!r} is not one of the known labels {labels} "
            "(taken from task.labels or the training file)."
        )
    return labels.index(raw)


def _to_split(p: Path, rows: list, text_columns: list[str], label_column: str, regression: bool, labels) -> Split:
    texts, ys = [], []
    for n, r in rows:
        for c in list(text_columns) + [label_column]:
            if c not in r:
                raise UserError(f"task data: {p} line {n}: column {c!r} is missing.")
        ys.append(_label(p, n, str(r[label_column]).strip(), regression, labels))
        texts.append(tuple(str(r[c]) for c in text_columns))
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
    if not regression and labels is None:
        labels = sorted({str(r[label_column]).strip() for _, r in recs["train"][1]})
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
