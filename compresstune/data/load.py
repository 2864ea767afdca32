"""The pipeline's task data from its task settings: a GLUE task or the user's files, with the
configured fixed subsets (the same as the stages read, so the preflight check can hand its
reading to the run)."""

from __future__ import annotations

from ..errors import UserError
from .files import load_user_files
from .glue import load_glue
from .task import TaskData


def load_task(t, seed: int) -> TaskData:
    """``t``: the task settings (config TaskConfig); subsets are seeded by the pipeline ``seed``. With
    ``task.holdout`` the dev split is that many training examples held out (before ``train_subset``)."""
    if t.name == "custom":
        data = load_user_files(t.train_file, t.dev_file, t.text_columns, t.label_column, t.problem, t.metric, t.labels)
    else:
        data = load_glue(t.name, t.source, t.glue_dir)
    if getattr(t, "holdout", None):
        if t.holdout >= len(data.train):
            raise UserError(
                f"task.holdout: {t.holdout} held-out examples leave nothing to train on ({t.name} has "
                f"{len(data.train)} training examples); give a smaller number (about the dev set's size, "
                f"{len(data.dev)}, is usual)."
            )
        data.train, data.dev = data.train.split_off(t.holdout, seed)  # the dev set is not used
        data.holdout = t.holdout
    data.train = data.train.subset(t.train_subset, seed)
    data.dev = data.dev.subset(t.dev_subset, seed)
    return data
