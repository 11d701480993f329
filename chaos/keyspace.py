"""Checks of the Redis keyspace against the key schema of ``queuectld/keys.py``.

A snapshot reads every per-state set, every queue, the jobs hash and the
``held`` hash in one MULTI/EXEC transaction, so it is one consistent view
even while daemons run.  In it, each job id must be in exactly one place
(one state set or one queue), that place must agree with the record's
``state``, and every ``held`` pair must name a running job and its lease.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from queuectld.keys import JOB_STATES, Keys

STATE_SETS = tuple(state for state in JOB_STATES if state != "pending")


@dataclass
class Snapshot:
    """One consistent view of where every job is."""

    places: dict[str, list[str]]
    records: dict[str, dict[str, Any]]
    held: dict[str, str]
    output_ids: list[str]
    workers: list[str]
    worker_info: list[str]


def take_snapshot(client: redis.Redis, keys: Keys, queues: Iterable[str]) -> Snapshot:
    """Read every job's place and record atomically."""
    queue_names = sorted(set(queues) | set(client.smembers(keys.queues)))
    pipe = client.pipeline(transaction=True)
    for state in STATE_SETS:
        pipe.zrange(keys.state_set(state), 0, -1)
    for name in queue_names:
        pipe.zrange(keys.queue(name), 0, -1)
    pipe.hgetall(keys.jobs)
    pipe.hgetall(keys.held)
    pipe.hkeys(keys.output)
    pipe.zrange(keys.workers, 0, -1)
    pipe.hkeys(keys.worker_info)
    replies = pipe.execute()

    places: dict[str, list[str]] = {}
    for place, ids in zip(
        [*STATE_SETS, *(f"queue:{name}" for name in queue_names)], replies, strict=False
    ):
        for job_id in ids:
            places.setdefault(job_id, []).append(place)
    rest = replies[len(STATE_SETS) + len(queue_names) :]
    records = {}
    for job_id, raw in rest[0].items():
        try:
            records[job_id] = json.loads(raw)
        except ValueError:
            records[job_id] = {"state": "unparsable", "raw": raw}
    return Snapshot(places, records, rest[1], rest[2], rest[3], rest[4])


def inconsistencies(snapshot: Snapshot) -> list[str]:
    """Return every way the snapshot breaks the schema's rules; empty if none."""
    problems = _place_problems(snapshot)
    for job_id, record in sorted(snapshot.records.items()):
        if job_id not in snapshot.places:
            problems.append(f"job {job_id} ({record.get('state')}) is in no state set or queue")
    problems += _held_problems(snapshot)
    for job_id in sorted(set(snapshot.output_ids) - set(snapshot.records)):
        problems.append(f"output of job {job_id} is kept but the job record is gone")
    if sorted(snapshot.workers) != sorted(snapshot.worker_info):
        problems.append(
            f"workers set {sorted(snapshot.workers)} differs from worker_info "
            f"{sorted(snapshot.worker_info)}"
        )
    return problems


def _place_problems(snapshot: Snapshot) -> list[str]:
    """Check that each indexed job is in one place, which agrees with its record."""
    problems = []
    for job_id, places in sorted(snapshot.places.items()):
        if len(places) > 1:
            problems.append(f"job {job_id} is in {len(places)} places at once: {places}")
        record = snapshot.records.get(job_id)
        if record is None:
            problems.append(f"job {job_id} is in {places[0]} but has no record")
            continue
        place = places[0]
        state = record.get("state")
        if place.startswith("queue:"):
            if state != "pending" or f"queue:{record.get('queue')}" != place:
                problems.append(
                    f"job {job_id} is in {place} but its record says {state} "
                    f"in queue {record.get('queue')}"
                )
        elif state != place:
            problems.append(f"job {job_id} is in the {place} set but its record says {state}")
        if state == "processing" and record.get("lease") is None:
            problems.append(f"job {job_id} is processing without a lease")
    return problems


def _held_problems(snapshot: Snapshot) -> list[str]:
    """Check that every ``held`` pair names a running job, its lease and its worker."""
    problems = []
    for worker, entry in sorted(snapshot.held.items()):
        words = entry.split()
        for job_id, lease in zip(words[0::2], words[1::2], strict=False):
            record = snapshot.records.get(job_id, {})
            if record.get("state") != "processing" or str(record.get("lease")) != lease:
                problems.append(
                    f"held entry {worker} -> {job_id} {lease} names a job that is "
                    f"{record.get('state')} with lease {record.get('lease')}"
                )
            elif record.get("worker") != worker:
                problems.append(
                    f"held entry {worker} -> {job_id} but the job's worker is "
                    f"{record.get('worker')}"
                )
        if len(words) % 2:
            problems.append(f"held entry {worker} -> {entry} is not pairs of id and lease")
    return problems


def schema_keys(keys: Keys) -> dict[str, str]:
    """Return the fixed key names of the schema and their Redis types."""
    fixed = {
        keys.jobs: "hash",
        keys.output: "hash",
        keys.seq: "string",
        keys.queues: "set",
        keys.held: "hash",
        keys.workers: "zset",
        keys.worker_info: "hash",
        keys.scheduler: "string",
    }
    for state in STATE_SETS:
        fixed[keys.state_set(state)] = "zset"
    return fixed


def orphan_keys(client: redis.Redis, keys: Keys) -> list[str]:
    """Return every key of the database that the key schema does not define.

    Per-queue keys count only for queue names in the ``queues`` set.  The
    database is private to the run, so a key outside the namespace is an
    orphan too.
    """
    fixed = schema_keys(keys)
    queues = set(client.smembers(keys.queues))
    for name in queues:
        fixed[keys.queue(name)] = "zset"
        fixed[keys.notify(name)] = "list"
    orphans = []
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        if key not in fixed:
            orphans.append(f"{key} ({kind})")
        elif fixed[key] != kind:
            orphans.append(f"{key} is a {kind}, the schema says {fixed[key]}")
    return orphans


def key_sizes(client: redis.Redis) -> dict[str, tuple[str, int]]:
    """Return each key's type and element count (1 for a string)."""
    counters = {
        "hash": client.hlen,
        "zset": client.zcard,
        "set": client.scard,
        "list": client.llen,
        "string": lambda key: 1,
    }
    sizes = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        sizes[key] = (kind, int(counters[kind](key)) if kind in counters else -1)
    return sizes
