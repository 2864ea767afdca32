"""GLUE tasks by name, from a local GLUE folder or the Hugging Face hub.

Local GLUE files are plain tab-separated text read with no quote handling (MRPC and
CoLA contain unbalanced quotes)."""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .files import RowProblems, read_utf8
from .task import Split, TaskData

GLUE_DIR_ENV = "COMPRESSTUNE_GLUE_DIR"


@dataclass(frozen=True)
class GlueTask:
    name: str
    folder: str
    text_columns: tuple  # local TSV: header names, or int positions for header-less files
    label_column: object
    labels: tuple | None  # label strings in id order; None for regression
    metric: str  # main metric
    has_header: bool = True
    dev_file: str = "dev.tsv"
    hf_name: str = ""
    hf_text: tuple = ()
    hf_dev_split: str = "validation"

    @property
    def label_names(self) -> list[str] | None:
        """What each class id means, for people and for the bundle's ``id2label`` (the Hugging Face GLUE
        dataset's names); the file's own label strings where they are already names."""
        if self.labels is None:
            return None
        return list(LABEL_NAMES.get(self.name, self.labels))

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", "CoLA", (3,), 1, ("0", "1"), "mcc", has_header=False, hf_text=("sentence",)),
        GlueTask("sst2", "SST-2", ("sentence",), "label", ("0", "1"), "accuracy", hf_text=("sentence",)),
        GlueTask(
            "mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), "f1", hf_text=("sentence1", "sentence2")
        ),
        GlueTask(
            "stsb", "STS-B", ("sentence1", "sentence2"), "score", None, "pearson", hf_text=("sentence1", "sentence2")
        ),
        GlueTask(
            "qqp",
            "QQP",
            ("question1", "question2"),
            "is_duplicate",
            ("0", "1"),
            "f1",
            hf_text=("question1", "question2"),
        ),
        GlueTask(
            "mnli",
            "MNLI",
            ("sentence1", "sentence2"),
            "gold_label",
            ("contradiction", "entailment", "neutral"),
            "accuracy",
            dev_file="dev_matched.tsv",
            hf_text=("premise", "hypothesis"),
            hf_dev_split="validation_matched",
        ),
        GlueTask(
            "qnli",
            "QNLI",
            ("question", "sentence"),
            "label",
            ("entailment", "not_entailment"),
            "accuracy",
            hf_text=("question", "sentence"),
        ),
        GlueTask(
            "rte",
            "RTE",
            ("sentence1", "sentence2"),
            "label",
            ("entailment", "not_entailment"),
            "accuracy",
            hf_text=("sentence1", "sentence2"),
        ),
        GlueTask(
            "wnli",
            "WNLI",
            ("sentence1", "sentence2"),
            "label",
            ("0", "1"),
            "accuracy",
            hf_text=("sentence1", "sentence2"),
        ),
    ]
}
# Names of the 0/1 labels of the GLUE files (as the Hugging Face GLUE dataset calls them).
LABEL_NAMES = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "wnli": ("not_entailment", "entailment"),
}
# The Hugging Face copy numbers MNLI/QNLI/RTE labels differently from the alphabetical order above.
_HF_LABEL_NAMES = {
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
}


def find_glue_dir(configured: str | None) -> Path | None:
    """The local GLUE folder: the config key, else $COMPRESSTUNE_GLUE_DIR, else None."""
    if configured:
        return Path(configured)
    env = glue_dir_env()
    return Path(env) if env else None


def glue_dir_env() -> str | None:
    """$COMPRESSTUNE_GLUE_DIR, None where it is unset or blank (an empty value is no folder, not this one)."""
    return (os.environ.get(GLUE_DIR_ENV) or "").strip() or None


def _read_tsv(path: Path) -> list[list[str]]:
    text = read_utf8(path)  # -sig strips MRPC's BOM
    return [line.rstrip("\r\n").split("\t") for line in io.StringIO(text, newline="")]


def _glue_columns(task: GlueTask, path: Path, rows: list) -> tuple[list, object, int, list]:
    """(text column indexes, label index, first data line, data rows) of a GLUE file."""
    if not rows:
        raise UserError(
            f"task data: {path} is empty; a GLUE {task.folder} file holds "
            f"{'a header line, then ' if task.has_header else ''}one example a line. Copy it again from GLUE."
        )
    if not task.has_header:
        return list(task.text_columns), task.label_column, 1, rows
    header = rows[0]
    try:
        text_idx = [header.index(c) for c in task.text_columns]
        label_idx = header.index(task.label_column)
    except ValueError:
        raise UserError(
            f"task data: {path} line 1: expected the GLUE {task.folder} header with columns "
            f"{list(task.text_columns) + [task.label_column]}, found {header}. Is this the right task's file?"
        ) from None
    return text_idx, label_idx, 2, rows[1:]


def _read_glue_split(task: GlueTask, path: Path) -> Split:
    if not path.is_file():
        raise UserError(
            f"task data: {path} does not exist. A local GLUE folder needs the standard layout "
            f"({task.folder}/train.tsv and {task.folder}/{task.dev_file}); set `task.glue_dir` (or ${GLUE_DIR_ENV}) "
            f"to the folder that contains {task.folder}/, or set `task.source: hub`."
        )
    rows = [r for r in _read_tsv(path) if r != [""]]
    text_idx, label_idx, first_line, rows = _glue_columns(task, path, rows)
    if not rows:
        raise UserError(f"task data: {path} has a header but no examples; copy the file again from GLUE.")
    texts, labels, bad = [], [], RowProblems(path)
    need = max(text_idx + [label_idx]) + 1
    want = "a number" if task.is_regression else f"one of {list(task.labels)}"
    for n, r in enumerate(rows, start=first_line):
        if len(r) < need:
            bad.add(n, f"expected at least {need} tab-separated columns, found {len(r)}")
            continue
        raw = r[label_idx].strip()
        try:
            lab = float(raw) if task.is_regression else task.labels.index(raw)
        except ValueError:
            bad.add(n, f"label {raw!r} is not {want}")
            continue
        if not all(r[i].strip() for i in text_idx):
            bad.add(n, "empty text")
            continue
        if task.is_regression and not math.isfinite(lab):
            bad.add(n, f"label {raw!r} is not a finite number")
            continue
        texts.append(tuple(r[i].strip() for i in text_idx))
        labels.append(lab)
    bad.raise_if_any(
        "GLUE files are plain TSV with no quote handling; is the file truncated or edited? Copy it again from GLUE."
    )
    return Split(texts, labels)


def load_glue(name: str, source: str = "auto", glue_dir: str | None = None) -> TaskData:
    """A GLUE task from a local folder in the standard layout, or from the hub via ``datasets``."""
    task = GLUE_TASKS[name]
    local = find_glue_dir(glue_dir)
    if source == "local" or (source == "auto" and local is not None):
        if local is None:
            raise UserError(f"task: `source: local` needs `task.glue_dir` or ${GLUE_DIR_ENV} to name the GLUE folder.")
        if not local.is_dir():
            raise UserError(
                f"task.glue_dir: the folder {local} does not exist; point it at the folder that holds {task.folder}/."
            )
        tr, dv = local / task.folder / "train.tsv", local / task.folder / task.dev_file
        return TaskData(
            name,
            _read_glue_split(task, tr),
            _read_glue_split(task, dv),
            task.num_labels,
            task.metric,
            task.is_regression,
            task.label_names,
            {"train": str(tr), "dev": str(dv)},
        )
    return _load_glue_hub(task)


def _load_glue_hub(task: GlueTask) -> TaskData:
    import datasets

    # What "could not be loaded" means: no network, the hub refused, or the dataset is not there.
    # Anything else (a bug in datasets or here) propagates with its own traceback.
    unreachable: tuple[type[BaseException], ...] = (OSError,)
    if hasattr(datasets, "exceptions") and hasattr(datasets.exceptions, "DatasetsError"):
        unreachable += (datasets.exceptions.DatasetsError,)
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.name)
    except unreachable as exc:
        raise UserError(
            f"task: GLUE {task.name} was requested from the Hugging Face hub and could not be loaded "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}). "
            "Without a hub, set `task.glue_dir` "
            f"(or ${GLUE_DIR_ENV}) to a local GLUE folder in the standard layout."
        ) from exc
    hf_names = _HF_LABEL_NAMES.get(task.name)

    def conv(split) -> Split:
        texts = [tuple(ex[c] for c in task.hf_text) for ex in split]
        if task.is_regression:
            labels = [float(ex["label"]) for ex in split]
        elif hf_names:
            labels = [task.labels.index(hf_names[ex["label"]]) for ex in split]
        else:
            labels = [int(ex["label"]) for ex in split]
        return Split(texts, labels)

    return TaskData(
        task.name,
        conv(ds["train"]),
        conv(ds[task.hf_dev_split]),
        task.num_labels,
        task.metric,
        task.is_regression,
        task.label_names,
        {"train": f"hub:nyu-mll/glue/{task.name}", "dev": f"hub:nyu-mll/glue/{task.name}"},
    )
