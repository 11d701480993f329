"""The Redis library: every read and every state transition of jobs.

Delivery guarantee
------------------
A job is at-least-once: once ``enqueue`` returns, the job is in Redis and
stays there until it reaches a final state (completed, dead, cancelled) and
its retention passes.  Every transition that touches more than one key is
one Lua script, so a crash between two commands cannot lose or duplicate a
job.  A job runs more than once only when an attempt's worker died, or lost
its lease, before recording the outcome; each such attempt is in the job's
history with the outcome ``lost``.

Leases and fencing
------------------
A claim moves a job to ``processing`` and gives it a lease: a token unique
across the namespace, and a deadline ``lease_timeout`` after Redis's clock.
The worker renews the deadline with ``heartbeat``.  ``finish`` and
``heartbeat`` apply only while the caller's token is still the job's, so a
worker whose lease expired and was taken away by the reaper cannot overwrite
the newer attempt; it is told ``lost`` and discards its result.  The reaper
takes a job only when its deadline has passed and its token is still the
one it read, so concurrent reapers never both requeue it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from .config import Config
from .connection import close, connect, translated
from .errors import ConflictError, NotFoundError
from .jobs import Claimed, Spec
from .keys import FINAL_STATES, JOB_STATES, Keys
from .scripts import Scripts

# Jobs per enqueue script call; a bigger batch blocks Redis longer per call.
ENQUEUE_BATCH = 1000
Result = TypeVar("Result")


def _translate(method: Callable[..., Result]) -> Callable[..., Result]:
    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Result:
        with translated(self.config.redis.url):
            return method(self, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Outcome:
    """The outcome of an attempt, as the worker reports it."""

    kind: str  # completed, failed, dead, cancelled or requeue
    exit_code: int | None = None
    signal: int | None = None
    duration_ms: int = 0
    error: str = ""
    stdout: str | None = None
    stderr: str | None = None
    retry_delay_ms: int = 0


@dataclass(frozen=True)
class Claim:
    """The reply of a claim: the job (or ``None``) and unreadable ids skipped."""

    job: Claimed | None
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finish:
    """The reply of ``finish``: ``ok`` or ``lost``, the job's new state, the next claim."""

    status: str
    state: str | None
    next: Claim | None = None


@dataclass(frozen=True)
class EnqueueResult:
    created: int
    existing: tuple[str, ...] = ()


@dataclass(frozen=True)
class DueResult:
    moved: int
    next_due_ms: int | None
    now_ms: int


@dataclass
class WorkerKeys:
    """Keys of one worker's claim and finish calls, built once."""

    claim: list[str]
    pairs: list[str] = field(default_factory=list)


class Store:
    """A connection to one namespace, and every operation on it."""

    def __init__(self, config: Config, *, block_s: float = 0.0) -> None:
        self.config = config
        self.keys = Keys(config.redis.namespace)
        self.client = connect(config.redis, block_s=block_s)
        self.scripts = Scripts.register(self.client)

    def close(self) -> None:
        close(self.client)

    # --- enqueue -------------------------------------------------------------

    @_translate
    def enqueue(self, specs: Sequence[Spec], *, if_absent: bool = False) -> EnqueueResult:
        """Store new jobs.  Without ``if_absent`` an id in use raises ``ConflictError``.

        All jobs of one queue within one batch of ``ENQUEUE_BATCH`` are
        stored by one script call, all or none.  Jobs that need several
        calls (several queues or batches) are checked for ids in use before
        the first call writes.  An id that another client takes between that
        check and the write still fails only the later calls.
        """
        by_queue: dict[str, list[Spec]] = {}
        for spec in specs:
            by_queue.setdefault(spec.queue, []).append(spec)
        if not if_absent and (len(by_queue) > 1 or len(specs) > ENQUEUE_BATCH):
            self._check_ids_free([spec.id for spec in specs])
        created = 0
        existing: list[str] = []
        for queue, queue_specs in by_queue.items():
            for start in range(0, len(queue_specs), ENQUEUE_BATCH):
                batch = queue_specs[start : start + ENQUEUE_BATCH]
                reply = self._enqueue_batch(queue, batch, if_absent)
                created += int(reply[1])
                existing.extend(_text(item) for item in reply[2:])
        return EnqueueResult(created, tuple(existing))

    def _enqueue_batch(self, queue: str, specs: Sequence[Spec], if_absent: bool) -> list[Any]:
        k = self.keys
        args: list[Any] = [queue, "1" if if_absent else "0", k.wake]
        for spec in specs:
            args += [spec.id, spec.record_json(), spec.due()]
        reply = self.scripts.enqueue(
            keys=[k.jobs, k.seq, k.queues, k.scheduled, k.queue(queue), k.notify(queue)],
            args=args,
        )
        if _text(reply[0]) == "conflict":
            raise ConflictError(
                f"job id {_text(reply[1])!r} is already in use; choose another id, "
                "or pass --if-absent to keep the existing job"
            )
        return cast(list[Any], reply)

    def _check_ids_free(self, ids: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for id_ in ids:
            pipe.hexists(self.keys.jobs, id_)
        for id_, exists in zip(ids, pipe.execute(), strict=True):
            if exists:
                raise ConflictError(
                    f"job id {id_!r} is already in use; choose another id, "
                    "or pass --if-absent to keep the existing job"
                )

    # --- worker transitions --------------------------------------------------

    def worker_keys(self, queues: Sequence[str]) -> WorkerKeys:
        k = self.keys
        pairs: list[str] = []
        for queue in queues:
            pairs += [k.queue(queue), k.notify(queue)]
        return WorkerKeys(claim=[k.jobs, k.processing, k.seq, k.held, k.dead, *pairs], pairs=pairs)

    @_translate
    def claim(self, worker: str, keys: WorkerKeys, lease_ms: int) -> Claim:
        """Claim the best pending job of the worker's queues, or return no job."""
        reply = self.scripts.claim(keys=keys.claim, args=[worker, lease_ms])
        return _claim_reply(reply)

    @_translate
    def finish(
        self,
        job: Claimed,
        outcome: Outcome,
        *,
        worker: str,
        history_limit: int,
        claim_next: WorkerKeys | None = None,
        lease_ms: int = 0,
    ) -> Finish:
        """Record an attempt's outcome while the lease holds; optionally claim again.

        Returns status ``lost`` (and writes nothing about the job) when the
        lease was taken away.
        """
        k = self.keys
        output = ""
        if outcome.stdout is not None or outcome.stderr is not None:
            output = json.dumps({"stdout": outcome.stdout or "", "stderr": outcome.stderr or ""})
        keys = [
            k.jobs,
            k.output,
            k.processing,
            k.completed,
            k.failed,
            k.dead,
            k.cancelled,
            k.held,
            k.seq,
            k.queue(job.queue),
            k.notify(job.queue),
        ]
        if claim_next is not None:
            keys += claim_next.pairs
        reply = self.scripts.finish(
            keys=keys,
            args=[
                job.id,
                job.lease,
                outcome.kind,
                "" if outcome.exit_code is None else outcome.exit_code,
                "" if outcome.signal is None else outcome.signal,
                outcome.duration_ms,
                outcome.error,
                output,
                outcome.retry_delay_ms,
                history_limit,
                worker,
                "1" if claim_next is not None else "0",
                lease_ms,
            ],
        )
        state = _text(reply[1]) if reply[1] is not None else None
        following = _claim_reply(reply[2:]) if claim_next is not None else None
        return Finish(_text(reply[0]), state, following)

    @_translate
    def heartbeat(self, job: Claimed, lease_ms: int) -> int:
        """Renew the lease: 1 renewed, 2 renewed with a cancel requested, 0 lost."""
        k = self.keys
        return int(
            self.scripts.heartbeat(keys=[k.jobs, k.processing], args=[job.id, job.lease, lease_ms])
        )

    @_translate
    def reclaim(self, worker: str, *, started: bool = True) -> tuple[str, str] | None:
        """Put back the job that ``worker`` holds according to Redis.

        With ``started`` (a previous process of the worker died running it)
        the attempt counts as lost.  Without it (the worker lost the reply of
        the claim and never ran the job) the attempt is not counted.  Returns
        ``(job id, new state)``, or ``None`` if the worker held nothing.
        """
        held = self.client.hget(self.keys.held, worker)
        if held is None:
            return None
        job_id, _, lease = _text(held).partition(" ")
        record = self._record(job_id)
        if record is None or not isinstance(record.get("queue"), str):
            self.client.hdel(self.keys.held, worker)
            return None
        mode = "reclaim" if started else "release"
        taken = self._requeue_lost(mode, str(record["queue"]), [(job_id, lease)])
        return taken[0] if taken else None

    @_translate
    def wait_for_work(self, keys: WorkerKeys, timeout_s: float) -> None:
        """Block until a job may be pending in the worker's queues, or ``timeout_s``."""
        self.client.blpop(keys.pairs[1::2], timeout=timeout_s)

    # --- reaper --------------------------------------------------------------

    @_translate
    def reap(self, limit: int) -> list[tuple[str, str]]:
        """Requeue or dead-letter up to ``limit`` jobs whose lease expired."""
        now_ms = self.now_ms()
        ids = [
            _text(i)
            for i in self.client.zrangebyscore(
                self.keys.processing, "-inf", now_ms, start=0, num=limit
            )
        ]
        by_queue: dict[str, list[tuple[str, str]]] = {}
        for job_id, record in zip(ids, self._records(ids), strict=True):
            if record is not None and record.get("lease") is not None:
                by_queue.setdefault(str(record["queue"]), []).append((job_id, _lease(record)))
        taken: list[tuple[str, str]] = []
        for queue, jobs in by_queue.items():
            taken += self._requeue_lost("expired", queue, jobs)
        return taken

    def _requeue_lost(
        self, mode: str, queue: str, jobs: Iterable[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        k = self.keys
        args: list[Any] = [mode, self.config.jobs.history_limit]
        for job_id, lease in jobs:
            args += [job_id, lease]
        reply = self.scripts.requeue_lost(
            keys=[
                k.jobs,
                k.processing,
                k.dead,
                k.held,
                k.seq,
                k.queue(queue),
                k.notify(queue),
                k.cancelled,
            ],
            args=args,
        )
        items = [_text(item) for item in reply]
        return list(zip(items[0::2], items[1::2], strict=True))

    @_translate
    def remove_finished(self, state: str, age_s: float, limit: int) -> int:
        """Delete up to ``limit`` jobs in final ``state`` that finished ``age_s`` ago."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state} is not a final state")
        k = self.keys
        return int(
            self.scripts.remove_finished(
                keys=[k.state_set(state), k.jobs, k.output], args=[round(age_s * 1000), limit]
            )
        )

    @_translate
    def forget_workers(
        self, names: Sequence[str] = (), *, silent_s: float | None = None, limit: int = 1000
    ) -> int:
        """Remove named workers, and those silent for ``silent_s`` seconds."""
        k = self.keys
        age = "" if silent_s is None else round(silent_s * 1000)
        return int(
            self.scripts.worker_gone(keys=[k.workers, k.worker_info], args=[age, limit, *names])
        )

    # --- scheduler -----------------------------------------------------------

    @_translate
    def hold_leader(self, token: str, ttl_ms: int) -> bool:
        """Take or renew the scheduler lock; True while ``token`` owns it."""
        return bool(self.scripts.leader(keys=[self.keys.scheduler], args=[token, ttl_ms, "hold"]))

    @_translate
    def release_leader(self, token: str) -> None:
        self.scripts.leader(keys=[self.keys.scheduler], args=[token, 1, "release"])

    @_translate
    def move_due(self, limit: int) -> DueResult:
        """Move up to ``limit`` due scheduled and failed jobs to their queues."""
        k = self.keys
        now_ms = self.now_ms()
        moved = 0
        for source in (k.scheduled, k.failed):
            ids = [
                _text(i)
                for i in self.client.zrangebyscore(source, "-inf", now_ms, start=0, num=limit)
            ]
            by_queue: dict[str, list[str]] = {}
            for job_id, record in zip(ids, self._records(ids), strict=True):
                queue = record.get("queue") if record else None
                by_queue.setdefault(queue if isinstance(queue, str) else "default", []).append(
                    job_id
                )
            for queue, queue_ids in by_queue.items():
                moved += int(
                    self.scripts.move_due(
                        keys=[k.jobs, source, k.seq, k.dead, k.queue(queue), k.notify(queue)],
                        args=queue_ids,
                    )
                )
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(k.scheduled, 0, 0, withscores=True)
        pipe.zrange(k.failed, 0, 0, withscores=True)
        heads = [int(head[0][1]) for head in pipe.execute() if head]
        return DueResult(moved, min(heads) if heads else None, now_ms)

    def subscribe_wake(self) -> Any:
        """Return a pub/sub object subscribed to enqueue's wake-up channel."""
        with translated(self.config.redis.url):
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.keys.wake)
            return pubsub

    # --- admin transitions ---------------------------------------------------

    @_translate
    def cancel(self, job_id: str) -> str:
        """Cancel a job: returns ``cancelled``, or ``requested`` for a running job."""
        record = self.get_job(job_id)
        k = self.keys
        reply = self.scripts.cancel(
            keys=[
                k.jobs,
                k.scheduled,
                k.failed,
                k.processing,
                k.cancelled,
                k.queue(str(record["queue"])),
            ],
            args=[job_id],
        )
        result, state = _text(reply[0]), _text(reply[1]) if reply[1] is not None else None
        if result == "not_found":
            raise NotFoundError(f"no job with id {job_id!r}; see `queuectl list`")
        if result == "final":
            raise ConflictError(
                f"job {job_id} is already {state}; only unfinished jobs can be cancelled"
            )
        return result

    @_translate
    def retry(self, job_id: str, allowed: Sequence[str]) -> None:
        """Send a job in one of the ``allowed`` states back to its queue now."""
        record = self.get_job(job_id)
        k = self.keys
        queue = str(record["queue"])
        reply = self.scripts.retry(
            keys=[k.jobs, k.failed, k.dead, k.cancelled, k.seq, k.queue(queue), k.notify(queue)],
            args=[job_id, ",".join(allowed)],
        )
        result = _text(reply[0])
        if result == "not_found":
            raise NotFoundError(f"no job with id {job_id!r}; see `queuectl list`")
        if result == "conflict":
            state, allowed_text = _text(reply[1]), " or ".join(allowed)
            raise ConflictError(f"job {job_id} is {state}; only {allowed_text} jobs can be retried")
        if result == "unreadable":
            raise ConflictError(
                f"job {job_id} has an unreadable record and cannot run; its original is in "
                f"the raw field of `queuectl show --json {job_id}`"
            )

    # --- workers -------------------------------------------------------------

    @_translate
    def beat_worker(self, name: str, info: Mapping[str, Any]) -> int:
        """Record that worker ``name`` is alive; returns Redis time in ms."""
        k = self.keys
        return int(
            self.scripts.worker_beat(keys=[k.workers, k.worker_info], args=[name, json.dumps(info)])
        )

    @_translate
    def workers(self) -> list[dict[str, Any]]:
        """Return every worker with a heartbeat record, newest beat first."""
        k = self.keys
        beats = self.client.zrevrange(k.workers, 0, -1, withscores=True)
        names = [_text(name) for name, _ in beats]
        infos = self.client.hmget(k.worker_info, names) if names else []
        result = []
        for (name, beat), info in zip(beats, infos, strict=True):
            entry = _json_or_empty(info)
            entry.update(name=_text(name), last_beat_ms=int(beat))
            result.append(entry)
        return result

    # --- reads ---------------------------------------------------------------

    @_translate
    def now_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    @_translate
    def get_job(self, job_id: str) -> dict[str, Any]:
        """Return a job's record; raise ``NotFoundError`` if there is none."""
        raw = self.client.hget(self.keys.jobs, job_id)
        if raw is None:
            raise NotFoundError(f"no job with id {job_id!r}; see `queuectl list`")
        return _decode_record(job_id, raw)

    @_translate
    def get_output(self, job_id: str) -> dict[str, str]:
        return _json_or_empty(self.client.hget(self.keys.output, job_id))

    @_translate
    def queue_names(self) -> list[str]:
        return sorted(_text(name) for name in self.client.smembers(self.keys.queues))

    @_translate
    def counts(self) -> dict[str, Any]:
        """Return the number of jobs in each state, and pending per queue."""
        k = self.keys
        queues = self.queue_names()
        others = [state for state in JOB_STATES if state != "pending"]
        pipe = self.client.pipeline(transaction=False)
        for state in others:
            pipe.zcard(k.state_set(state))
        for queue in queues:
            pipe.zcard(k.queue(queue))
        replies = pipe.execute()
        states = dict(zip(others, (int(n) for n in replies[: len(others)]), strict=True))
        pending = dict(zip(queues, (int(n) for n in replies[len(others) :]), strict=True))
        states["pending"] = sum(pending.values())
        return {
            "states": {state: states[state] for state in JOB_STATES},
            "pending_by_queue": pending,
        }

    @_translate
    def list_jobs(self, state: str | None, queue: str | None, limit: int) -> list[dict[str, Any]]:
        """Return up to ``limit`` job records, oldest first within each state."""
        states = [state] if state else list(JOB_STATES)
        queues = [queue] if queue else self.queue_names()
        found: list[dict[str, Any]] = []
        for name in states:
            if len(found) >= limit:
                break
            if name == "pending":
                ids = self._pending_ids(queues, limit - len(found))
            else:
                ids = self._state_ids(name, queue, limit - len(found))
            found += [record for record in self._records(ids) if record is not None]
        return found[:limit]

    def _pending_ids(self, queues: Sequence[str], limit: int) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.zrange(self.keys.queue(queue), 0, limit - 1, withscores=True)
        merged = sorted(
            ((score, _text(member)) for reply in pipe.execute() for member, score in reply),
        )
        return [member for _, member in merged[:limit]]

    def _state_ids(self, state: str, queue: str | None, limit: int) -> list[str]:
        key = self.keys.state_set(state)
        if queue is None:
            return [_text(i) for i in self.client.zrange(key, 0, limit - 1)]
        # Only pending jobs are indexed by queue; others are filtered page by page.
        page, start = 500, 0
        ids: list[str] = []
        while len(ids) < limit:
            chunk = [_text(i) for i in self.client.zrange(key, start, start + page - 1)]
            if not chunk:
                break
            for job_id, record in zip(chunk, self._records(chunk), strict=True):
                if record is not None and record.get("queue") == queue:
                    ids.append(job_id)
            start += page
        return ids[:limit]

    def _record(self, job_id: str) -> dict[str, Any] | None:
        raw = self.client.hget(self.keys.jobs, job_id)
        return None if raw is None else _decode_record(job_id, raw)

    def _records(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        raws = self.client.hmget(self.keys.jobs, list(ids))
        return [
            None if raw is None else _decode_record(i, raw)
            for i, raw in zip(ids, raws, strict=True)
        ]

    @_translate
    def ping(self) -> None:
        self.client.ping()


def _claim_reply(reply: Sequence[Any]) -> Claim:
    skipped = tuple(_text(item) for item in reply[3:])
    if reply[0] is None:
        return Claim(None, skipped)
    record = json.loads(reply[1])
    return Claim(Claimed(_text(reply[0]), str(int(reply[2])), record), skipped)


def _decode_record(job_id: str, raw: bytes | str) -> dict[str, Any]:
    # A record buried as unreadable keeps the original bytes, which need not be UTF-8.
    try:
        record = json.loads(_text(raw))
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {"id": job_id, "state": "unreadable", "queue": None, "raw": _text(raw)}
    return record


def _json_or_empty(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _lease(record: Mapping[str, Any]) -> str:
    return str(int(record["lease"]))


def _text(value: bytes | str | int) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
