"""Processes of one benchmark run: private redis-servers, worker groups, /proc readings.

Every process the benchmark starts is registered in a ``Processes`` list and
runs as the leader of its own process group.  So the benchmark can pause,
resume and stop a worker together with the children it forked (a Celery
pool, Dramatiq's worker processes) by that group's id.  Signals go only to
ids of processes this run started, never to processes found by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis

Value = TypeVar("Value")
# How long a worker gets to stop after SIGTERM before its group gets SIGKILL.
STOP_GRACE_S = 10.0
# The port that a system-wide redis-server uses; the benchmark never touches it.
SYSTEM_REDIS_PORT = 6379
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A step of the benchmark failed; the message names the step and the cause."""


def wait_until(
    read: Callable[[], Value],
    done: Callable[[Value], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.01,
    description: str,
) -> Value:
    """Call ``read`` every ``interval_s`` until ``done`` accepts its value.

    Raises ``BenchError`` naming ``description`` after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise BenchError(
                f"timed out after {timeout_s:g} s waiting for {description}; last: {value}"
            )
        time.sleep(interval_s)


class Processes:
    """Every process group this run started, so all of them can be stopped at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as the leader of a new process group, output to ``log``."""
        with log.open("ab") as stream:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
        """Stop ``process`` with SIGTERM, then its whole group with SIGKILL.

        A paused group is resumed first, so the SIGTERM can be handled.
        """
        if process.poll() is None:
            signal_group(process.pid, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace_s)
        # Children that outlived their leader (a Celery pool process) share its group id.
        signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
        if process in self.started:
            self.started.remove(process)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """Send SIGKILL to the leader alone, as a crash would, and reap it."""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=STOP_GRACE_S)
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.started)):
            self.stop(process, grace_s=3.0)


def signal_group(pgid: int, signum: int) -> None:
    """Signal the process group ``pgid`` if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1, never the system Redis port."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port != SYSTEM_REDIS_PORT:
            return port
    raise BenchError("found no free TCP port on 127.0.0.1")


@dataclass
class RedisServer:
    """A private redis-server on 127.0.0.1 with persistence off, for one measurement."""

    process: subprocess.Popen[bytes]
    port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=60)

    def cpu_s(self) -> float:
        """Return the server's CPU time so far (user plus system), in seconds."""
        info = self.client().info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])


def start_redis(processes: Processes, folder: Path) -> RedisServer:
    """Start a redis-server on a free loopback port; raise ``BenchError`` if it fails."""
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server is not installed; `make bench` installs it")
    folder.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(3):
        port = free_port()
        process = processes.start(
            [
                server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
            ],
            log=folder / f"redis-{port}.log",
        )
        instance = RedisServer(process, port, folder)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                instance.client().ping()
                return instance
            except redis.ConnectionError as error:
                last_error = str(error)
                time.sleep(0.02)
        processes.stop(process)
        last_error = f"exited with {process.returncode}" if process.returncode else last_error
    raise BenchError(f"redis-server did not start on 127.0.0.1: {last_error}")


# --- /proc readings ----------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name, which may itself contain spaces.
    return text.rsplit(")", 1)[1].split()


def group_members(pgid: int) -> list[int]:
    """Return the ids of live processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # After the name: state, ppid, pgrp, ...
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS (resident now) and VmHWM (peak resident) of ``pid``, in KiB."""
    values = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def group_memory_kib(pgid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM summed over the live processes of group ``pgid``."""
    total = {"VmRSS": 0, "VmHWM": 0}
    for pid in group_members(pgid):
        for name, kib in memory_kib(pid).items():
            total[name] += kib
    return total


def group_cpu_s(pgid: int) -> tuple[float, float]:
    """Return CPU seconds of group ``pgid``: its live processes, and the children they reaped.

    Both figures are user plus system time.  The second covers the children
    that the members waited for, such as a worker's ``true`` processes, or
    RQ's work horses together with their ``true`` processes.
    """
    own = children = 0
    for pid in group_members(pgid):
        fields = _stat_fields(pid)
        if fields is not None:
            own += int(fields[11]) + int(fields[12])
            children += int(fields[13]) + int(fields[14])
    return own / CLOCK_TICKS, children / CLOCK_TICKS


def machine_busy_s() -> float:
    """Return CPU seconds all cores spent on work since boot.

    That is user, nice, system, irq and softirq time from /proc/stat: idle
    and iowait are left out, and so is steal, which is time the hypervisor
    gave to other machines.
    """
    with open("/proc/stat") as stream:
        fields = stream.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS
