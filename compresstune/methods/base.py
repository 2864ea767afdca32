"""What a fine-tuning method is, and the registry that holds them.

A method is one module under ``methods/`` (PEFT's one-folder-per-tuner idea) defining a
:class:`Method` subclass and registering it with :func:`register`. The class declares:

* ``Options``: its own settings (a pydantic model). They are flat keys of the ``finetune``
  section (``finetune: {method: learner, rank: 64}``), and exactly they enter the stage's
  fingerprint when the method is chosen (a field marked ``fingerprint: False`` does not);
* :meth:`Method.prepare`: what trains, and when (a phase hook: Learner priming), and what
  it adds to the model (recorded in the artifact as ``structure``);
* :meth:`Method.reapply`: rebuilding that structure when an artifact is reloaded;
* :meth:`Method.merge`: folding it into the base weights (``merges = True``), or saying why not;
* ``default_lr`` and :meth:`Method.parse_label` for ``compresstune bench finetune``.

Config validation, the CLI, ``inspect params``, ``bench finetune`` and the merge stage all read
the registry, so adding a method is one new file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch.nn as nn

from ..options import Section


class NoOptions(Section):
    """A method without settings of its own."""


@dataclass
class PrepareContext:
    """What :meth:`Method.prepare` may use besides the model: the task and how the stage trains.

    ``task``/``tokenizer``/``train_options`` are None when a model is prepared only to count
    or time it (``inspect params``, ``bench memory``)."""

    task: Any = None
    tokenizer: Any = None
    train_options: Any = None
    max_length: int = 128
    device: str = "cpu"
    scratch_dir: Path | None = None  # removed when the stage succeeds
    log: Callable[[str], None] = lambda s: None

    @property
    def counting_only(self) -> bool:
        return self.task is None


@dataclass
class MethodSetup:
    """What the training loop needs to run a method, and what the stage records."""

    phase_hook: Callable[[int, float], None] | None = None
    optimizer_params: list[nn.Parameter] | None = None  # default: what has requires_grad after prepare
    structure: dict = field(default_factory=dict)  # {structure_key: entry}, saved with the artifact to rebuild it
    model: nn.Module | None = None  # the module to train when it is not the one passed in
    summary: dict = field(default_factory=dict)  # extra figures for the stage summary
    extra_train_time_s: float = 0.0  # training done inside prepare (FAR's priming run) that counts as the method's cost


class Method:
    """Base class; subclasses set the class attributes and override what they need."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for --help and the README table
    Options: ClassVar[type[Section]] = NoOptions
    structure_key: ClassVar[str | None] = None  # the key it records in an artifact's structure
    merges: ClassVar[bool] = False  # the merge stage folds it into the base weights
    default_lr: ClassVar[float] = 1e-4
    continues: ClassVar[tuple[str, ...]] = ()  # structures an input model may already carry (e.g. attached Learners)

    def prepare(self, model: nn.Module, opts: Section, ctx: PrepareContext) -> MethodSetup:
        """Configure ``model`` in place: set ``requires_grad``, add modules; return the setup."""
        raise NotImplementedError

    def after_training(self, model: nn.Module) -> None:
        """Undo training-only changes before the model is saved (FAR unsplits its FFNs)."""

    def reapply(self, model: nn.Module, entry: dict) -> nn.Module:
        """Rebuild this method's structure on a freshly built model; return the module whose
        state_dict matches the artifact."""
        raise NotImplementedError(f"method {self.name} records no structure")

    def merge(self, model: nn.Module, entry: dict) -> tuple[nn.Module, str, bool]:
        """(model, what was done, whether the structure is still there afterwards)."""
        return model, f"{self.name}: nothing to merge", False

    def parse_label(self, label: str) -> dict | None:
        """Settings for a ``bench finetune`` label such as ``learner64-p2``; None if not this method's."""
        return {} if label == self.name else None

    def label_help(self) -> str:
        return self.name

    def options(self, source: Any = None, **override) -> Section:
        """This method's options, read from a stage config (or any object with the attributes)."""
        data = {k: getattr(source, k) for k in self.Options.model_fields if source is not None and hasattr(source, k)}
        return self.Options.model_validate({**data, **override})


_REGISTRY: dict[str, Method] = {}
_version = [0]


def register(cls_or_instance):
    """Register a :class:`Method` subclass (instantiated with no arguments) or an instance."""
    inst = cls_or_instance() if isinstance(cls_or_instance, type) else cls_or_instance
    if not inst.name or not re.fullmatch(r"[a-z][a-z0-9_]*", inst.name):
        raise ValueError(f"method name {inst.name!r}: use lower-case letters, digits and '_'")
    _REGISTRY[inst.name] = inst
    _version[0] += 1
    return cls_or_instance


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    if _REGISTRY.pop(name, None) is not None:
        _version[0] += 1


def all_methods() -> dict[str, Method]:
    return dict(_REGISTRY)


def registry_version() -> int:
    """Changes whenever a method is (un)registered: the finetune config schema is rebuilt then."""
    return _version[0]


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown fine-tuning method {name!r}; known: {', '.join(_REGISTRY)}") from None


def method_for_structure(key: str) -> Method:
    for m in _REGISTRY.values():
        if m.structure_key == key:
            return m
    raise KeyError(f"no registered method records the structure {key!r}")
