"""Enqueue and CLI costs: bulk enqueue, CLI wall times on a large queue, Redis memory per job.

Each CLI command runs as a fresh process, as an operator or a cron job runs
it, so its wall time includes the interpreter's start and queuectl's imports.
``python3 -c pass`` with the same interpreter is timed as the floor.

The commands and an idle worker also run on the stack the Debian package
uses, when it is installed: ``/usr/bin/python3`` with Debian's python3-redis,
python3-sdnotify and python3-daemon, and this checkout's queuectld.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from queuectld.jobs import validate

from .context import QUEUECTL_BIN, Context, open_store
from .procs import BenchError, RedisServer, memory_kib, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"
# The code each program runs at start, as the Debian package's entry scripts run it.
ENTRY = "import sys; from queuectld.{module} import main; sys.exit(main())"
# Jobs per enqueue call while filling Redis with pending jobs.
FILL_BATCH = 10_000
JOB_LINE = '{"command": ["true"]}\n'


@dataclass
class BulkEnqueue:
    jobs: int
    seconds: float

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


@dataclass
class CliTimes:
    """Wall times in ms of CLI commands with ``stored`` pending jobs in Redis."""

    stored: int
    runs: int
    times_ms: dict[str, list[float]] = field(default_factory=dict)
    # Redis memory per pending job, in bytes, from filling the queue.
    bytes_per_job: float = 0.0
    fill_jobs_per_s: float = 0.0
    # VmRSS in KiB of an idle worker on Debian's stack (0: not measured).
    debian_worker_rss_kib: int = 0

    def median_ms(self, command: str) -> float:
        return statistics.median(self.times_ms[command])


CLI_COMMANDS = {
    "python3 -c pass": [sys.executable, "-c", "pass"],
    "queuectl enqueue -- true": [str(QUEUECTL_BIN / "queuectl"), "enqueue", "--", "true"],
    "queuectl status": [str(QUEUECTL_BIN / "queuectl"), "status"],
    "queuectl list --state pending --limit 50": [
        str(QUEUECTL_BIN / "queuectl"),
        "list",
        "--state",
        "pending",
        "--limit",
        "50",
    ],
}


DEBIAN_COMMANDS = {
    "python3 -c pass, Debian's python3": [DEBIAN_PYTHON, "-c", "pass"],
    "queuectl enqueue -- true, Debian's python3-redis": [
        DEBIAN_PYTHON,
        "-c",
        ENTRY.format(module="cli.main"),
        "enqueue",
        "--",
        "true",
    ],
    "queuectl status, Debian's python3-redis": [
        DEBIAN_PYTHON,
        "-c",
        ENTRY.format(module="cli.main"),
        "status",
    ],
}


def measure_bulk_enqueue(ctx: Context, jobs: int) -> BulkEnqueue:
    """Time ``queuectl enqueue --file`` of ``jobs`` JSON lines into an empty Redis."""
    server = ctx.redis("bulk")
    try:
        config_path = ctx.queuectl_config(server, "bulk")
        batch = ctx.folder / "bulk.jsonl"
        batch.write_text(JOB_LINE * jobs)
        started = time.monotonic()
        result = subprocess.run(
            [str(QUEUECTL_BIN / "queuectl"), "enqueue", "--file", str(batch)],
            env=ctx.queuectl_env(config_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
        seconds = time.monotonic() - started
        if result.returncode != 0:
            raise BenchError(f"queuectl enqueue --file failed: {result.stderr.strip()}")
        batch.unlink()
        return BulkEnqueue(jobs, seconds)
    finally:
        ctx.processes.stop(server.process)


def measure_cli(ctx: Context, stored: int, runs: int) -> CliTimes:
    """Fill Redis with ``stored`` pending jobs, then time each CLI command ``runs`` times."""
    server = ctx.redis("cli")
    try:
        config_path = ctx.queuectl_config(server, "cli")
        result = CliTimes(stored, runs)
        result.bytes_per_job, result.fill_jobs_per_s = fill_pending(config_path, stored)
        env = ctx.queuectl_env(config_path)
        for name, argv in CLI_COMMANDS.items():
            result.times_ms[name] = [_wall_ms(argv, env) for _ in range(runs)]
        if debian_stack():
            debian_env = {**env, "PYTHONPATH": str(ROOT)}
            for name, argv in DEBIAN_COMMANDS.items():
                result.times_ms[name] = [_wall_ms(argv, debian_env) for _ in range(runs)]
            result.debian_worker_rss_kib = debian_worker_rss(ctx, server)
        return result
    finally:
        ctx.processes.stop(server.process)


def debian_stack() -> bool:
    """Return whether /usr/bin/python3 has the Debian packages queuectl depends on."""
    probe = [DEBIAN_PYTHON, "-c", "import redis, sdnotify, daemon"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    return os.path.exists(DEBIAN_PYTHON) and subprocess.run(probe, env=env).returncode == 0


def debian_worker_rss(ctx: Context, server: RedisServer) -> int:
    """Return VmRSS in KiB of a worker on Debian's stack, idle after three jobs."""
    queue = 'queues = ["rss-probe"]\nheartbeat_interval = 1\n'
    config_path = ctx.queuectl_config(server, "debian-worker", log_level="warning", worker=queue)
    env = {**ctx.queuectl_env(config_path), "PYTHONPATH": str(ROOT)}
    argv = [DEBIAN_PYTHON, "-c", ENTRY.format(module="worker"), "--instance", "debian"]
    worker = ctx.processes.start(argv, log=ctx.folder / "debian-worker.log", env=env)
    try:
        config, store = open_store(config_path)
        try:
            for done in range(1, 4):
                store.enqueue([validate({"command": ["true"], "queue": "rss-probe"}, config.jobs)])
                wait_until(
                    lambda: store.counts()["states"]["completed"],
                    lambda completed, done=done: completed >= done,
                    timeout_s=30,
                    description="a job on the worker of Debian's stack",
                )
        finally:
            store.close()
        time.sleep(1.5)
        return memory_kib(worker.pid).get("VmRSS", 0)
    finally:
        ctx.processes.stop(worker)


def fill_pending(config_path: Path, stored: int) -> tuple[float, float]:
    """Enqueue ``stored`` pending jobs through the library.

    Returns the Redis memory they take per job, in bytes, and the enqueue rate
    in jobs per second.  The first job creates the keys and is not counted.
    """
    config, store = open_store(config_path)
    try:
        store.enqueue([validate({"command": ["true"]}, config.jobs)])
        before = int(store.client.info("memory")["used_memory"])
        started = time.monotonic()
        left = stored - 1
        while left > 0:
            size = min(FILL_BATCH, left)
            store.enqueue([validate({"command": ["true"]}, config.jobs) for _ in range(size)])
            left -= size
        rate = (stored - 1) / (time.monotonic() - started)
        after = int(store.client.info("memory")["used_memory"])
        return (after - before) / max(1, stored - 1), rate
    finally:
        store.close()


def _wall_ms(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    elapsed = (time.monotonic() - started) * 1000
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with {result.returncode}: {result.stderr}")
    return elapsed
