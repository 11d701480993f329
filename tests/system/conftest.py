"""System tests: the built .deb in a booted Debian 12 container.

`make test-system` builds the packages and the cached root, then runs these
tests with the variables below set.  Without QUEUECTL_SYSTEM_TEST=1 nothing
here is collected, so plain `pytest` (and `make test`) skips the folder.

QUEUECTL_SYSTEST_ROOT      the cached root made by tests/system/build-root
QUEUECTL_SYSTEST_DEBS      folder holding both packages below
QUEUECTL_SYSTEST_DEB       file name of the package under test
QUEUECTL_SYSTEST_NEXT_DEB  file name of a newer build of it, for the upgrade
QUEUECTL_SYSTEST_WORK      scratch folder for the containers' overlays
QUEUECTL_SYSTEST_REPORT    file the measured values are written to (optional)
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ENABLED = os.environ.get("QUEUECTL_SYSTEM_TEST") == "1"
if not ENABLED:
    collect_ignore_glob = ["test_*.py"]

sys.path.insert(0, str(Path(__file__).parent))

from machine import Machine  # noqa: E402
from session import Measurements, Settings  # noqa: E402

_names = itertools.count(1)
_measurements = Measurements()


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set; run the system tests with `make test-system`", 2)
    return value


@pytest.fixture(scope="session")
def settings() -> Settings:
    work = Path(_required("QUEUECTL_SYSTEST_WORK"))
    work.mkdir(parents=True, exist_ok=True)
    return Settings(
        root=Path(_required("QUEUECTL_SYSTEST_ROOT")),
        debs=Path(_required("QUEUECTL_SYSTEST_DEBS")),
        deb=_required("QUEUECTL_SYSTEST_DEB"),
        next_deb=_required("QUEUECTL_SYSTEST_NEXT_DEB"),
        work=work,
    )


@pytest.fixture
def measurements() -> Measurements:
    return _measurements


@pytest.fixture
def bare_machine(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A freshly booted container without queuectl installed."""
    number = next(_names)
    folder = settings.work / f"{number:02d}-{request.node.name}"[:60]
    machine = Machine(settings.root, folder, f"systest{os.getpid()}-{number}", settings.debs)
    try:
        yield machine
    finally:
        try:
            # Kept beside the console logs after the overlay is gone, to debug failures.
            journal = machine.run("journalctl", "--boot", "--no-pager", check=False, timeout=60)
            (folder / "journal.txt").write_text(journal.stdout + journal.stderr)
        finally:
            machine.stop()


@pytest.fixture
def machine(bare_machine: Machine, settings: Settings) -> Machine:
    """A freshly booted container with the package installed and its daemons up."""
    bare_machine.install_package(settings.deb)
    bare_machine.wait_active("queuectl-scheduler.service")
    bare_machine.wait_active("queuectl-reaper.timer")
    return bare_machine


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ENABLED or not _measurements.lines:
        return
    lines = _measurements.lines
    terminalreporter.section("measured values")
    for line in lines:
        terminalreporter.write_line(line)
    report = os.environ.get("QUEUECTL_SYSTEST_REPORT")
    if report:
        Path(report).write_text("\n".join(lines) + "\n")
