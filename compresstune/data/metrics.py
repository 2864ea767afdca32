"""GLUE metrics, scaled to [0, 100] as GLUE reports them."""

from __future__ import annotations

from .task import TaskData


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
