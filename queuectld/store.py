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
from .scripts import DirectCall, Scripts, pack

# Jobs per enqueue script call; a bigger batch blocks Redis longer per call.
ENQUEUE_BATCH = 1000
# Enqueue script calls sent before reading the reply of the first, when no
# call can be rejected.  Redis then runs one batch while this process packs
# the next.
ENQUEUE_CALLS_IN_FLIGHT = 2
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
    """The reply of a claim: the jobs claimed, in order, and unreadable ids skipped."""

    jobs: tuple[Claimed, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def job(self) -> Claimed | None:
        return self.jobs[0] if self.jobs else None


@dataclass(frozen=True)
class Attempt:
    """An attempt's outcome to record, and how long after its claim it started."""

    job: Claimed
    outcome: Outcome
    started_after_ms: int = 0


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
    queues: tuple[str, ...] = ()


class Store:
    """A connection to one namespace, and every operation on it."""

    def __init__(self, config: Config, *, block_s: float = 0.0) -> None:
        self.config = config
        self.keys = Keys(config.redis.namespace)
        self.client = connect(config.redis, block_s=block_s)
        self.scripts = Scripts.register(self.client)
        self._finish: DirectCall | None = None
        # The pipelined enqueue calls, set up on first use.
        self._enqueue_call: DirectCall | None = None
        self._packed_keys: dict[
            tuple[tuple[str, ...], tuple[str, ...]], tuple[int, bytes, dict[str, int]]
        ] = {}

    def close(self) -> None:
        if self._finish is not None:
            self._finish.close()
        if self._enqueue_call is not None:
            self._enqueue_call.close()
        close(self.client)

    # --- enqueue -------------------------------------------------------------

    @_translate
    def enqueue(self, specs: Sequence[Spec], *, if_absent: bool = False) -> EnqueueResult:
        """Store new jobs.  Without ``if_absent`` an id in use raises ``ConflictError``.

        All jobs of one queue within one batch of ``ENQUEUE_BATCH`` are
        stored by one script call, all or none.  When the jobs need several
        calls (several queues or batches), the ids that the caller chose are
        checked for use before the first call writes.  Ids made by
        ``new_id`` skip that check, because no stored job can have one.
        An id that another client takes between the check and the write
        still fails only the later calls.
        """
        by_queue: dict[str, list[Spec]] = {}
        for spec in specs:
            by_queue.setdefault(spec.queue, []).append(spec)
        batches = [
            (queue, queue_specs[start : start + ENQUEUE_BATCH])
            for queue, queue_specs in by_queue.items()
            for start in range(0, len(queue_specs), ENQUEUE_BATCH)
        ]
        chosen_ids = [spec.id for spec in specs if not spec.id_generated]
        if len(batches) > 1 and chosen_ids and not if_absent:
            self._check_ids_free(chosen_ids)
        if len(batches) > 1 and (if_absent or not chosen_ids):
            replies = self._enqueue_in_flight(batches, if_absent)
        else:
            replies = [self._enqueue_batch(queue, batch, if_absent) for queue, batch in batches]
        created = 0
        existing: list[str] = []
        for reply in replies:
            created += int(reply[1])
            existing.extend(_text(item) for item in reply[2:])
        return EnqueueResult(created, tuple(existing))

    def _enqueue_batch(self, queue: str, specs: Sequence[Spec], if_absent: bool) -> list[Any]:
        keys, args = self._enqueue_arguments(queue, specs, if_absent)
        return _enqueue_reply(self.scripts.enqueue(keys=keys, args=args))

    def _enqueue_in_flight(
        self, batches: Sequence[tuple[str, Sequence[Spec]]], if_absent: bool
    ) -> list[list[Any]]:
        """Run the enqueue script on each batch, ``ENQUEUE_CALLS_IN_FLIGHT`` calls at a time.

        Only for batches that no call can reject, because a rejected call
        does not stop the calls already sent.  The first call goes through
        redis-py's ``Script``, which loads the script if Redis lacks it.
        The others go through a ``DirectCall``, whose packing took less than
        half the CPU time of redis-py 8.2's for a call of 1,000 jobs.
        """
        (first_queue, first_specs), *rest = batches
        replies = [self._enqueue_batch(first_queue, first_specs, if_absent)]
        if self._enqueue_call is None:
            self._enqueue_call = DirectCall(self.client, "enqueue")
        call = self._enqueue_call
        try:
            in_flight = 0
            for queue, specs in rest:
                keys, args = self._enqueue_arguments(queue, specs, if_absent)
                call.send(len(keys), pack(keys), args)
                in_flight += 1
                if in_flight == ENQUEUE_CALLS_IN_FLIGHT:
                    replies.append(_enqueue_reply(call.receive()))
                    in_flight -= 1
            for _ in range(in_flight):
                replies.append(_enqueue_reply(call.receive()))
        except BaseException:
            # Replies of calls still in flight are unread: start afresh next time.
            call.close()
            raise
        return replies

    def _enqueue_arguments(
        self, queue: str, specs: Sequence[Spec], if_absent: bool
    ) -> tuple[list[str], list[Any]]:
        """Return the keys and arguments of one enqueue script call."""
        k = self.keys
        keys = [k.jobs, k.seq, k.queues, k.scheduled, k.queue(queue), k.notify(queue)]
        args: list[Any] = [queue, "1" if if_absent else "0", k.wake]
        for spec in specs:
            args += [spec.id, spec.priority, spec.due(), spec.record_json()]
        return keys, args

    def _check_ids_free(self, ids: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(ids), ENQUEUE_BATCH):
            pipe.hmget(self.keys.jobs, ids[start : start + ENQUEUE_BATCH])
        records = [record for reply in pipe.execute() for record in reply]
        for id_, record in zip(ids, records, strict=True):
            if record is not None:
                raise _id_in_use(id_)

    # --- worker transitions --------------------------------------------------

    def worker_keys(self, queues: Sequence[str]) -> WorkerKeys:
        k = self.keys
        pairs: list[str] = []
        for queue in queues:
            pairs += [k.queue(queue), k.notify(queue)]
        return WorkerKeys(
            claim=[k.jobs, k.processing, k.seq, k.held, k.dead, *pairs],
            pairs=pairs,
            queues=tuple(queues),
        )

    @_translate
    def claim(self, worker: str, keys: WorkerKeys, lease_ms: int, count: int = 1) -> Claim:
        """Claim up to ``count`` of the best pending jobs of the worker's queues."""
        reply = self.scripts.claim(keys=keys.claim, args=[worker, lease_ms, count])
        return _claim_reply(reply)

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
        """Record one attempt's outcome while its lease holds; optionally claim one job.

        Returns status ``lost`` (and writes nothing about the job) when the
        lease was taken away.
        """
        results, following = self.finish_many(
            [Attempt(job, outcome)],
            worker=worker,
            history_limit=history_limit,
            claim_next=claim_next,
            claim_count=1 if claim_next is not None else 0,
            lease_ms=lease_ms,
        )
        return Finish(*results[0], following)

    @_translate
    def finish_many(
        self,
        attempts: Sequence[Attempt],
        *,
        worker: str,
        history_limit: int,
        claim_next: WorkerKeys | None = None,
        claim_count: int = 0,
        lease_ms: int = 0,
    ) -> tuple[list[tuple[str, str | None]], Claim | None]:
        """Record outcomes, then claim up to ``claim_count`` jobs, in one call.

        Returns ``(status, new state)`` per attempt, as ``finish`` does, and
        the claim (``None`` when nothing was to be claimed).
        """
        claim_count = claim_count if claim_next is not None else 0
        claim_queues = claim_next.queues if claim_next is not None else ()
        key_count, keys, pair_of = self._finish_keys(
            claim_queues, tuple(attempt.job.queue for attempt in attempts)
        )
        args: list[bytes | str | int] = [worker, history_limit, claim_count, lease_ms]
        args.append(len(claim_queues))
        for attempt in attempts:
            job, outcome = attempt.job, attempt.outcome
            args += [
                job.id,
                job.lease,
                outcome.kind,
                "" if outcome.exit_code is None else outcome.exit_code,
                "" if outcome.signal is None else outcome.signal,
                outcome.duration_ms,
                outcome.error,
                _output_json(outcome),
                outcome.retry_delay_ms,
                pair_of[job.queue],
                attempt.started_after_ms,
            ]
        reply = self._finish_call()(key_count, keys, args)
        count = len(attempts)
        results = [
            (_text(reply[2 * i]), _text(reply[2 * i + 1]) if reply[2 * i + 1] else None)
            for i in range(count)
        ]
        following = _claim_reply(reply[2 * count :]) if claim_count > 0 else None
        return results, following

    def _finish_call(self) -> DirectCall:
        if self._finish is None:
            self._finish = DirectCall(self.client, "finish")
        return self._finish

    def _finish_keys(
        self, claim_queues: tuple[str, ...], job_queues: tuple[str, ...]
    ) -> tuple[int, bytes, dict[str, int]]:
        """Return the finish script's keys, packed, and each queue's pair number.

        The queues to claim from come first; queues of finished jobs that
        are not among them follow.  The result is cached per combination.
        """
        cache_key = (claim_queues, job_queues)
        packed = self._packed_keys.get(cache_key)
        if packed is None:
            k = self.keys
            queues = list(claim_queues)
            queues += [q for q in dict.fromkeys(job_queues) if q not in claim_queues]
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
            ]
            for queue in queues:
                keys += [k.queue(queue), k.notify(queue)]
            pair_of = {queue: number for number, queue in enumerate(queues, start=1)}
            packed = self._packed_keys[cache_key] = (len(keys), pack(keys), pair_of)
        return packed

    @_translate
    def heartbeat(self, job: Claimed, lease_ms: int) -> int:
        """Renew the lease: 1 renewed, 2 renewed with a cancel requested, 0 lost."""
        k = self.keys
        return int(
            self.scripts.heartbeat(keys=[k.jobs, k.processing], args=[job.id, job.lease, lease_ms])
        )

    @_translate
    def reclaim(self, worker: str, *, started: bool = True) -> list[tuple[str, str]]:
        """Put back the jobs that Redis lists as held by ``worker``.

        With ``started`` (a previous process of the worker died holding
        them) each attempt counts as lost, unless its job was claimed in a
        batch.  Without it (the worker lost the reply of a claim and never
        ran those jobs) no attempt is counted.  Returns ``(job id, new
        state)`` for each job put back.
        """
        held = self.client.hget(self.keys.held, worker)
        words = _text(held).split() if held is not None else []
        pairs = list(zip(words[0::2], words[1::2], strict=False))
        ids = [job_id for job_id, _ in pairs]
        held = [
            (record["queue"], job_id, lease)
            for (job_id, lease), record in zip(pairs, self._records(ids), strict=True)
            if record is not None and isinstance(record.get("queue"), str)
        ]
        taken = self._requeue_by_queue("reclaim" if started else "release", held)
        # Entries whose job is gone or no longer holds that lease.
        self.client.hdel(self.keys.held, worker)
        return taken

    @_translate
    def release(self, jobs: Sequence[Claimed]) -> list[tuple[str, str]]:
        """Hand back claimed jobs that were never started; their attempt does not count."""
        return self._requeue_by_queue("release", [(job.queue, job.id, job.lease) for job in jobs])

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
        expired = [
            (str(record["queue"]), job_id, _lease(record))
            for job_id, record in zip(ids, self._records(ids), strict=True)
            if record is not None and record.get("lease") is not None
        ]
        return self._requeue_by_queue("expired", expired)

    def _requeue_by_queue(
        self, mode: str, jobs: Iterable[tuple[str, str, str]]
    ) -> list[tuple[str, str]]:
        """Run ``requeue_lost`` once per queue on ``(queue, id, lease token)`` triples."""
        by_queue: dict[str, list[tuple[str, str]]] = {}
        for queue, job_id, lease in jobs:
            by_queue.setdefault(queue, []).append((job_id, lease))
        taken: list[tuple[str, str]] = []
        for queue, pairs in by_queue.items():
            taken += self._requeue_lost(mode, queue, pairs)
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


def _output_json(outcome: Outcome) -> str:
    """Return the attempt's output as stored, or '' when it printed nothing."""
    if not outcome.stdout and not outcome.stderr:
        return ""
    return json.dumps({"stdout": outcome.stdout or "", "stderr": outcome.stderr or ""})


def _claim_reply(reply: Sequence[Any]) -> Claim:
    count = int(reply[0])
    jobs = tuple(
        Claimed(_text(reply[i]), str(int(reply[i + 2])), json.loads(reply[i + 1]))
        for i in range(1, 3 * count + 1, 3)
    )
    skipped = tuple(_text(item) for item in reply[3 * count + 1 :])
    return Claim(jobs, skipped)


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


def _enqueue_reply(reply: Any) -> list[Any]:
    """Return an enqueue script's reply, or raise ``ConflictError`` for an id in use."""
    if _text(reply[0]) == "conflict":
        raise _id_in_use(_text(reply[1]))
    return cast(list[Any], reply)


def _id_in_use(job_id: str) -> ConflictError:
    return ConflictError(
        f"job id {job_id!r} is already in use; choose another id, "
        "or pass --if-absent to keep the existing job"
    )


def _text(value: bytes | str | int) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
