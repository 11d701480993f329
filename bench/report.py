"""The result table: one row per measurement, with the target it is held to.

Targets are ratios to the bare loop or to the fastest peer from the same run,
percentiles, or absolute limits.  ``met`` is computed here, so the table
shows which targets hold in this run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIB = 1024


@dataclass
class Row:
    """One line of the table; ``value`` is None when the measurement failed."""

    section: str
    name: str
    value: float | None
    unit: str
    workers: int | None = None
    ratio: float | None = None
    cpu_ms: float | None = None
    target: str = ""
    met: bool | None = None


def percentile(values: Sequence[float], percent: float) -> float:
    """Return the nearest-rank percentile: the smallest value with ``percent`` % at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "failed"
    if unit in ("jobs/s", "B"):
        return f"{value:,.0f} {unit}"
    if unit == "x":
        return f"{value:.2f} x"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


HEADERS = ("section", "measurement", "workers", "value", "vs bare", "CPU/job", "target", "met")


def _cells(row: Row) -> tuple[str, ...]:
    met = ""
    if row.met is not None:
        met = "yes" if row.met else "NO"
    return (
        row.section,
        row.name,
        "" if row.workers is None else str(row.workers),
        format_value(row.value, row.unit),
        "" if row.ratio is None else f"{row.ratio:.2f}",
        "" if row.cpu_ms is None else f"{row.cpu_ms:.2f} ms",
        row.target,
        met,
    )


def text_table(rows: Sequence[Row]) -> str:
    """Return the rows as a plain-text table with aligned columns."""
    cells = [HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    right = {2, 3, 4, 5}
    lines = []
    for number, line in enumerate(cells):
        parts = [
            text.rjust(width) if i in right else text.ljust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in _cells(row)) + " |")
    return "\n".join(lines)


def missing(rows: Sequence[Row]) -> list[Row]:
    """Return the rows that produced no number."""
    return [row for row in rows if row.value is None]
