"""Test helpers: a private redis-server, one test's environment, sd_notify capture.

Test modules import these from here rather than from conftest.py, because
a second conftest.py in a subfolder would shadow the name ``conftest``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from queuectld import config as config_module
from queuectld.connection import close
from queuectld.jobs import validate
from queuectld.store import Store

BIN = Path(sys.executable).parent
SCHEMA_KEY = re.compile(
    r"^\{[^}]+\}:(jobs|output|seq|queues|queue:.+|notify:.+|scheduled|failed|processing|"
    r"completed|dead|cancelled|held|workers|worker_info|scheduler)$"
)


@dataclass
class RedisServer:
    socket: Path
    process: subprocess.Popen[bytes]
    folder: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket))


def start_redis(folder: Path, *extra: str) -> RedisServer:
    """Start redis-server on a unix socket in ``folder``; return once it responds."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed; run `make test`, which installs it")
    folder.mkdir(parents=True, exist_ok=True)
    socket = folder / "redis.sock"
    process = subprocess.Popen(
        [
            server,
            "--port",
            "0",
            "--unixsocket",
            str(socket),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not socket.exists():
            # redis-py 4.3 leaks the socket of a failed connect; avoid one.
            time.sleep(0.02)
            continue
        try:
            # No retries: redis-py 6 and later retry a rejected login for seconds.
            client = redis.Redis(unix_socket_path=str(socket), retry=Retry(NoBackoff(), 0))
            try:
                client.ping()
            finally:
                close(client)
            return RedisServer(socket, process, folder)
        except redis.AuthenticationError:
            # Started with --requirepass: the server is up and requires a password.
            return RedisServer(socket, process, folder)
        except redis.ConnectionError:
            time.sleep(0.02)
    process.kill()
    pytest.fail("redis-server did not answer within 10 s")


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    """Signal a process we started and wait for it; SIGKILL it if it lingers."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def vm_peak_kib(pid: int, field: str = "VmHWM") -> int:
    """Return a memory figure of ``pid`` in KiB: its peak resident size by default."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def process_state(pid: int) -> str | None:
    """Return the state letter of ``pid`` from /proc (``Z`` for a zombie), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()[0]


def stop_foreign_pid(pid: int, timeout_s: float = 10.0) -> None:
    """Stop a process we started that is not our child, such as a detached worker."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process_state(pid) in (None, "Z"):
                return
            time.sleep(0.02)


def wait_until(
    condition: Callable[[], Any],
    what: str | Callable[[], str],
    timeout_s: float = 15.0,
    interval_s: float = 0.02,
) -> Any:
    """Poll ``condition`` until it returns a true value and return that value.

    Raises AssertionError with ``what`` when ``timeout_s`` passes first.  A
    function given as ``what`` is called only then, so it can show the logs
    as they are at the time of the failure.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {text}")
        time.sleep(interval_s)


@dataclass
class Env:
    """One test's namespace, config file and the processes it started."""

    server: RedisServer
    namespace: str
    folder: Path
    config_path: Path
    settings: dict[str, dict[str, object]]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_paths: dict[int, Path] = field(default_factory=dict)
    stores: list[Store] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        """The ``worker.run_dir`` of detached workers."""
        return self.folder / "run"

    @property
    def pid_dir(self) -> Path:
        """Where test jobs write their pids; any still running are killed after the test."""
        folder = self.folder / "pids"
        folder.mkdir(exist_ok=True)
        return folder

    def write_config(self, **sections: dict[str, object]) -> None:
        """Merge ``sections`` into the config file."""
        for name, values in sections.items():
            self.settings.setdefault(name, {}).update(values)
        lines = []
        for name, values in self.settings.items():
            lines.append(f"[{name}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml(value)}")
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def config(self) -> config_module.Config:
        return config_module.load(str(self.config_path))

    def store(self) -> Store:
        """Return a library client; it is closed after the test."""
        store = Store(self.config)
        self.stores.append(store)
        return store

    def environ(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("QUEUECTL_", "NOTIFY_", "WATCHDOG_"))
        }
        env["QUEUECTL_CONFIG"] = str(self.config_path)
        return env

    def cli(
        self,
        *args: str,
        input: str | None = None,
        check: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``queuectl ARGS`` with this test's config, plus ``env`` variables."""
        return self.run("queuectl", *args, input=input, check=check, env=env)

    def run(
        self,
        program: str,
        *args: str,
        input: str | None = None,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a queuectl program to its end, such as one ``queuectl-reaper`` pass."""
        result = subprocess.run(
            [str(BIN / program), *args],
            capture_output=True,
            text=True,
            input=input,
            env={**self.environ(), **(env or {})},
            timeout=timeout_s,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{program} {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def spawn(
        self, program: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a daemon such as ``queuectl-worker``; it is stopped after the test."""
        log_path = self.folder / f"{program}-{len(self.processes)}.log"
        log = open(log_path, "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [str(BIN / program), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.environ(), **(env or {})},
        )
        log.close()
        self.processes.append(process)
        self.log_paths[process.pid] = log_path
        return process

    def logs(self) -> str:
        """Return every daemon log of this test, detached workers' included."""
        paths = sorted(self.folder.glob("*.log")) + sorted(self.run_dir.glob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in paths)

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        return self.log_paths[process.pid].read_text(errors="replace")

    def wait_for_log(
        self, process: subprocess.Popen[bytes], text: str, timeout_s: float = 15.0
    ) -> str:
        """Wait until the log of ``process`` contains ``text``; return the log."""
        return str(
            wait_until(
                lambda: text in self.log_of(process) and self.log_of(process),
                lambda: f"{text!r} in the log\n{self.logs()}",
                timeout_s,
            )
        )

    def wait_for_state(self, job_id: str, state: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """Poll the job's record until it is in ``state``; return the record."""
        store = Store(self.config)
        seen: list[dict[str, Any]] = [{}]

        def reached() -> dict[str, Any] | None:
            seen[0] = store.get_job(job_id)
            return seen[0] if seen[0].get("state") == state else None

        try:
            record: dict[str, Any] = wait_until(reached, f"job {job_id} to be {state}", timeout_s)
        except AssertionError as error:
            raise AssertionError(
                f"{error}; it is {seen[0].get('state')}: {seen[0]}\n{self.logs()}"
            ) from None
        finally:
            store.close()
        return record

    def enqueue(self, command: str | list[str], **fields: Any) -> str:
        """Enqueue one job through the library; return its id."""
        config = self.config
        spec = validate({"command": command, **fields}, config.jobs)
        store = Store(config)
        try:
            store.enqueue([spec])
        finally:
            store.close()
        return spec.id

    def pid_job(self, name: str, seconds: float) -> list[str]:
        """Return a command that writes its pid to ``pid_dir/name``, then sleeps."""
        pid_file = self.pid_dir / name
        return ["sh", "-c", f'echo $$ > "{pid_file}"; exec sleep {seconds:g}']

    def job_pid(self, name: str, timeout_s: float = 15.0) -> int:
        """Wait for a job made by ``pid_job`` to write its pid; return the pid."""
        path = self.pid_dir / name
        text = wait_until(
            lambda: path.exists() and path.read_text().strip(),
            lambda: f"{path} to be written\n{self.logs()}",
            timeout_s,
        )
        return int(text)

    def dump(self) -> dict[str, Any]:
        """Return every key of the namespace with its type and whole value."""
        client = self.server.client()
        readers: dict[str, Callable[[bytes], Any]] = {
            "string": client.get,
            "hash": client.hgetall,
            "list": lambda key: client.lrange(key, 0, -1),
            "set": lambda key: sorted(client.smembers(key)),
            "zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        }
        result: dict[str, Any] = {}
        try:
            for key in client.scan_iter(match="{" + self.namespace + "}:*"):
                kind = client.type(key).decode()
                result[key.decode()] = (kind, readers[kind](key))
        finally:
            close(client)
        return result

    def namespace_keys(self) -> list[str]:
        client = self.server.client()
        try:
            return sorted(k.decode() for k in client.scan_iter(match="{" + self.namespace + "}:*"))
        finally:
            close(client)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def kill_test_jobs(pid_dir: Path) -> None:
    """Kill jobs made by ``Env.pid_job`` that outlived their worker."""
    for path in pid_dir.iterdir():
        text = path.read_text().strip()
        if not text.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{text}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"sleep\0"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(text), signal.SIGKILL)


class NotifySocket:
    """A unix datagram socket that collects sd_notify messages, as systemd does.

    Each datagram is kept as the list of its ``NAME=VALUE`` lines, in arrival order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.messages: list[list[str]] = []

    def environ(self, watchdog_usec: int | None = None) -> dict[str, str]:
        """Return the variables that point a daemon at this socket."""
        variables = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_usec is not None:
            variables["WATCHDOG_USEC"] = str(watchdog_usec)
        return variables

    def receive(self, timeout_s: float) -> None:
        """Collect the datagrams that arrive within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.socket.settimeout(remaining)
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                return
            self.messages.append(data.decode().split("\n"))

    def find(self, line: str, start: int = 0) -> int | None:
        """Return the index of the first message from ``start`` with ``line``."""
        for index in range(start, len(self.messages)):
            if any(item.startswith(line) for item in self.messages[index]):
                return index
        return None

    def wait_for(self, line: str, start: int = 0, timeout_s: float = 15.0) -> int:
        """Wait for a message from index ``start`` with a line starting with ``line``."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find(line, start)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no sd_notify message {line!r} after message {start} within "
                    f"{timeout_s:g} s; received: {self.messages}"
                )
            self.receive(min(remaining, 0.1))

    def lines(self, prefix: str) -> list[str]:
        """Return every received line that starts with ``prefix``."""
        return [item for message in self.messages for item in message if item.startswith(prefix)]

    def close(self) -> None:
        self.socket.close()
