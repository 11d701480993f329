"""Enqueue through the library: batches, id checks and the records the script builds.

A request of more than one script call (several queues, or more than
``ENQUEUE_BATCH`` jobs) checks the ids its caller chose before anything is
written, and sends its calls two at a time when no call can be rejected.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from harness import Env

from queuectld import store as store_module
from queuectld.errors import ConflictError, RedisCommandError
from queuectld.jobs import Spec, new_id, validate
from queuectld.store import ENQUEUE_BATCH, Store

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# common.lua scores a pending job -priority * PRIORITY_STEP + seq.
PRIORITY_STEP = 4398046511104


def make_specs(env: Env, count: int, **fields: Any) -> list[Spec]:
    return [validate({"command": ["true"], **fields}, env.config.jobs) for _ in range(count)]


def spy_on_id_check(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the ids of every ``Store._check_ids_free`` call, and still run it."""
    calls: list[list[str]] = []
    check = Store._check_ids_free

    def recording(self: Store, ids: list[str]) -> None:
        calls.append(list(ids))
        check(self, ids)

    monkeypatch.setattr(Store, "_check_ids_free", recording)
    return calls


def raw_record(store: Store, job_id: str) -> dict[str, Any]:
    data = store.client.hget(store.keys.jobs, job_id)
    assert data is not None, f"no record for {job_id}"
    record: dict[str, Any] = json.loads(data)
    return record


def test_new_id_is_time_then_random() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(2000)]
    after_ms = time.time_ns() // 1_000_000

    for job_id in ids:
        assert len(job_id) == 26
        assert set(job_id) <= set(CROCKFORD), job_id
        stamp = 0
        for digit in job_id[:10]:
            stamp = stamp * 32 + CROCKFORD.index(digit)
        assert before_ms <= stamp <= after_ms
    assert len(set(ids)) == len(ids)
    assert set("".join(job_id[10:] for job_id in ids)) == set(CROCKFORD)


RECORD_CASES = {
    "minimal": {"command": ["true"]},
    "escapes": {"command": ["printf", '"%s"\\n\t/', "\x01\x1f\x7f", "é 😀 \u2028"]},
    "every field": {
        "id": "job-1.a:b_c",
        "command": "echo 'two words' three",
        "queue": "mail",
        "priority": -1000,
        "max_retries": 0,
        "timeout": 0.001,
        "env": {"A": "1", "B_2": 'x="y"', "EMPTY": "", "UNICODE": "ü"},
        "cwd": "/srv/dir with space/é",
        "delay": 1.5,
    },
    "integer timeout": {"command": ["true"], "timeout": 42, "priority": 1000},
    "large timeout": {"command": ["true"], "timeout": 31622400.0, "run_at": "2030-01-01T00:00:00Z"},
}


@pytest.mark.parametrize("fields", RECORD_CASES.values(), ids=RECORD_CASES.keys())
def test_record_json_matches_json_dumps(env: Env, fields: dict[str, Any]) -> None:
    spec = validate(fields, env.config.jobs)
    record: dict[str, Any] = {
        "id": spec.id,
        "command": list(spec.command),
        "queue": spec.queue,
        "priority": spec.priority,
        "max_retries": spec.max_retries,
        "timeout": spec.timeout_s,
    }
    if spec.env:
        record["env"] = dict(spec.env)
    if spec.cwd is not None:
        record["cwd"] = spec.cwd

    assert spec.record_json() == json.dumps(record, separators=(",", ":"))


def test_generated_ids_skip_the_id_check(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = spy_on_id_check(monkeypatch)
    specs = make_specs(env, 2 * ENQUEUE_BATCH + 500)
    store = env.store()

    result = store.enqueue(specs)

    assert checks == []
    assert result.created == len(specs)
    assert result.existing == ()
    assert store.counts()["pending_by_queue"] == {"default": len(specs)}
    seqs = [raw_record(store, spec.id)["seq"] for spec in specs]
    assert seqs == list(range(1, len(specs) + 1)), "FIFO order must follow the request"


def test_chosen_ids_checked_before_writing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.enqueue(["true"], id="existing")
    checks = spy_on_id_check(monkeypatch)
    specs = make_specs(env, 2 * ENQUEUE_BATCH + 500)
    # In use, and in the third script call of 1000 jobs.
    specs[2400] = validate({"id": "existing", "command": ["false"]}, env.config.jobs)
    specs[10] = validate({"id": "chosen", "command": ["true"]}, env.config.jobs)
    before = env.dump()

    with pytest.raises(ConflictError, match="existing"):
        env.store().enqueue(specs)

    assert checks == [["chosen", "existing"]]
    assert env.dump() == before


def test_if_absent_across_calls_reports_existing(env: Env) -> None:
    env.enqueue(["true"], id="kept-1")
    env.enqueue(["true"], id="kept-2")
    specs = make_specs(env, 2 * ENQUEUE_BATCH + 500)
    specs[5] = validate({"id": "kept-1", "command": ["false"]}, env.config.jobs)
    specs[2100] = validate({"id": "kept-2", "command": ["false"]}, env.config.jobs)
    store = env.store()

    result = store.enqueue(specs, if_absent=True)

    assert result.created == len(specs) - 2
    assert result.existing == ("kept-1", "kept-2")
    assert store.get_job("kept-1")["command"] == ["true"]
    assert store.get_job("kept-2")["command"] == ["true"]
    assert store.counts()["pending_by_queue"] == {"default": len(specs)}


def test_script_builds_each_record(env: Env) -> None:
    store = env.store()
    now_ms = store.now_ms()
    specs = [
        validate({"id": "first", "command": ["true"], "priority": 5}, env.config.jobs),
        validate({"id": "later", "command": ["true"], "delay": 60}, env.config.jobs),
        validate(
            {"id": "past", "command": ["true"], "run_at": "2001-01-01T00:00:00Z"},
            env.config.jobs,
        ),
        validate(
            {
                "id": "full",
                "command": ["printf", "%s\n", 'é "quoted" \\ /'],
                "priority": -3,
                "env": {"GREETING": "hello world"},
                "cwd": "/tmp",
                "timeout": 2.5,
                "max_retries": 7,
            },
            env.config.jobs,
        ),
    ]

    store.enqueue(specs)

    first, later, past, full = (raw_record(store, spec.id) for spec in specs)
    assert first["state"] == "pending"
    assert first["seq"] == 1
    assert first["attempts"] == 0
    assert first["created_ms"] >= now_ms
    assert first["run_at_ms"] == first["created_ms"]
    assert later["state"] == "scheduled"
    assert "seq" not in later, "a scheduled job takes its sequence number when it is due"
    assert later["run_at_ms"] == later["created_ms"] + 60_000
    assert past["state"] == "pending"
    assert past["seq"] == 2
    assert past["run_at_ms"] == 978307200000
    assert full["seq"] == 3
    assert full["command"] == ["printf", "%s\n", 'é "quoted" \\ /']
    assert full["env"] == {"GREETING": "hello world"}
    assert full["cwd"] == "/tmp"
    assert full["timeout"] == 2.5
    assert full["max_retries"] == 7
    assert set(full) == {
        "id", "command", "queue", "priority", "max_retries", "timeout", "env", "cwd",
        "state", "seq", "attempts", "created_ms", "run_at_ms",
    }  # fmt: skip
    queue = store.keys.queue("default")
    assert store.client.zscore(queue, "first") == -5 * PRIORITY_STEP + 1
    assert store.client.zscore(queue, "full") == 3 * PRIORITY_STEP + 3
    assert store.client.zscore(store.keys.scheduled, "later") == later["run_at_ms"]


def test_built_record_is_claimable(env: Env) -> None:
    store = env.store()
    store.enqueue([validate({"id": "j", "command": ["echo", "a b"]}, env.config.jobs)])

    job = store.claim("host:1", store.worker_keys(("default",)), 5000).job

    assert job is not None
    assert job.id == "j"
    assert job.command == ["echo", "a b"]
    assert job.attempts == 1
    assert job.timeout_s == env.config.jobs.timeout_s


def test_batch_larger_than_script_chunk(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # One script call of 4500 jobs sends HMGET, HSET and ZADD in several chunks.
    monkeypatch.setattr(store_module, "ENQUEUE_BATCH", 4500)
    env.enqueue(["true"], id="kept")
    specs = make_specs(env, 4499)
    specs.insert(3000, validate({"id": "kept", "command": ["false"]}, env.config.jobs))
    store = env.store()
    before = env.dump()

    with pytest.raises(ConflictError, match="kept"):
        store.enqueue(specs)
    unchanged = env.dump()
    result = store.enqueue(specs, if_absent=True)

    assert unchanged == before
    assert result.created == 4499
    assert result.existing == ("kept",)
    assert store.counts()["pending_by_queue"] == {"default": 4500}
    seqs = [raw_record(store, spec.id)["seq"] for spec in specs if spec.id != "kept"]
    assert seqs == list(range(2, 4501))


def test_error_in_later_call_is_reported(env: Env) -> None:
    store = env.store()
    # A key of the wrong type makes the second queue's script call fail.
    store.client.set(store.keys.queue("broken"), "not a sorted set")
    specs = make_specs(env, ENQUEUE_BATCH, queue="fine") + make_specs(env, 10, queue="broken")

    with pytest.raises(RedisCommandError, match="WRONGTYPE"):
        store.enqueue(specs)

    assert store.counts()["pending_by_queue"] == {"fine": ENQUEUE_BATCH}
    store.ping()


def test_many_requests_reuse_one_extra_connection(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each request of three batches sends two of them on the pipelined connection.
    monkeypatch.setattr(store_module, "ENQUEUE_BATCH", 2)
    store = env.store()

    for _ in range(150):
        store.enqueue(make_specs(env, 6))

    assert store.counts()["pending_by_queue"] == {"default": 900}
    clients = store.client.client_list()
    assert len(clients) <= 3, clients
