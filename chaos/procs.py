"""Processes of the chaos run: starting, signalling, reaping, reading /proc.

The harness makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so a
job process whose worker was killed is re-parented to the harness rather
than to PID 1.  The harness then reaps it, and can count it.  Every process
the harness starts is registered under one lock, and the orphan reaper
holds that lock while it looks for zombies, so it never reaps a child that
a ``subprocess.Popen`` object is about to wait for.

The harness signals only processes it started or adopted, always by pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt the orphans of our descendants; return False if the kernel refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


@dataclass(frozen=True)
class ProcInfo:
    """One line of /proc/PID/stat, the fields the harness uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int


def read_proc(pid: int) -> ProcInfo | None:
    """Return the state of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain them.
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return ProcInfo(pid, comm, fields[0], int(fields[1]), int(fields[2]))


def all_procs() -> list[ProcInfo]:
    """Return every process visible in /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_proc(int(entry))
            if info is not None:
                found.append(info)
    return found


def descendants(root: int, procs: Iterable[ProcInfo] | None = None) -> list[ProcInfo]:
    """Return every process below ``root`` in the process tree."""
    children: dict[int, list[ProcInfo]] = {}
    for info in all_procs() if procs is None else procs:
        children.setdefault(info.ppid, []).append(info)
    found: list[ProcInfo] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child.pid)
    return found


def has_marker(pid: int, marker: bytes) -> bool:
    """Return True if ``marker`` (``NAME=VALUE``) is in the environment of ``pid``."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return marker in environ.split(b"\0")


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def send(pid: int, signum: int) -> bool:
    """Send ``signum`` to ``pid``; return False if it is already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def send_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to process group ``pgid``, never to our own group."""
    if pgid <= 1 or pgid == os.getpgrp():
        return False
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class ProcessTable:
    """Every process the harness started, and the count of orphans it reaped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mine: dict[int, subprocess.Popen[bytes]] = {}
        self.adopted_reaped = 0

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path | None = None,
        capture: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a session of its own, as systemd starts a unit.

        Output goes to ``log_path`` (appended), to pipes with ``capture``, or
        to /dev/null.
        """
        log = log_path.open("ab") if log_path is not None else None
        try:
            stdout: int | IO[bytes] = subprocess.DEVNULL
            stderr: int | IO[bytes] = subprocess.DEVNULL
            if capture:
                stdout = stderr = subprocess.PIPE
            elif log is not None:
                stdout, stderr = log, subprocess.STDOUT
            with self._lock:
                process = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    env=dict(env),
                    start_new_session=True,
                )
                self._mine[process.pid] = process
        finally:
            if log is not None:
                log.close()
        return process

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str], timeout_s: float
    ) -> tuple[int, str, str]:
        """Run ``argv`` to its end; return its exit code, stdout and stderr."""
        process = self.start(argv, env=env, capture=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            stderr += f"\n(killed after {timeout_s:g} s)".encode()
        self.forget(process)
        return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")

    def forget(self, process: subprocess.Popen[bytes]) -> None:
        """Drop a process that has been waited for."""
        with self._lock:
            self._mine.pop(process.pid, None)

    def stop_all(self, timeout_s: float) -> list[str]:
        """Stop every started process still running; return their command lines.

        It is a safety net for cleanup, which first stops the daemons one by one.
        """
        with self._lock:
            living = [p for p in self._mine.values() if p.poll() is None]
        stopped = []
        for process in living:
            stopped.append(f"pid {process.pid}: {command_line(process.pid)}")
            stop_process(process, timeout_s)
            self.forget(process)
        return stopped

    def reap_adopted(self) -> int:
        """Reap zombies re-parented to the harness that it did not start."""
        me = os.getpid()
        reaped = 0
        with self._lock:
            for info in all_procs():
                if info.ppid != me or info.state != "Z" or info.pid in self._mine:
                    continue
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(info.pid, 0)
                    reaped += 1
            self.adopted_reaped += reaped
        return reaped


def stop_process(
    process: subprocess.Popen[bytes], timeout_s: float, *, signalled: bool = False
) -> int | None:
    """Stop a process we started: SIGCONT, SIGTERM, then SIGKILL after ``timeout_s``.

    With ``signalled``, the caller already sent SIGTERM and this only waits.
    A second SIGTERM means "stop now" to queuectl's daemons, and one that
    arrives while Python shuts down kills the process with exit code -15.
    Returns the exit code (negative for a signal).
    """
    if process.poll() is not None:
        return process.returncode
    if not signalled:
        send(process.pid, signal.SIGCONT)
        send(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        send(process.pid, signal.SIGKILL)
        return process.wait()


def wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until no pid in ``pids`` is alive (zombies count as gone); return the living."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for pid in pids:
            info = read_proc(pid)
            if info is not None and info.state != "Z":
                alive.append(pid)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)
