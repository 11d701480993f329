"""The system under test: a private redis-server and queuectl's daemons.

Redis listens only on a unix socket in the run's folder (``--port 0``), with
``appendonly yes`` and ``appendfsync always``, so every write it
acknowledged survives a restart.  A restart reuses the socket and the data
folder, so the server reloads its append-only file.

The daemons are started the way their systemd units start them: each in a
session of its own, with the config named by ``QUEUECTL_CONFIG``.  Each one
logs to stderr, which goes to one log file per daemon.  A restarted worker
appends to the file of its instance, as journald keeps one stream per unit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from queuectld.keys import Keys

from .procs import ProcessTable, send, stop_process
from .settings import Settings

BIN = Path(sys.executable).parent
NAMESPACE = "chaos"
PROGRAMS = ("queuectl", "queuectl-worker", "queuectl-scheduler", "queuectl-reaper")


class SetupError(Exception):
    """The harness could not set up the system under test."""


def check_programs() -> None:
    """Raise ``SetupError`` unless redis-server and queuectl's programs are installed."""
    if shutil.which("redis-server") is None:
        raise SetupError("redis-server is not installed; run `make chaos`, which installs it")
    for program in PROGRAMS:
        if not (BIN / program).exists():
            raise SetupError(f"{BIN / program} not found; run `make venv` first")


class Cluster:
    """Redis, the workers, the schedulers and the reaper loop of one run."""

    def __init__(self, settings: Settings, folder: Path, table: ProcessTable) -> None:
        self.settings = settings
        self.folder = folder
        self.table = table
        self.socket = folder / "redis.sock"
        self.data = folder / "data"
        self.logs = folder / "logs"
        self.config_path = folder / "queuectl.toml"
        self.keys = Keys(NAMESPACE)
        self.redis: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.schedulers: list[subprocess.Popen[bytes]] = []
        self.reaper: subprocess.Popen[bytes] | None = None
        self.stopped: set[int] = set()
        # Pids of daemons the harness killed or stopped on purpose: not crashes.
        self.expected_exit: set[int] = set()
        # Guards the daemon tables, which the fault lanes change concurrently.
        self.lock = threading.RLock()
        self.schedulers_started = 0
        self.exits: list[tuple[str, int, int | None]] = []
        self._client: redis.Redis | None = None
        self.data.mkdir(parents=True)
        self.logs.mkdir()
        (folder / "run").mkdir()

    # --- config and environment ----------------------------------------------

    def write_config(self) -> None:
        s = self.settings
        queues = ", ".join(f'"{name}"' for name in s.queues)
        self.config_path.write_text(
            "[redis]\n"
            f'url = "unix://{self.socket}"\n'
            f'namespace = "{NAMESPACE}"\n'
            f"socket_timeout = {s.socket_timeout_s}\n"
            f"connect_timeout = {s.socket_timeout_s}\n"
            "[jobs]\n"
            f"max_retries = {s.max_retries}\n"
            f"backoff_base = {s.backoff_base}\n"
            f"backoff_max = {s.backoff_max_s}\n"
            f"retention_completed = {s.retention_s}\n"
            f"retention_dead = {s.retention_s}\n"
            "history_limit = 1000\n"
            "output_limit = 1024\n"
            f'cwd = "{self.folder}"\n'
            "[worker]\n"
            f"queues = [{queues}]\n"
            f"heartbeat_interval = {s.heartbeat_interval_s}\n"
            f"lease_timeout = {s.lease_timeout_s}\n"
            f"stop_timeout = {s.stop_timeout_s}\n"
            f"kill_grace = {s.kill_grace_s}\n"
            f'run_dir = "{self.folder / "run"}"\n'
            # The harness runs as root, like CI.
            "allow_root = true\n"
            "[scheduler]\n"
            f"lock_timeout = {s.lock_timeout_s}\n"
        )

    def environ(self) -> dict[str, str]:
        """Return the environment of queuectl's programs: ours, minus anything systemd sets."""
        skip = ("QUEUECTL_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM", "LISTEN_")
        env = {key: value for key, value in os.environ.items() if not key.startswith(skip)}
        env["QUEUECTL_CONFIG"] = str(self.config_path)
        return env

    def new_client(self) -> redis.Redis:
        """Return a new Redis client of the harness's own (not queuectl's)."""
        return redis.Redis(
            unix_socket_path=str(self.socket),
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            decode_responses=True,
        )

    def client(self) -> redis.Redis:
        """Return the harness's shared Redis client, connecting if needed."""
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client.connection_pool.disconnect()
            self._client = None

    def mark_log(self, name: str, text: str) -> Path:
        """Append a harness line to a daemon's log, so its story reads in order."""
        path = self.logs / f"{name}.log"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with path.open("a") as stream:
            stream.write(f"{stamp} chaos: {text}\n")
        return path

    # --- Redis ----------------------------------------------------------------

    def start_redis(self, timeout_s: float = 30.0) -> float:
        """Start redis-server and wait until it serves commands; return the time taken."""
        server = shutil.which("redis-server")
        assert server is not None
        started = time.monotonic()
        log = self.mark_log("redis", "starting redis-server")
        self.redis = self.table.start(
            [
                server,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.data),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--maxmemory-policy", "noeviction",
            ],
            env=self.environ(),
            log_path=log,
        )  # fmt: skip
        self.wait_redis(timeout_s)
        return time.monotonic() - started

    def wait_redis(self, timeout_s: float) -> None:
        """Wait until Redis replies to PING; it rejects commands while it loads its file."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.redis is not None and self.redis.poll() is not None:
                raise SetupError(f"redis-server exited with code {self.redis.returncode}")
            if self.socket.exists():
                try:
                    self.client().ping()
                    return
                except redis.RedisError:
                    pass
            if time.monotonic() >= deadline:
                raise SetupError(f"redis-server did not respond within {timeout_s:g} s")
            time.sleep(0.05)

    def stop_redis(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM Redis (it writes its file and exits) and wait; return its exit code."""
        if self.redis is None:
            return None
        self.mark_log("redis", "sending SIGTERM to redis-server")
        code = stop_process(self.redis, timeout_s)
        self.table.forget(self.redis)
        self.stopped.discard(self.redis.pid)
        self.redis = None
        self.close_client()
        return code

    # --- daemons -------------------------------------------------------------

    def start_worker(self, instance: str) -> subprocess.Popen[bytes]:
        log = self.mark_log(f"worker-{instance}", f"starting queuectl-worker --instance {instance}")
        with self.lock:
            process = self.table.start(
                [str(BIN / "queuectl-worker"), "--instance", instance],
                env=self.environ(),
                log_path=log,
            )
            self.workers[instance] = process
        return process

    def start_scheduler(self) -> subprocess.Popen[bytes]:
        with self.lock:
            self.schedulers_started += 1
            name = f"scheduler-{self.schedulers_started}"
            log = self.mark_log(name, "starting queuectl-scheduler")
            process = self.table.start(
                [str(BIN / "queuectl-scheduler")], env=self.environ(), log_path=log
            )
            self.schedulers.append(process)
        return process

    def start_reaper(self) -> None:
        log = self.mark_log(
            "reaper", f"starting queuectl-reaper --loop {self.settings.reaper_loop_s:g}"
        )
        self.reaper = self.table.start(
            [str(BIN / "queuectl-reaper"), "--loop", f"{self.settings.reaper_loop_s:g}"],
            env=self.environ(),
            log_path=log,
        )

    def start_daemons(self) -> None:
        for number in range(1, self.settings.workers + 1):
            self.start_worker(str(number))
        self.start_scheduler()
        self.start_scheduler()
        self.start_reaper()

    def reaped(self, role: str, process: subprocess.Popen[bytes]) -> None:
        """Record the exit of a daemon that was waited for, and drop it from the tables."""
        with self.lock:
            self.table.forget(process)
            self.stopped.discard(process.pid)
            self.exits.append((role, process.pid, process.returncode))
            self.workers = {name: p for name, p in self.workers.items() if p is not process}
            if process in self.schedulers:
                self.schedulers.remove(process)
            if process is self.reaper:
                self.reaper = None

    def owns(self, process: subprocess.Popen[bytes]) -> bool:
        """Return True while ``process`` is one of the daemons in the tables."""
        with self.lock:
            return any(p is process for _, p in self.daemons())

    def daemons(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """Return (role, process) of every daemon, as a copy."""
        with self.lock:
            found = [(f"worker-{name}", process) for name, process in self.workers.items()]
            found += [("scheduler", process) for process in self.schedulers]
            if self.reaper is not None:
                found.append(("reaper", self.reaper))
        return found

    def stop_daemons(self) -> list[tuple[str, int, int | None]]:
        """Stop every daemon gracefully (SIGTERM, as systemctl stop does).

        Returns (role, pid, exit code) of each; a clean stop exits 0.
        """
        limit = self.settings.stop_timeout_s + self.settings.kill_grace_s + 10.0
        for _, process in self.daemons():
            if process.poll() is None:
                send(process.pid, signal.SIGCONT)
                send(process.pid, signal.SIGTERM)
        results = []
        for role, process in self.daemons():
            code = stop_process(process, limit, signalled=True)
            self.reaped(role, process)
            results.append((role, process.pid, code))
        self.workers.clear()
        self.schedulers.clear()
        self.reaper = None
        return results
