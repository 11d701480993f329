"""Settings and measurements that the system tests' fixtures hand to the tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Settings:
    """The run's inputs, from the variables that tests/system/conftest.py lists."""

    root: Path
    debs: Path
    deb: str
    next_deb: str
    work: Path


@dataclass
class Measurements:
    """Values measured by the tests, printed and written at the end of the run."""

    lines: list[str] = field(default_factory=list)

    def add(self, label: str, seconds: float) -> None:
        """Record a duration measured with a monotonic clock."""
        self._add(f"{label}: {seconds:.2f} s")

    def add_score(self, label: str, score: float) -> None:
        """Record a `systemd-analyze security` exposure score."""
        self._add(f"{label}: exposure {score:.1f}")

    def _add(self, line: str) -> None:
        self.lines.append(line)
        print(f"measured: {line}")
