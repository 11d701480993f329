"""Fixtures: a private redis-server per test session, one namespace per test.

The server listens only on a unix socket in a temporary folder, never on
the system's port 6379.  Each test gets its own namespace and config file;
after the test, every key left in the namespace must belong to the key
schema, so a transition that leaks a key fails the test that caused it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    SCHEMA_KEY,
    Env,
    NotifySocket,
    RedisServer,
    kill_test_jobs,
    start_redis,
    stop_foreign_pid,
    stop_pid,
)

_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_pid(server.pid)
    server.process.wait()


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
            # The tests run as root in CI.
            "allow_root": True,
        },
        jobs={"backoff_base": 1.0, "backoff_max": 0.2, "cwd": str(tmp_path)},
        scheduler={"lock_timeout": 1.0},
    )
    yield test_env

    # Signal every daemon first, so that their stops overlap.
    running = [process for process in test_env.processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
    for process in test_env.processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pidfile in test_env.run_dir.glob("worker-*.pid"):
        text = pidfile.read_text().strip()
        if text.isdigit():
            stop_foreign_pid(int(text))
    kill_test_jobs(test_env.pid_dir)
    for store in test_env.stores:
        store.close()
    stray = [key for key in test_env.namespace_keys() if not SCHEMA_KEY.match(key)]
    assert not stray, f"keys outside the schema were left behind: {stray}"


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short folder under /tmp: a unix socket path must fit in 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="queuectl-notify-"))
    receiver = NotifySocket(folder / "notify.sock")
    yield receiver
    receiver.close()
    shutil.rmtree(folder)
