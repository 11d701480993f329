"""Every state transition, driven through the library against real Redis.

These tests call ``Store`` directly, as the daemons do, so each transition
and its fencing rule is checked without timing races.  The daemon tests in
the other files run the same transitions end to end.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from harness import Env, wait_until

from queuectld.errors import ConflictError, NotFoundError, RedisUnavailableError
from queuectld.jobs import Claimed
from queuectld.keys import Keys
from queuectld.store import Attempt, Outcome, Store

WORKER = "host:1"
HISTORY = 20


def claim(store: Store, queues: tuple[str, ...] = ("default",), lease_ms: int = 5000) -> Claimed:
    job = store.claim(WORKER, store.worker_keys(queues), lease_ms).job
    assert job is not None, "expected a pending job to claim"
    return job


def finish(store: Store, job: Claimed, kind: str, **fields: Any) -> str | None:
    result = store.finish(job, Outcome(kind, **fields), worker=WORKER, history_limit=HISTORY)
    assert result.status == "ok", f"finish of {job.id} returned {result.status}"
    return result.state


def score(env: Env, key: str, job_id: str) -> float | None:
    client = env.server.client()
    try:
        value = client.zscore("{" + env.namespace + "}:" + key, job_id)
    finally:
        client.close()
    return None if value is None else float(value)


def test_enqueue_puts_job_in_its_queue(env: Env) -> None:
    env.enqueue(["true"], id="a", queue="mail")
    store = env.store()

    record = store.get_job("a")

    assert record["state"] == "pending"
    assert record["attempts"] == 0
    assert record["run_at_ms"] == record["created_ms"]
    assert score(env, "queue:mail", "a") is not None
    assert store.queue_names() == ["mail"]
    assert store.counts()["pending_by_queue"] == {"mail": 1}


def test_enqueue_with_delay_schedules_job(env: Env) -> None:
    env.enqueue(["true"], id="later", delay=30)
    record = env.store().get_job("later")

    assert record["state"] == "scheduled"
    assert record["run_at_ms"] == record["created_ms"] + 30_000
    assert score(env, "scheduled", "later") == record["run_at_ms"]
    assert score(env, "queue:default", "later") is None


def test_claim_order_is_priority_then_fifo(env: Env) -> None:
    # Enqueued in this order, across two queues; claimed by priority, then age.
    for job_id, queue, priority in [
        ("low-1", "a", -5),
        ("mid-1", "b", 0),
        ("high-1", "a", 10),
        ("mid-2", "a", 0),
        ("high-2", "b", 10),
        ("mid-3", "b", 0),
        ("other", "c", 100),
    ]:
        env.enqueue(["true"], id=job_id, queue=queue, priority=priority)
    store = env.store()

    order = [claim(store, ("a", "b")).id for _ in range(6)]

    assert order == ["high-1", "high-2", "mid-1", "mid-2", "mid-3", "low-1"]
    assert store.claim(WORKER, store.worker_keys(("a", "b")), 1000).job is None
    assert store.get_job("other")["state"] == "pending", "queue c is not the worker's"


def test_claim_gives_lease_and_records_worker(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    before_ms = store.now_ms()

    job = claim(store, lease_ms=5000)
    record = store.get_job("j")

    assert record["state"] == "processing"
    assert record["attempts"] == 1
    assert record["worker"] == WORKER
    assert str(record["lease"]) == job.lease
    assert record["started_ms"] >= before_ms
    deadline = score(env, "processing", "j")
    assert deadline is not None
    assert before_ms + 5000 <= deadline <= store.now_ms() + 5000
    assert env.server.client().hget("{" + env.namespace + "}:held", WORKER) == (
        f"j {job.lease}".encode()
    )


def test_heartbeat_renews_only_own_lease(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    job = claim(store, lease_ms=1000)
    first = score(env, "processing", "j")
    time.sleep(0.05)

    renewed = store.heartbeat(job, 5000)
    stale = store.heartbeat(Claimed(job.id, str(int(job.lease) + 1), job.record), 5000)

    assert renewed == 1
    second = score(env, "processing", "j")
    assert first is not None and second is not None
    assert second >= first + 4000
    assert stale == 0


def test_heartbeat_reports_cancel_request(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    job = claim(store)

    assert store.cancel("j") == "requested"
    assert store.heartbeat(job, 5000) == 2
    assert store.get_job("j")["state"] == "processing"


def test_finish_completed_stores_outcome(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    job = claim(store)

    state = finish(store, job, "completed", exit_code=0, duration_ms=12, stdout="out", stderr="")
    record = store.get_job("j")

    assert state == "completed"
    assert record["state"] == "completed"
    assert record["exit_code"] == 0
    assert record["duration_ms"] == 12
    assert "lease" not in record
    assert score(env, "completed", "j") == record["finished_ms"]
    assert score(env, "processing", "j") is None
    assert store.get_output("j") == {"stdout": "out", "stderr": ""}
    assert [entry["outcome"] for entry in record["history"]] == ["completed"]
    assert env.server.client().hget("{" + env.namespace + "}:held", WORKER) is None


def test_failed_job_waits_then_becomes_pending(env: Env) -> None:
    env.enqueue(["false"], id="j", max_retries=2)
    store = env.store()
    job = claim(store)

    state = finish(store, job, "failed", exit_code=1, error="exited 1", retry_delay_ms=300)
    record = store.get_job("j")
    early = store.move_due(100)

    assert state == "failed"
    assert record["next_run_ms"] == score(env, "failed", "j")
    assert early.moved == 0, "moved before its backoff passed"
    assert early.next_due_ms == record["next_run_ms"]
    wait_until(lambda: store.move_due(100).moved == 1, "the retry to become due", 5)
    record = store.get_job("j")
    assert record["state"] == "pending"
    assert record["attempts"] == 1
    assert "next_run_ms" not in record
    assert claim(store).attempts == 2


def test_failed_without_retries_goes_dead(env: Env) -> None:
    env.enqueue(["false"], id="j", max_retries=1)
    store = env.store()
    finish(store, claim(store), "failed", exit_code=1, error="exited 1", retry_delay_ms=0)
    store.move_due(100)

    state = finish(store, claim(store), "failed", exit_code=1, error="exited 1")
    record = store.get_job("j")

    assert state == "dead"
    assert record["attempts"] == 2
    assert record["error"] == "exited 1 (no retries left)"
    assert score(env, "dead", "j") == record["finished_ms"]
    assert [entry["outcome"] for entry in record["history"]] == ["failed", "failed"]


def test_spawn_failure_goes_straight_to_dead(env: Env) -> None:
    env.enqueue(["missing-program"], id="j", max_retries=5)
    store = env.store()

    state = finish(store, claim(store), "dead", error="command not found: missing-program")

    assert state == "dead"
    assert store.get_job("j")["error"] == "command not found: missing-program"


def test_finish_with_lost_lease_changes_nothing(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    old = claim(store, lease_ms=1)
    time.sleep(0.01)
    assert store.reap(100) == [("j", "pending")]
    newer = claim(store)
    finish(store, newer, "completed", exit_code=0, stdout="new")
    before = env.dump()

    late = store.finish(
        old, Outcome("failed", exit_code=3, stdout="old"), worker=WORKER, history_limit=HISTORY
    )

    assert late.status == "lost"
    assert env.dump() == before
    assert store.get_output("j")["stdout"] == "new"


def test_requeue_does_not_count_attempt(env: Env) -> None:
    env.enqueue(["true"], id="first")
    env.enqueue(["true"], id="second")
    store = env.store()
    job = claim(store)

    state = finish(store, job, "requeue", error="worker stopped before the job finished")
    record = store.get_job("first")

    assert state == "pending"
    assert record["attempts"] == 0
    assert record["history"][-1]["outcome"] == "requeue"
    assert claim(store).id == "first", "a requeued job keeps its place in the queue"


def test_finish_can_claim_next_job(env: Env) -> None:
    env.enqueue(["true"], id="one")
    env.enqueue(["true"], id="two")
    store = env.store()
    keys = store.worker_keys(("default",))
    job = claim(store)

    result = store.finish(
        job,
        Outcome("completed"),
        worker=WORKER,
        history_limit=HISTORY,
        claim_next=keys,
        lease_ms=5000,
    )

    assert result.status == "ok"
    assert result.next is not None
    assert result.next.job is not None
    assert result.next.job.id == "two"
    assert store.get_job("two")["state"] == "processing"


def test_attempt_without_output_clears_the_earlier_output(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    finish(store, claim(store), "requeue", stdout="first attempt\n", stderr="")
    assert store.get_output("j") == {"stdout": "first attempt\n", "stderr": ""}

    finish(store, claim(store), "completed", exit_code=0, stdout="", stderr="")

    assert store.get_output("j") == {}


def test_finish_survives_a_flushed_script_cache(env: Env) -> None:
    env.enqueue(["true"], id="one")
    env.enqueue(["true"], id="two")
    store = env.store()
    finish(store, claim(store), "completed")
    # As after a restart of Redis: the scripts the worker loaded are gone.
    store.client.script_flush()

    assert finish(store, claim(store), "completed") == "completed"
    assert store.get_job("two")["state"] == "completed"


def test_finish_after_a_broken_connection_reconnects(env: Env) -> None:
    env.enqueue(["true"], id="one")
    env.enqueue(["true"], id="two")
    store = env.store()
    finish(store, claim(store), "completed")
    job = claim(store)
    # Closes the finish call's own connection; the pool's connection sends this.
    store.client.client_kill_filter(_type="normal", skipme=True)

    with pytest.raises(RedisUnavailableError):
        finish(store, job, "completed")
    assert finish(store, job, "completed", exit_code=0, stdout="out", stderr="") == "completed"
    assert store.get_output("two") == {"stdout": "out", "stderr": ""}


def held_entry(env: Env) -> str | None:
    client = env.server.client()
    try:
        value = client.hget("{" + env.namespace + "}:held", WORKER)
    finally:
        client.close()
    return None if value is None else value.decode()


def test_claim_takes_a_batch_in_queue_order(env: Env) -> None:
    for n in range(4):
        env.enqueue(["true"], id=f"j{n}", priority=1 if n == 3 else 0)
    store = env.store()

    result = store.claim(WORKER, store.worker_keys(("default",)), 5000, count=3)

    assert [job.id for job in result.jobs] == ["j3", "j0", "j1"]
    leases = [job.lease for job in result.jobs]
    assert held_entry(env) == " ".join(f"{job.id} {job.lease}" for job in result.jobs)
    assert len(set(leases)) == 3
    for job in result.jobs:
        record = store.get_job(job.id)
        assert record["state"] == "processing"
        assert record["batch"] is True
    assert store.get_job("j2")["state"] == "pending"


def test_claim_of_one_job_is_not_a_batch(env: Env) -> None:
    env.enqueue(["true"], id="only")
    store = env.store()

    result = store.claim(WORKER, store.worker_keys(("default",)), 5000, count=8)

    assert [job.id for job in result.jobs] == ["only"]
    assert "batch" not in store.get_job("only")


def test_finish_many_records_and_claims(env: Env) -> None:
    for n in range(5):
        env.enqueue(["true"], id=f"j{n}")
    store = env.store()
    keys = store.worker_keys(("default",))
    first = store.claim(WORKER, keys, 5000, count=2).jobs
    claimed_ms = store.get_job("j1")["started_ms"]
    attempts = [
        Attempt(first[0], Outcome("completed", exit_code=0, stdout="a\n"), 0),
        Attempt(first[1], Outcome("failed", exit_code=1, error="exited with code 1"), 40),
    ]

    results, following = store.finish_many(
        attempts, worker=WORKER, history_limit=HISTORY, claim_next=keys, claim_count=3
    )

    assert results == [("ok", "completed"), ("ok", "failed")]
    assert following is not None
    assert [job.id for job in following.jobs] == ["j2", "j3", "j4"]
    assert held_entry(env) == " ".join(f"{job.id} {job.lease}" for job in following.jobs)
    assert store.get_output("j0") == {"stdout": "a\n", "stderr": ""}
    # The second job started 40 ms after the claim.
    assert store.get_job("j1")["history"][-1]["started_ms"] == claimed_ms + 40
    assert "batch" not in store.get_job("j0")


def test_finish_many_skips_lost_lease(env: Env) -> None:
    env.enqueue(["true"], id="kept")
    env.enqueue(["true"], id="taken")
    store = env.store()
    jobs = store.claim(WORKER, store.worker_keys(("default",)), 5000, count=2).jobs
    stale = Claimed(jobs[1].id, "1", jobs[1].record)

    results, following = store.finish_many(
        [Attempt(jobs[0], Outcome("completed")), Attempt(stale, Outcome("completed"))],
        worker=WORKER,
        history_limit=HISTORY,
    )

    assert results == [("ok", "completed"), ("lost", None)]
    assert following is None
    assert store.get_job("taken")["state"] == "processing"
    assert held_entry(env) == f"taken {jobs[1].lease}"


def test_reclaim_of_a_batch_does_not_count_attempts(env: Env) -> None:
    for n in range(3):
        env.enqueue(["true"], id=f"j{n}", max_retries=0)
    store = env.store()
    store.claim(WORKER, store.worker_keys(("default",)), 5000, count=3)

    taken = store.reclaim(WORKER)

    assert sorted(taken) == [("j0", "pending"), ("j1", "pending"), ("j2", "pending")]
    for n in range(3):
        record = store.get_job(f"j{n}")
        assert record["attempts"] == 0
        assert record["history"][-1]["outcome"] == "lost"
        assert "claimed in a batch" in record["error"]
    assert held_entry(env) is None
    # They keep their places in the queue.
    assert [
        job.id for job in store.claim(WORKER, store.worker_keys(("default",)), 5000, 3).jobs
    ] == [
        "j0",
        "j1",
        "j2",
    ]


def test_release_hands_back_unstarted_jobs(env: Env) -> None:
    for n in range(3):
        env.enqueue(["true"], id=f"j{n}")
    store = env.store()
    jobs = store.claim(WORKER, store.worker_keys(("default",)), 5000, count=3).jobs

    taken = store.release(jobs[1:])

    assert taken == [("j1", "pending"), ("j2", "pending")]
    assert held_entry(env) == f"j0 {jobs[0].lease}"
    for job_id in ("j1", "j2"):
        record = store.get_job(job_id)
        assert record["attempts"] == 0
        assert "history" not in record or record["history"] == []
        assert "batch" not in record


def test_reap_takes_only_expired_leases(env: Env) -> None:
    env.enqueue(["true"], id="alive")
    env.enqueue(["true"], id="dead-worker")
    store = env.store()
    claim(store, lease_ms=60_000)
    claim(store, lease_ms=1)
    time.sleep(0.01)

    taken = store.reap(100)
    lost = store.get_job("dead-worker")

    assert taken == [("dead-worker", "pending")]
    assert store.get_job("alive")["state"] == "processing"
    assert lost["state"] == "pending"
    assert lost["attempts"] == 1
    assert lost["history"][-1]["outcome"] == "lost"
    assert lost["error"].startswith("worker lost: no heartbeat")
    assert store.reap(100) == []


def test_reap_dead_letters_when_retries_spent(env: Env) -> None:
    env.enqueue(["true"], id="j", max_retries=0)
    store = env.store()
    claim(store, lease_ms=1)
    time.sleep(0.01)

    assert store.reap(100) == [("j", "dead")]
    record = store.get_job("j")
    assert record["state"] == "dead"
    assert record["error"].endswith("(no retries left)")


def test_reclaim_takes_back_held_job(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    claim(store, lease_ms=60_000)

    taken = store.reclaim(WORKER)
    record = store.get_job("j")

    assert taken == [("j", "pending")]
    assert record["history"][-1]["outcome"] == "lost"
    assert "restarted" in record["error"]
    assert store.reclaim(WORKER) == []


@pytest.mark.parametrize("how", ["pending", "scheduled", "failed"])
def test_cancel_waiting_job(env: Env, how: str) -> None:
    store = env.store()
    if how == "scheduled":
        env.enqueue(["true"], id="j", delay=60)
    else:
        env.enqueue(["true"], id="j")
    if how == "failed":
        finish(store, claim(store), "failed", exit_code=1, retry_delay_ms=60_000)
    assert store.get_job("j")["state"] == how

    assert store.cancel("j") == "cancelled"
    record = store.get_job("j")
    assert record["state"] == "cancelled"
    assert score(env, "cancelled", "j") == record["finished_ms"]
    assert score(env, "queue:default", "j") is None
    assert score(env, "scheduled", "j") is None
    assert score(env, "failed", "j") is None


def test_cancel_finished_or_unknown_rejected(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    finish(store, claim(store), "completed")

    with pytest.raises(ConflictError, match="already completed"):
        store.cancel("j")
    with pytest.raises(NotFoundError, match="nosuch"):
        store.cancel("nosuch")


def test_retry_dead_job_starts_over(env: Env) -> None:
    env.enqueue(["true"], id="j", max_retries=0)
    store = env.store()
    finish(store, claim(store), "failed", exit_code=1)
    assert store.get_job("j")["state"] == "dead"

    store.retry("j", ("dead",))
    record = store.get_job("j")

    assert record["state"] == "pending"
    assert record["attempts"] == 0
    assert "finished_ms" not in record
    assert score(env, "dead", "j") is None
    assert len(record["history"]) == 1, "history keeps the earlier attempt"


def test_retry_failed_job_keeps_attempts(env: Env) -> None:
    env.enqueue(["true"], id="j", max_retries=3)
    store = env.store()
    finish(store, claim(store), "failed", exit_code=1, retry_delay_ms=60_000)

    store.retry("j", ("failed", "dead", "cancelled"))

    assert store.get_job("j")["state"] == "pending"
    assert store.get_job("j")["attempts"] == 1
    assert score(env, "failed", "j") is None


def test_retry_in_wrong_state_is_rejected(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    env.enqueue(["true"], id="cancelled-job")
    store.cancel("cancelled-job")

    with pytest.raises(ConflictError, match="is pending"):
        store.retry("j", ("failed", "dead", "cancelled"))
    with pytest.raises(ConflictError, match="is cancelled"):
        store.retry("cancelled-job", ("dead",))
    with pytest.raises(NotFoundError):
        store.retry("nosuch", ("dead",))


def test_remove_finished_respects_age(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    finish(store, claim(store), "completed", stdout="x")

    kept = store.remove_finished("completed", 3600, 100)
    removed = store.remove_finished("completed", 0, 100)

    assert kept == 0
    assert removed == 1
    with pytest.raises(NotFoundError):
        store.get_job("j")
    assert store.get_output("j") == {}
    assert score(env, "completed", "j") is None


def test_unreadable_record_is_buried_on_claim(env: Env) -> None:
    env.enqueue(["true"], id="broken")
    env.enqueue(["true"], id="fine")
    client = env.server.client()
    client.hset("{" + env.namespace + "}:jobs", "broken", b"{not json\xff")
    store = env.store()

    result = store.claim(WORKER, store.worker_keys(("default",)), 5000)
    record = store.get_job("broken")

    assert result.skipped == ("broken",)
    assert result.job is not None
    assert result.job.id == "fine"
    assert record["state"] == "dead"
    assert "unreadable" in record["error"]
    assert record["raw"] == "{not json\ufffd"
    assert score(env, "dead", "broken") is not None


def test_unreadable_scheduled_record_is_buried(env: Env) -> None:
    env.enqueue(["true"], id="broken", delay=0.05)
    client = env.server.client()
    client.hset("{" + env.namespace + "}:jobs", "broken", "[1, 2]")
    store = env.store()
    time.sleep(0.1)

    store.move_due(100)

    assert store.get_job("broken")["state"] == "dead"
    assert score(env, "scheduled", "broken") is None


def test_history_keeps_newest_attempts(env: Env) -> None:
    env.enqueue(["false"], id="j", max_retries=5)
    store = env.store()
    for _ in range(4):
        job = claim(store)
        store.finish(
            job,
            Outcome("failed", exit_code=job.attempts),
            worker=WORKER,
            history_limit=2,
        )
        store.retry("j", ("failed",))

    history = store.get_job("j")["history"]

    assert [entry["attempt"] for entry in history] == [3, 4]
    assert [entry["exit_code"] for entry in history] == [3, 4]


@pytest.mark.parametrize("recovery", ["reap", "reclaim"])
def test_cancel_request_survives_lost_worker(env: Env, recovery: str) -> None:
    env.enqueue(["sleep", "60"], id="j")
    store = env.store()
    claim(store, lease_ms=1)
    assert store.cancel("j") == "requested"
    time.sleep(0.01)

    taken = store.reap(100) if recovery == "reap" else store.reclaim(WORKER)
    record = store.get_job("j")

    assert taken == [("j", "cancelled")]
    assert record["state"] == "cancelled"
    assert score(env, "cancelled", "j") == record["finished_ms"]
    assert score(env, "queue:default", "j") is None
    assert record["history"][-1]["outcome"] == "lost"


def test_release_hands_back_without_attempt(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    claim(store, lease_ms=60_000)

    taken = store.reclaim(WORKER, started=False)
    record = store.get_job("j")

    assert taken == [("j", "pending")]
    assert record["attempts"] == 0
    assert "history" not in record
    assert claim(store).id == "j"


def test_key_names_match_schema() -> None:
    keys = Keys("queuectl")

    assert keys.jobs == "{queuectl}:jobs"
    assert keys.output == "{queuectl}:output"
    assert keys.seq == "{queuectl}:seq"
    assert keys.queues == "{queuectl}:queues"
    assert keys.queue("mail") == "{queuectl}:queue:mail"
    assert keys.notify("mail") == "{queuectl}:notify:mail"
    assert keys.scheduled == "{queuectl}:scheduled"
    assert keys.failed == "{queuectl}:failed"
    assert keys.processing == "{queuectl}:processing"
    assert keys.completed == "{queuectl}:completed"
    assert keys.dead == "{queuectl}:dead"
    assert keys.cancelled == "{queuectl}:cancelled"
    assert keys.held == "{queuectl}:held"
    assert keys.workers == "{queuectl}:workers"
    assert keys.worker_info == "{queuectl}:worker_info"
    assert keys.scheduler == "{queuectl}:scheduler"
    assert keys.wake == "{queuectl}:wake"
    assert keys.state_set("dead") == "{queuectl}:dead"
    with pytest.raises(ValueError, match="per queue"):
        keys.state_set("pending")
