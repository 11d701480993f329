"""The queue systems of the throughput benchmark, each behind the same small interface.

Each system starts N workers that run one job at a time, enqueues jobs that
each run ``true`` as a child process, and reports from Redis how many of the
jobs it was given are not finished yet.  The peers run from their own
virtualenv; their task modules are in ``bench/peers``.

Worker settings, chosen so that "N workers" means N jobs at a time everywhere:

- queuectl: N ``queuectl-worker`` processes.
- RQ: N ``rq worker`` processes, with the default forking ``Worker`` (a fork
  per job) or with ``SimpleWorker`` (jobs run in the worker process).
- Dramatiq: one ``dramatiq`` command with ``--processes N --threads 1``.
- Celery: one ``celery worker`` with ``--pool prefork --concurrency N``.

All log at WARNING, so no system writes a line per job.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import redis

from queuectld.jobs import validate
from queuectld.keys import Keys

from .context import PEERS, QUEUECTL_BIN, Context, open_store
from .procs import BenchError, RedisServer

QUEUE = "bench"
# Maximum time, in seconds, that enqueuing one batch of peer jobs may take.
ENQUEUE_TIMEOUT_S = 600


class System:
    """A queue system under test."""

    key = ""
    label = ""
    # The file that the workers' output goes to, once started.
    log: Path | None = None

    def start(
        self, ctx: Context, server: RedisServer, workers: int
    ) -> list[subprocess.Popen[bytes]]:
        """Start ``workers`` workers; return the leaders of their process groups."""
        raise NotImplementedError

    def registered(self, client: redis.Redis) -> int | None:
        """Return how many workers announced themselves in Redis, or None if it cannot tell."""
        return None

    def enqueue(self, ctx: Context, server: RedisServer, count: int) -> None:
        raise NotImplementedError

    def outstanding(self, client: redis.Redis, enqueued: int) -> int:
        """Return how many of the ``enqueued`` jobs have not finished."""
        raise NotImplementedError

    def failed(self, client: redis.Redis) -> int:
        """Return how many jobs failed or were dead-lettered."""
        return 0


class Queuectl(System):
    key = "queuectl"
    label = "queuectl"

    def __init__(self) -> None:
        self.keys = Keys("bench")
        self.config_path: Path | None = None

    def start(
        self, ctx: Context, server: RedisServer, workers: int
    ) -> list[subprocess.Popen[bytes]]:
        self.config_path = ctx.queuectl_config(server, "throughput", log_level="warning")
        self.log = ctx.folder / "queuectl-worker.log"
        return [
            ctx.processes.start(
                [str(QUEUECTL_BIN / "queuectl-worker"), "--instance", str(number)],
                log=self.log,
                env=ctx.queuectl_env(self.config_path),
            )
            for number in range(1, workers + 1)
        ]

    def registered(self, client: redis.Redis) -> int | None:
        return int(client.zcard(self.keys.workers))

    def enqueue(self, ctx: Context, server: RedisServer, count: int) -> None:
        assert self.config_path is not None
        config, store = open_store(self.config_path)
        try:
            specs = [validate({"command": ["true"]}, config.jobs) for _ in range(count)]
            store.enqueue(specs)
        finally:
            store.close()

    def outstanding(self, client: redis.Redis, enqueued: int) -> int:
        finished = sum(
            int(client.zcard(self.keys.state_set(state))) for state in ("completed", "dead")
        )
        return enqueued - finished

    def failed(self, client: redis.Redis) -> int:
        return int(client.zcard(self.keys.dead)) + int(client.zcard(self.keys.failed))


class PeerSystem(System):
    """A peer, run from the peers' virtualenv."""

    peer = ""

    def enqueue(self, ctx: Context, server: RedisServer, count: int) -> None:
        result = subprocess.run(
            [str(ctx.peers_python), str(PEERS / "enqueue.py"), self.peer, str(count)],
            cwd=PEERS,
            env=ctx.peers_env(server),
            capture_output=True,
            text=True,
            timeout=ENQUEUE_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise BenchError(f"{self.label}: enqueue.py failed: {result.stderr.strip()[-2000:]}")

    def _start(
        self, ctx: Context, server: RedisServer, commands: Sequence[Sequence[str]]
    ) -> list[subprocess.Popen[bytes]]:
        self.log = ctx.folder / f"{self.key}.log"
        return [
            ctx.processes.start(command, log=self.log, env=ctx.peers_env(server), cwd=PEERS)
            for command in commands
        ]


class RQ(PeerSystem):
    peer = "rq"

    def __init__(self, worker_class: str | None) -> None:
        self.worker_class = worker_class
        if worker_class is None:
            self.key, self.label = "rq", "RQ (forking Worker)"
        else:
            self.key, self.label = "rq-simple", "RQ (SimpleWorker)"

    def start(
        self, ctx: Context, server: RedisServer, workers: int
    ) -> list[subprocess.Popen[bytes]]:
        commands = []
        for number in range(1, workers + 1):
            command = [str(ctx.peers_bin / "rq"), "worker", "--url", server.url]
            command += ["--logging_level", "WARNING", "--name", f"bench-{number}"]
            if self.worker_class:
                command += ["--worker-class", self.worker_class]
            commands.append([*command, QUEUE])
        return self._start(ctx, server, commands)

    def registered(self, client: redis.Redis) -> int | None:
        return int(client.scard("rq:workers"))

    def outstanding(self, client: redis.Redis, enqueued: int) -> int:
        finished = int(client.zcard(f"rq:finished:{QUEUE}")) + self.failed(client)
        return enqueued - finished

    def failed(self, client: redis.Redis) -> int:
        return int(client.zcard(f"rq:failed:{QUEUE}"))


class Dramatiq(PeerSystem):
    key = "dramatiq"
    label = "Dramatiq"
    peer = "dramatiq"

    def start(
        self, ctx: Context, server: RedisServer, workers: int
    ) -> list[subprocess.Popen[bytes]]:
        command = [str(ctx.peers_bin / "dramatiq"), "dramatiq_tasks"]
        command += ["--processes", str(workers), "--threads", "1", "--queues", QUEUE]
        return self._start(ctx, server, [command])

    def registered(self, client: redis.Redis) -> int | None:
        # One consumer per process and queue, each with its own heartbeat entry.
        return int(client.zcard("dramatiq:__heartbeats__"))

    def outstanding(self, client: redis.Redis, enqueued: int) -> int:
        # A message stays in this hash from enqueue until it is acknowledged.
        return int(client.hlen(f"dramatiq:{QUEUE}.msgs"))

    def failed(self, client: redis.Redis) -> int:
        return int(client.zcard(f"dramatiq:{QUEUE}.XQ"))


class Celery(PeerSystem):
    key = "celery"
    label = "Celery (prefork)"
    peer = "celery"

    def start(
        self, ctx: Context, server: RedisServer, workers: int
    ) -> list[subprocess.Popen[bytes]]:
        command = [str(ctx.peers_bin / "celery"), "--app", "celery_tasks", "worker"]
        command += ["--pool", "prefork", "--concurrency", str(workers)]
        command += ["--loglevel", "WARNING", "--queues", QUEUE, "--hostname", "bench@%h"]
        return self._start(ctx, server, [command])

    def outstanding(self, client: redis.Redis, enqueued: int) -> int:
        # With late acknowledgement a task leaves the unacked hash when it returns.
        return int(client.llen(QUEUE)) + int(client.hlen("unacked"))


def all_systems() -> list[System]:
    return [Queuectl(), RQ(None), RQ("rq.SimpleWorker"), Dramatiq(), Celery()]
