"""Task data held in memory: :class:`TaskData` with a train and a dev :class:`Split`.

Texts are tuples (one or two columns), labels ints (classification) or floats
(regression); the task names its main metric."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Split:
    texts: list[tuple[str, ...]]  # one tuple per example: (sentence,) or (sentence1, sentence2)
    labels: list  # int class ids, or floats for regression

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self) -> list:
        """The texts as a tokenizer (and the deploy Predictor) takes them: a string, or a (first, second) pair."""
        return [t[0] if len(t) == 1 else tuple(t) for t in self.texts]

    def subset(self, n: int | None, seed: int) -> Split:
        """A fixed random subset of ``n`` examples (all when ``n`` is None or too big)."""
        if not n or n >= len(self):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx])

    def split_off(self, n: int, seed: int) -> tuple[Split, Split]:
        """(the rest, a fixed random slice of ``n`` examples): disjoint, together the whole split."""
        held = set(random.Random(seed).sample(range(len(self)), n))
        rest = [i for i in range(len(self)) if i not in held]
        pick = sorted(held)
        return (
            Split([self.texts[i] for i in rest], [self.labels[i] for i in rest]),
            Split([self.texts[i] for i in pick], [self.labels[i] for i in pick]),
        )


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
    holdout: int | None = None  # the "dev" split is this many held-out training examples (task.holdout)

    @property
    def problem_type(self) -> str:
        return "regression" if self.is_regression else "single_label_classification"
