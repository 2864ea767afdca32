"""Task data: every GLUE task by name, from a local GLUE folder or the Hugging Face hub,
and the user's own labelled CSV/TSV/JSONL files.

Everything is read into a :class:`TaskData`: lists of texts (one or two columns),
labels as ints (classification) or floats (regression), and the task's metric.
Local GLUE files are plain tab-separated text read with no quote handling (MRPC and
CoLA contain unbalanced quotes).
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

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
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), "f1", hf_text=("sentence1", "sentence2")),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, "pearson", hf_text=("sentence1", "sentence2")),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), "f1", hf_text=("question1", "question2")),
        GlueTask(
            "mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"), "accuracy",
            dev_file="dev_matched.tsv", hf_text=("premise", "hypothesis"), hf_dev_split="validation_matched",
        ),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), "accuracy", hf_text=("question", "sentence")),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), "accuracy", hf_text=("sentence1", "sentence2")),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), "accuracy", hf_text=("sentence1", "sentence2")),
    ]
}
# The Hugging Face copy numbers MNLI/QNLI/RTE labels differently from the alphabetical order above.
_HF_LABEL_NAMES = {
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
}


@dataclass
class Split:
    texts: list[tuple[str, ...]]  # one tuple per example: (sentence,) or (sentence1, sentence2)
    labels: list  # int class ids, or floats for regression

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int) -> "Split":
        """A fixed random subset of ``n`` examples (all when ``n`` is None or too big)."""
        if not n or n >= len(self):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class TaskData:
    name: str
    train: Split
    dev: Split
    num_labels: int
    metric: str
    is_regression: bool
    label_names: list[str] | None = None
    sources: dict = field(default_factory=dict)  # split -> file or hub id, for the report

    @property
    def problem_type(self) -> str:
        return "regression" if self.is_regression else "single_label_classification"


# ---------------------------------------------------------------------------- GLUE


def find_glue_dir(configured: str | None) -> Path | None:
    """The local GLUE folder: the config key, else $COMPRESSTUNE_GLUE_DIR, else None."""
    if configured:
        return Path(configured)
    env = os.environ.get(GLUE_DIR_ENV)
    return Path(env) if env else None


def _read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig strips MRPC's BOM
        return [line.rstrip("\n").split("\t") for line in f]


def _read_glue_split(task: GlueTask, path: Path) -> Split:
    if not path.is_file():
        raise UserError(
            f"task data: {path} does not exist. A local GLUE folder needs the standard layout "
            f"({task.folder}/train.tsv and {task.folder}/{task.dev_file}); set `task.glue_dir` (or ${GLUE_DIR_ENV}) "
            f"to the folder that contains {task.folder}/, or set `task.source: hub`."
        )
    rows = _read_tsv(path)
    rows = [r for r in rows if r != [""]]
    if task.has_header:
        header, rows = rows[0], rows[1:]
        try:
            text_idx = [header.index(c) for c in task.text_columns]
            label_idx = header.index(task.label_column)
        except ValueError:
            raise UserError(
                f"task data: {path} line 1: expected the GLUE {task.folder} header with columns "
                f"{list(task.text_columns) + [task.label_column]}, found {header}. Is this the right task's file?"
            ) from None
        first_line = 2
    else:
        text_idx, label_idx, first_line = list(task.text_columns), task.label_column, 1
    texts, labels = [], []
    need = max(text_idx + [label_idx]) + 1
    for n, r in enumerate(rows, start=first_line):
        if len(r) < need:
            raise UserError(f"task data: {path} line {n}: expected at least {need} tab-separated columns, found {len(r)}. Read GLUE files as plain TSV with no quote handling; is the file truncated or edited?")
        raw = r[label_idx].strip()
        try:
            lab = float(raw) if task.is_regression else task.labels.index(raw)
        except ValueError:
            want = "a number" if task.is_regression else f"one of {list(task.labels)}"
            raise UserError(f"task data: {path} line {n}: label {raw!r} is not {want}.") from None
        texts.append(tuple(r[i].strip() for i in text_idx))
        labels.append(lab)
    return Split(texts, labels)


def load_glue(name: str, source: str = "auto", glue_dir: str | None = None) -> TaskData:
    """A GLUE task from a local folder in the standard layout, or from the hub via ``datasets``."""
    task = GLUE_TASKS[name]
    local = find_glue_dir(glue_dir)
    if source == "local" or (source == "auto" and local is not None):
        if local is None:
            raise UserError(f"task: `source: local` needs `task.glue_dir` or ${GLUE_DIR_ENV} to name the GLUE folder.")
        if not local.is_dir():
            raise UserError(f"task.glue_dir: the folder {local} does not exist; point it at the folder that holds {task.folder}/.")
        tr, dv = local / task.folder / "train.tsv", local / task.folder / task.dev_file
        return TaskData(
            name, _read_glue_split(task, tr), _read_glue_split(task, dv), task.num_labels, task.metric, task.is_regression,
            list(task.labels) if task.labels else None, {"train": str(tr), "dev": str(dv)},
        )
    return _load_glue_hub(task)


def _load_glue_hub(task: GlueTask) -> TaskData:
    try:
        import datasets

        ds = datasets.load_dataset("nyu-mll/glue", task.name)
    except Exception as exc:  # offline, or the hub refused
        raise UserError(
            f"task: GLUE {task.name} was requested from the Hugging Face hub and could not be loaded "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}). Without a hub, set `task.glue_dir` "
            f"(or ${GLUE_DIR_ENV}) to a local GLUE folder in the standard layout."
        ) from None
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
        task.name, conv(ds["train"]), conv(ds[task.hf_dev_split]), task.num_labels, task.metric, task.is_regression,
        list(task.labels) if task.labels else None, {"train": f"hub:nyu-mll/glue/{task.name}", "dev": f"hub:nyu-mll/glue/{task.name}"},
    )


# ---------------------------------------------------------------------------- user files


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
                    raise UserError(f"task data: {path} line {n}: not valid JSON ({exc.msg}); a .jsonl file holds one JSON object per line.") from None
                if not isinstance(rec, dict):
                    raise UserError(f"task data: {path} line {n}: expected a JSON object per line, found {type(rec).__name__}.")
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
                raise UserError(f"task data: {path} line {n}: {len(r)} columns but the header has {len(header)} ({header}); fix the row or quote fields containing the delimiter.")
            out.append((n, dict(zip(header, r))))
        return out
    raise UserError(f"task data: {path}: unknown file type {suffix!r}; use .csv, .tsv or .jsonl.")


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
    splits = {}
    recs = {}
    for split, f in (("train", train_file), ("dev", dev_file)):
        p = Path(f)
        if not p.is_file():
            raise UserError(f"task.{split}_file: {p} does not exist; give the path of your {split} file (relative paths are resolved against the pipeline file's folder).")
        recs[split] = (p, _read_records(p))
        if not recs[split][1]:
            raise UserError(f"task.{split}_file: {p} has no examples.")
        n0, first = recs[split][1][0]
        missing = [c for c in list(text_columns) + [label_column] if c not in first]
        if missing:
            raise UserError(f"task.text_columns/label_column: {p} line {n0} has no column(s) {missing}; its columns are {list(first)}. Set task.text_columns and task.label_column to names that exist.")
    regression = problem == "regression"
    if not regression and labels is None:
        labels = sorted({str(r[label_column]).strip() for _, r in recs["train"][1]})
    for split, (p, rows) in recs.items():
        texts, ys = [], []
        for n, r in rows:
            for c in list(text_columns) + [label_column]:
                if c not in r:
                    raise UserError(f"task data: {p} line {n}: column {c!r} is missing.")
            raw = str(r[label_column]).strip()
            if regression:
                try:
                    ys.append(float(raw))
                except ValueError:
                    raise UserError(f"task data: {p} line {n}: label {raw!r} is not a number, but task.problem is regression.") from None
            else:
                if raw not in labels:
                    raise UserError(f"task data: {p} line {n}: label {raw!r} is not one of the known labels {labels} (taken from task.labels or the training file).")
                ys.append(labels.index(raw))
            texts.append(tuple(str(r[c]) for c in text_columns))
        splits[split] = Split(texts, ys)
    if metric is None:
        metric = "pearson" if regression else ("f1" if len(labels) == 2 else "accuracy")
    return TaskData(
        name, splits["train"], splits["dev"], 1 if regression else len(labels), metric, regression,
        None if regression else list(labels), {"train": str(train_file), "dev": str(dev_file)},
    )


# ---------------------------------------------------------------------------- metrics

METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")


def compute_metrics(task: TaskData, preds, labels) -> dict[str, float]:
    """All metrics that apply to the task; ``preds`` are class ids or regression values.

    The task's main metric is also returned under ``"main"``. Scores are in [0, 100]
    (correlations in [-100, 100]), as GLUE reports them."""
    import numpy as np

    preds = np.asarray(preds)
    labels = np.asarray(labels)
    out: dict[str, float] = {}
    if task.is_regression:
        from scipy.stats import pearsonr, spearmanr

        if np.std(preds) == 0 or np.std(labels) == 0:
            out["pearson"] = out["spearman"] = 0.0
        else:
            out["pearson"] = 100.0 * float(pearsonr(preds, labels)[0])
            out["spearman"] = 100.0 * float(spearmanr(preds, labels)[0])
    else:
        from sklearn.metrics import f1_score, matthews_corrcoef

        out["accuracy"] = 100.0 * float((preds == labels).mean())
        if task.num_labels == 2:
            out["f1"] = 100.0 * float(f1_score(labels, preds, zero_division=0))
        else:
            out["f1_macro"] = 100.0 * float(f1_score(labels, preds, average="macro", zero_division=0))
        out["mcc"] = 100.0 * float(matthews_corrcoef(labels, preds))
    out["main"] = out[task.metric]
    return out
