"""Pipeline stages, one file per stage type (finetune, compress, attach, merge, export,
benchmark, ship, report); base.py defines what a stage is and what it is handed, inputs.py how
stages load the model they read."""

from . import attach, benchmark, compress, export, finetune, merge, report, ship  # noqa: F401  (registration)
from .base import STAGES, Stage, StageContext, register  # noqa: F401
