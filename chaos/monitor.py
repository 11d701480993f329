"""The watcher thread: keeps a copy of each final job record, samples consistency.

Finished records expire after a retention of a few seconds, so the watcher
copies each record as soon as its id appears in the ``completed``, ``dead``
or ``cancelled`` set, polling every ``Settings.poll_s``.  A job id that
appears there a second time with a new finish time has run again after it
finished, which the run counts as a failure.

Every ``Settings.sample_every_s`` the watcher also takes a transactional
snapshot of the keyspace and records any inconsistency it finds.  Redis
errors (Redis is being restarted or paused) only skip a round.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from queuectld.keys import FINAL_STATES, Keys

from .keyspace import inconsistencies, take_snapshot


@dataclass
class WatchResult:
    finals: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    refinished: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    samples: int = 0
    failed_samples: int = 0
    violations: list[tuple[float, str]] = field(default_factory=list)


class Watcher(threading.Thread):
    def __init__(
        self,
        client_factory: Any,
        keys: Keys,
        queues: Iterable[str],
        poll_s: float,
        sample_every_s: float,
        started: float,
    ) -> None:
        super().__init__(name="watcher", daemon=True)
        self.client_factory = client_factory
        self.keys = keys
        self.queues = tuple(queues)
        self.poll_s = poll_s
        self.sample_every_s = sample_every_s
        self.started = started
        self.result = WatchResult()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self._client: redis.Redis | None = None

    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def run(self) -> None:
        next_sample = time.monotonic() + self.sample_every_s
        while not self.stop.is_set():
            try:
                self.poll_finals()
                if time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + self.sample_every_s
                    self.sample()
            except redis.RedisError:
                self._reset()
            self.stop.wait(self.poll_s)
        self._reset()

    def _reset(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client.connection_pool.disconnect()
            self._client = None

    def final_count(self) -> int:
        with self.lock:
            return len(self.result.finals)

    def poll_finals(self) -> None:
        """Copy the records of jobs that reached a final state since the last poll."""
        client = self.client()
        pipe = client.pipeline(transaction=True)
        for state in FINAL_STATES:
            pipe.zrange(self.keys.state_set(state), 0, -1, withscores=True)
        fresh: dict[str, float] = {}
        for members in pipe.execute():
            for job_id, score in members:
                if self.result.scores.get(job_id) != score:
                    fresh[job_id] = score
        if not fresh:
            return
        ids = sorted(fresh)
        raws = client.hmget(self.keys.jobs, ids)
        with self.lock:
            for job_id, raw in zip(ids, raws, strict=True):
                if raw is None:
                    # Removed between the two reads: its retention passed unseen.
                    if job_id not in self.result.finals:
                        self.result.missed.append(job_id)
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    self.result.unreadable.append(job_id)
                    continue
                if job_id in self.result.scores:
                    self.result.refinished.append(job_id)
                self.result.scores[job_id] = fresh[job_id]
                self.result.finals[job_id] = record

    def sample(self) -> None:
        """Take one consistent snapshot and record what is wrong in it."""
        try:
            snapshot = take_snapshot(self.client(), self.keys, self.queues)
        except redis.RedisError:
            self.result.failed_samples += 1
            raise
        problems = inconsistencies(snapshot)
        at = time.monotonic() - self.started
        with self.lock:
            self.result.samples += 1
            self.result.violations += [(at, problem) for problem in problems]
