"""Logging setup shared by the daemons and the CLI.

Under journald (``JOURNAL_STREAM`` names our stderr) each line starts with
a syslog priority prefix such as ``<6>`` and carries no timestamp, since the
journal adds its own.  Elsewhere lines carry a timestamp.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITIES = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority so journald can read it."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def under_journald() -> bool:
    """Return True when stderr is the journal stream systemd gave us."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not device or not inode:
        return False
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{status.st_dev}:{status.st_ino}" == stream


def setup(level: str = "info", *, program: str = "queuectl") -> None:
    """Send log records of every queuectl logger to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        # The journal names the unit; a module name would only look like one.
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s {program}[%(process)d] %(levelname)s %(name)s: %(message)s"
            )
        )
    root = logging.getLogger("queuectld")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def set_level(level: str) -> None:
    logging.getLogger("queuectld").setLevel(level.upper())
