"""Printing tables, records and JSON for the CLI."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print left-aligned columns; the last column is never padded."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, cell in enumerate(row[:-1]):
            widths[index] = max(widths[index], len(cell))
    for row in [list(headers), *cells]:
        padded = [cell.ljust(widths[index]) for index, cell in enumerate(row[:-1])]
        print("  ".join([*padded, row[-1]]).rstrip())


def format_ms(value: Any) -> str:
    """Format milliseconds since the epoch as local RFC 3339 time."""
    if not isinstance(value, (int, float)):
        return "-"
    moment = datetime.fromtimestamp(value / 1000, tz=timezone.utc).astimezone()
    return moment.isoformat(timespec="milliseconds")


def ago(value_ms: Any, now_ms: float | None = None) -> str:
    if not isinstance(value_ms, (int, float)):
        return "-"
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    return f"{max(0.0, (now_ms - value_ms) / 1000):.1f} s ago"


def short_command(command: Any, width: int = 60) -> str:
    if not isinstance(command, list):
        return "-"
    text = shlex.join(str(part) for part in command)
    return text if len(text) <= width else text[: width - 3] + "..."


def describe_exit(record: Mapping[str, Any]) -> str:
    if record.get("signal") is not None:
        return f"signal {record['signal']}"
    if record.get("exit_code") is not None:
        return f"exit {record['exit_code']}"
    return "-"
