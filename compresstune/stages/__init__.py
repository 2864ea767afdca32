"""Stage implementations, registered by type name."""

from .base import STAGES, Stage, StageContext, register  # noqa: F401
from . import benchmark, compress, export, finetune, learners, report  # noqa: F401,E402  (registration)
