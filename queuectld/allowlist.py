"""The command allowlist (``security.allowed_commands``).

When the list is not empty, a job's program must resolve to an absolute
path that equals one of its entries or matches one of its globs.  The CLI
checks at enqueue and the worker checks again, on its own host, before it
runs anything.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Sequence


def resolve(program: str, path: str, cwd: str) -> str | None:
    """Return the absolute path ``program`` runs as, or None if not found."""
    if "/" in program:
        return os.path.normpath(os.path.join(cwd, program))
    return shutil.which(program, path=path)


def rejection(program: str, patterns: Sequence[str], path: str, cwd: str) -> str | None:
    """Return why ``program`` is not allowed, or None if it is."""
    if not patterns:
        return None
    resolved = resolve(program, path, cwd)
    if resolved is None:
        return f"command not found: {program}"
    for pattern in patterns:
        if fnmatch.fnmatchcase(resolved, pattern):
            return None
    return (
        f"command not allowed: {resolved} matches no entry of security.allowed_commands; "
        "add it there to allow it"
    )
