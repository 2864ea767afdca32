"""``compresstune search``: the most accurate deployable model under a latency and/or size budget.

spec.py (the ``search:`` section) -> candidates.py (space point -> ordinary pipeline) -> latency.py
(measured latency table) -> halving.py (successive halving over cached runs) -> run.py -> report.py."""

from .run import run_search, search_dir_for

__all__ = ["run_search", "search_dir_for"]
