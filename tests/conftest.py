"""Fixtures: a private redis-server per test session, one namespace per test.

The server listens only on a unix socket in a temporary folder, never on
the system's port 6379.  Each test gets its own namespace and config file;
after the test, every key left in the namespace must belong to the key
schema, so a transition that leaks a key fails the test that caused it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from queuectld import config as config_module
from queuectld.connection import close
from queuectld.store import Store

BIN = Path(sys.executable).parent
_namespaces = itertools.count(1)
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
    """Start redis-server on a unix socket in ``folder``; return once it answers."""
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
            client = redis.Redis(unix_socket_path=str(socket))
            try:
                client.ping()
            finally:
                close(client)
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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_pid(server.pid)
    server.process.wait()


@dataclass
class Env:
    """One test's namespace, config file and the processes it started."""

    server: RedisServer
    namespace: str
    folder: Path
    config_path: Path
    settings: dict[str, dict[str, object]]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)

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
        self, *args: str, input: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``queuectl ARGS`` with this test's config."""
        result = subprocess.run(
            [str(BIN / "queuectl"), *args],
            capture_output=True,
            text=True,
            input=input,
            env=self.environ(),
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"queuectl {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def spawn(
        self, program: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a daemon such as ``queuectl-worker``; it is stopped after the test."""
        log = open(self.folder / f"{program}-{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [str(BIN / program), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.environ(), **(env or {})},
        )
        log.close()
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("*.log")))

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
    raise TypeError(value)


@pytest.fixture
def env(redis_server: RedisServer, tmp_path: Path) -> Iterator[Env]:
    namespace = f"t{os.getpid()}-{next(_namespaces)}"
    test_env = Env(redis_server, namespace, tmp_path, tmp_path / "queuectl.toml", {})
    test_env.write_config(
        redis={"url": redis_server.url, "namespace": namespace},
        worker={
            "heartbeat_interval": 0.2,
            "lease_timeout": 1.0,
            "stop_timeout": 5.0,
            "kill_grace": 0.5,
            "run_dir": str(tmp_path / "run"),
        },
        jobs={"backoff_base": 1.0, "backoff_max": 0.2, "cwd": str(tmp_path)},
        scheduler={"lock_timeout": 1.0},
    )
    yield test_env

    for process in test_env.processes:
        if process.poll() is None:
            stop_pid(process.pid, signal.SIGTERM)
            process.wait()
    for store in test_env.stores:
        store.close()
    stray = [key for key in test_env.namespace_keys() if not SCHEMA_KEY.match(key)]
    assert not stray, f"keys outside the schema were left behind: {stray}"
