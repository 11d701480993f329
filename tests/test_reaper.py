"""queuectl-reaper: expired leases, retention and forgotten workers."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from harness import Env, wait_until

from queuectld.jobs import validate
from queuectld.store import Outcome


def test_running_job_survives_reaper_passes(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["sleep", "2.5"], id="j")
    env.wait_for_state("j", "processing")

    # The lease is 1 s; heartbeats every 0.2 s keep renewing it.
    for _ in range(3):
        time.sleep(0.6)
        env.run("queuectl-reaper", check=True)
    record = env.wait_for_state("j", "completed")

    assert record["attempts"] == 1
    assert [entry["outcome"] for entry in record["history"]] == ["completed"]


def test_retention_removes_old_records(env: Env) -> None:
    store = env.store()
    for job_id in ("done", "dead", "cancelled"):
        env.enqueue(["true"], id=job_id, max_retries=0)
    store.cancel("cancelled")
    keys = store.worker_keys(("default",))
    for kind in ("completed", "failed"):
        job = store.claim("host:1", keys, 5000).job
        assert job is not None
        store.finish(job, Outcome(kind, stdout="x"), worker="host:1", history_limit=5)
    env.write_config(jobs={"retention_completed": 0.2, "retention_dead": 3600})
    time.sleep(0.3)

    first = env.run("queuectl-reaper", check=True)
    kept_dead = store.get_job("dead")["state"]
    env.write_config(jobs={"retention_dead": 0})
    second = env.run("queuectl-reaper", check=True)

    assert "0 requeued, 0 dead, 2 records removed" in first.stderr
    assert kept_dead == "dead"
    assert "1 records removed" in second.stderr
    for job_id in ("done", "dead", "cancelled"):
        assert env.cli("show", job_id).returncode == 3, job_id
    assert store.get_output("done") == {}
    assert store.counts()["states"] == dict.fromkeys(store.counts()["states"], 0)


def test_reaper_forgets_silent_workers(env: Env) -> None:
    worker = env.spawn("queuectl-worker", "--instance", "1")
    store = env.store()
    wait_until(lambda: store.workers(), "the worker to register")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)

    wait_until(
        lambda: store.now_ms() - store.workers()[0]["last_beat_ms"] > 1000,
        "the worker's heartbeat to go silent",
    )
    env.run("queuectl-reaper", check=True)

    assert store.workers() == []


def test_concurrent_reapers_take_each_job_once(env: Env) -> None:
    # Small batches, so each reaper makes several passes over the same jobs.
    env.write_config(reaper={"batch_size": 40})
    config = env.config
    store = env.store()
    specs = [validate({"id": f"j{n}", "command": ["true"]}, config.jobs) for n in range(300)]
    store.enqueue(specs)
    keys = store.worker_keys(("default",))
    for n in range(300):
        assert store.claim(f"gone:{n}", keys, 1).job is not None
    time.sleep(0.01)

    reapers = [env.spawn("queuectl-reaper") for _ in range(3)]
    codes = [reaper.wait(timeout=60) for reaper in reapers]
    records = [store.get_job(spec.id) for spec in specs]

    assert codes == [0, 0, 0], env.logs()
    assert {record["state"] for record in records} == {"pending"}
    assert [len(record["history"]) for record in records] == [1] * 300
    assert store.counts()["states"]["processing"] == 0
    client = env.server.client()
    assert client.hlen("{" + env.namespace + "}:held") == 0
    client.close()


def test_loop_mode_reaps_until_stopped(env: Env) -> None:
    env.enqueue(["true"], id="j")
    store = env.store()
    reaper = env.spawn("queuectl-reaper", "--loop", "0.2")
    assert store.claim("gone:1", store.worker_keys(("default",)), 300).job is not None

    record = env.wait_for_state("j", "pending")
    reaper.send_signal(signal.SIGTERM)
    code = reaper.wait(timeout=10)

    assert record["history"][-1]["outcome"] == "lost"
    assert code == 0


def test_loop_out_of_range_is_usage_error(env: Env) -> None:
    result = env.run("queuectl-reaper", "--loop", "0")

    assert result.returncode == 2
    assert "--loop" in result.stderr


def test_reaper_without_redis_exits_5(env: Env, tmp_path: Path) -> None:
    env.write_config(redis={"url": f"unix://{tmp_path}/absent.sock"})

    result = env.run("queuectl-reaper")

    assert result.returncode == 5
    assert "absent.sock" in result.stderr
