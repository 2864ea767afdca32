"""Markdown tables for the reports (REPORT.md, bench results)."""

from __future__ import annotations

from collections.abc import Iterable


def md_row(cells: Iterable) -> str:
    """One table line, ``| a | b |``; an empty cell is written ``| |``."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def md_table(headers: Iterable, rows: Iterable[Iterable]) -> str:
    """A markdown table: the header line, the ``|---|`` line, one line per row (no trailing newline)."""
    headers = list(headers)
    lines = [md_row(headers), "|" + "---|" * len(headers)]
    lines += [md_row(r) for r in rows]
    return "\n".join(lines)
