"""Running one job's command: spawn, stream output, enforce time limits.

The command runs in a new session, so its process group contains it and its
children.  stdin is /dev/null; the environment is built from scratch, so
nothing of the worker's own environment (``NOTIFY_SOCKET``, ``WATCHDOG_*``,
credentials) reaches the job.  stdout and stderr are read as they arrive and
only their last ``limit`` bytes are kept, so memory stays flat whatever the
job prints.  Stopping a job sends SIGTERM to its whole group, then SIGKILL
after the grace period.  When the main process exits, whatever it left
running in its group is killed too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import math
import os
import select
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Read size for job output pipes.
CHUNK = 65536
# How long to wait for the pipes to close once the main process exited.
DRAIN_S = 0.2
# How long to reap processes killed with the job's group after it exited.
STRAGGLER_REAP_S = 0.1
_PR_SET_CHILD_SUBREAPER = 36
# Data, EOF (POLLHUP) or an error all mean: read now, it will not block.
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR
# A directory descriptor that needs no read permission on the directory.
_DIRECTORY_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
# Python ignores these; a job's process starts with their default action.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class SpawnError(Exception):
    """The command could not be started; retrying cannot help."""


class Tail:
    """The last ``limit`` bytes of a stream, and how many bytes it had."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._buffer = bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        if self.limit == 0:
            return
        self._buffer += data
        if len(self._buffer) > 2 * self.limit:
            del self._buffer[: -self.limit]

    def text(self) -> str:
        """Return the tail as text; undecodable bytes become U+FFFD."""
        kept = bytes(self._buffer[-self.limit :]) if self.limit else b""
        text = kept.decode("utf-8", "replace")
        omitted = self.total - len(kept)
        if omitted > 0:
            text = f"[{omitted} earlier bytes omitted]\n" + text
        return text

    def last_line(self) -> str:
        kept = bytes(self._buffer[-4096:]).decode("utf-8", "replace")
        lines = [line.strip() for line in kept.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def become_subreaper() -> None:
    """Adopt orphaned descendants of jobs, so the worker can reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def reap_orphans(wait_s: float = 0.0) -> None:
    """Reap adopted descendants that exited; call only while no job runs.

    With ``wait_s``, keep reaping for up to that long while children remain,
    so processes that were just sent SIGKILL are reaped as they die.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.001)


def keep_fds_from_jobs() -> None:
    """Mark every inherited descriptor above stderr close-on-exec.

    Descriptors Python opens are close-on-exec already, so after this call a
    job's process starts with only its stdin, stdout and stderr.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        # The listing's own descriptor is closed by now, hence the suppress.
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


@dataclass
class Child:
    """A started command: its pid and the read ends of its output pipes."""

    pid: int
    stdout: int
    stderr: int

    def wait(self) -> int:
        """Wait for the exit; return the code, or minus the signal number."""
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)

    def exited(self) -> bool:
        """Return whether the process has exited, leaving it to ``wait``."""
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, self.pid, flags) is not None


def spawn(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Child:
    """Start ``argv`` in ``cwd``; raise ``SpawnError`` naming the cause if it cannot start.

    ``posix_spawn`` costs the worker about half the CPU time of
    ``subprocess.Popen``.  It cannot change directory in the child, so the
    worker enters ``cwd`` for the call and returns to its own directory.
    """
    home = os.open(".", _DIRECTORY_FLAGS)
    try:
        _enter(cwd)
        program = _executable(argv[0], env.get("PATH", os.defpath))
        return _start(program, argv, env)
    finally:
        os.fchdir(home)
        os.close(home)


def _enter(cwd: str) -> None:
    try:
        os.chdir(cwd)
    except FileNotFoundError:
        raise SpawnError(f"working directory not found: {cwd}") from None
    except NotADirectoryError:
        raise SpawnError(f"working directory is not a directory: {cwd}") from None
    except PermissionError:
        raise SpawnError(f"working directory not accessible: {cwd}") from None
    except OSError as error:
        raise SpawnError(f"cannot enter working directory {cwd}: {error.strerror}") from None


def _executable(program: str, path: str) -> str:
    """Find ``program`` the way ``execvp`` would, searching ``path``."""
    if "/" in program:
        return program
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder or ".", program)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    for folder in path.split(os.pathsep):
        if os.path.isfile(os.path.join(folder or ".", program)):
            raise SpawnError(f"command not executable: {program}")
    raise SpawnError(f"command not found: {program}")


def _start(program: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
    out_read, out_write = _pipe()
    err_read, err_write = _pipe()
    try:
        pid = os.posix_spawn(
            program,
            list(argv),
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_write, 1),
                (os.POSIX_SPAWN_DUP2, err_write, 2),
            ],
            setsid=True,
            setsigmask=(),
            setsigdef=_RESET_SIGNALS,
        )
    except OSError as error:
        os.close(out_read)
        os.close(err_read)
        if error.errno == errno.ENOENT:
            raise SpawnError(f"command not found: {argv[0]}") from None
        if error.errno == errno.EACCES:
            raise SpawnError(f"command not executable: {argv[0]}") from None
        raise SpawnError(f"cannot run {argv[0]}: {error.strerror}") from None
    finally:
        os.close(out_write)
        os.close(err_write)
    return Child(pid, out_read, err_read)


def _pipe() -> tuple[int, int]:
    """Return a close-on-exec pipe whose ends are above stderr.

    Were an end 1 or 2 (the worker started with those closed), duplicating
    it onto the child's stdout or stderr would keep its close-on-exec flag.
    """
    ends = os.pipe()
    if min(ends) > 2:
        return ends
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in ends)
    for fd in ends:
        os.close(fd)
    return moved[0], moved[1]


@dataclass
class Exit:
    """The exit status and run time of the main process."""

    exit_code: int | None
    signal: int | None
    duration_s: float


class Running:
    """A started job: reads its output and reports when it exits.

    One ``poll`` set watches both pipes, a pidfd of the main process (where
    the kernel has pidfds) and the signal wake-up pipe.  The pipes stay in
    blocking mode: they are read only after ``poll`` reported data or EOF,
    when a read cannot block.
    """

    def __init__(self, child: Child, limit: int, wakeup_fd: int | None) -> None:
        self.child = child
        self.started = time.monotonic()
        self.stdout = Tail(limit)
        self.stderr = Tail(limit)
        self.exit: Exit | None = None
        self._tails = {child.stdout: self.stdout, child.stderr: self.stderr}
        self._poll = select.poll()
        for fd in self._tails:
            self._poll.register(fd, _READABLE)
        self._pidfd = _pidfd_open(child.pid)
        if self._pidfd is not None:
            self._poll.register(self._pidfd, _READABLE)
        self._wakeup_fd = wakeup_fd
        if wakeup_fd is not None:
            self._poll.register(wakeup_fd, _READABLE)
        self.term_sent_at: float | None = None
        self.kill_sent = False

    def pump(self, until: float) -> bool:
        """Read output until monotonic time ``until``, the exit, or a signal.

        Returns True when the main process has exited (``self.exit`` set).
        """
        while self.exit is None:
            # Poll at least once, even when ``until`` has passed, so a caller
            # that was held up elsewhere still reads the exit and the output.
            timeout = max(0.0, until - time.monotonic())
            if self._pidfd is None:
                timeout = min(timeout, 0.05)
            interrupted = exited = False
            for fd, _ in self._poll.poll(math.ceil(timeout * 1000)):
                if fd == self._pidfd:
                    exited = True
                elif fd == self._wakeup_fd:
                    interrupted = True
                else:
                    self._read(fd)
            if exited or (self._pidfd is None and self.child.exited()):
                self._on_exit()
            if interrupted or time.monotonic() >= until:
                break
        return self.exit is not None

    def _read(self, fd: int) -> None:
        data = os.read(fd, CHUNK)
        if data:
            self._tails[fd].add(data)
        else:
            self._poll.unregister(fd)
            del self._tails[fd]

    def _on_exit(self) -> None:
        # The main process is a zombie until waited for, so its pid, which
        # is also the group id, cannot be reused before the group is killed.
        stragglers = self.signal_group(signal.SIGKILL)
        returncode = self.child.wait()
        duration = time.monotonic() - self.started
        if stragglers:
            # Processes the job left in its group now die as our adopted children.
            reap_orphans(STRAGGLER_REAP_S)
        self._drain()
        self._close()
        if returncode < 0:
            self.exit = Exit(None, -returncode, duration)
        else:
            self.exit = Exit(returncode, None, duration)

    def _drain(self) -> None:
        """Read what the pipes still hold; stop when they close or after DRAIN_S."""
        deadline = time.monotonic() + DRAIN_S
        if self._pidfd is not None:
            self._poll.unregister(self._pidfd)
        if self._wakeup_fd is not None:
            self._poll.unregister(self._wakeup_fd)
        while self._tails:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for fd, _ in self._poll.poll(math.ceil(remaining * 1000)):
                self._read(fd)

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        for fd in (self.child.stdout, self.child.stderr):
            os.close(fd)

    def signal_group(self, signum: int) -> bool:
        """Signal the job's process group; return False if no member was left."""
        try:
            os.killpg(self.child.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def terminate(self) -> None:
        """Send SIGTERM to the group once; ``escalate`` sends SIGKILL later."""
        if self.term_sent_at is None:
            self.term_sent_at = time.monotonic()
            self.signal_group(signal.SIGTERM)

    def kill_due(self, grace_s: float) -> float | None:
        """Return when ``escalate`` will send SIGKILL, or None if it will not."""
        if self.term_sent_at is None or self.kill_sent:
            return None
        return self.term_sent_at + grace_s

    def escalate(self, grace_s: float) -> None:
        """Send SIGKILL if SIGTERM was sent ``grace_s`` ago or longer."""
        if self.term_sent_at is None or self.kill_sent:
            return
        if time.monotonic() - self.term_sent_at >= grace_s:
            self.kill_sent = True
            self.signal_group(signal.SIGKILL)

    def kill_now(self) -> None:
        self.kill_sent = True
        self.signal_group(signal.SIGKILL)


def _pidfd_open(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError as error:
        if error.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return None
        raise
