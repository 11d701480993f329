"""The Redis key schema: every key queuectl reads or writes.

All keys of one namespace share the hash tag ``{<namespace>}`` so they live in
one Redis Cluster slot and every Lua script may touch them together.  With
the default namespace the keys are:

==============================  ======  =========================================
key                             type    contents
==============================  ======  =========================================
{queuectl}:jobs                 hash    job id -> job record (JSON, see jobs.py)
{queuectl}:output               hash    job id -> JSON {"stdout", "stderr"} tails, if any
                                        of the latest attempt
{queuectl}:seq                  string  counter for FIFO order and lease tokens
{queuectl}:queues               set     names of every queue ever used
{queuectl}:queue:<name>         zset    pending job ids; score orders by priority,
                                        then by enqueue order
{queuectl}:notify:<name>        list    wake-up tokens for idle workers (capped)
{queuectl}:scheduled            zset    job id -> run_at (ms since the epoch)
{queuectl}:failed               zset    job id -> time its retry is due (ms)
{queuectl}:processing           zset    job id -> lease deadline (ms)
{queuectl}:completed            zset    job id -> finish time (ms)
{queuectl}:dead                 zset    job id -> finish time (ms); the DLQ
{queuectl}:cancelled            zset    job id -> finish time (ms)
{queuectl}:held                 hash    worker name -> "<job id> <lease token>"
{queuectl}:workers              zset    worker name -> last heartbeat (ms)
{queuectl}:worker_info          hash    worker name -> JSON (host, pid, job, ...)
{queuectl}:scheduler            string  leader token of the active scheduler
{queuectl}:wake                 channel scheduler wake-up on a new delayed job
==============================  ======  =========================================

Times stored in Redis always come from the Redis ``TIME`` command.
"""

from __future__ import annotations

from typing import NamedTuple

JOB_STATES = ("scheduled", "pending", "processing", "failed", "completed", "dead", "cancelled")
FINAL_STATES = ("completed", "dead", "cancelled")


class Keys(NamedTuple):
    """Key names of one namespace.

    A NamedTuple because CPython 3.11 creates one faster than a frozen
    dataclass, and every queuectl program imports this module.
    """

    namespace: str

    @property
    def prefix(self) -> str:
        return "{" + self.namespace + "}:"

    @property
    def jobs(self) -> str:
        return self.prefix + "jobs"

    @property
    def output(self) -> str:
        return self.prefix + "output"

    @property
    def seq(self) -> str:
        return self.prefix + "seq"

    @property
    def queues(self) -> str:
        return self.prefix + "queues"

    def queue(self, name: str) -> str:
        return self.prefix + "queue:" + name

    def notify(self, name: str) -> str:
        return self.prefix + "notify:" + name

    @property
    def scheduled(self) -> str:
        return self.prefix + "scheduled"

    @property
    def failed(self) -> str:
        return self.prefix + "failed"

    @property
    def processing(self) -> str:
        return self.prefix + "processing"

    @property
    def completed(self) -> str:
        return self.prefix + "completed"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"

    @property
    def cancelled(self) -> str:
        return self.prefix + "cancelled"

    @property
    def held(self) -> str:
        return self.prefix + "held"

    @property
    def workers(self) -> str:
        return self.prefix + "workers"

    @property
    def worker_info(self) -> str:
        return self.prefix + "worker_info"

    @property
    def scheduler(self) -> str:
        return self.prefix + "scheduler"

    @property
    def wake(self) -> str:
        return self.prefix + "wake"

    def state_set(self, state: str) -> str:
        """Return the sorted set indexing jobs in ``state`` (not ``pending``)."""
        if state == "pending":
            raise ValueError("pending jobs are indexed per queue; use queue()")
        return self.prefix + state
