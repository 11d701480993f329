"""queuectl-scheduler: due times, the leader lock and config reloads."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from harness import Env, wait_until

from queuectld.jobs import validate


def lock_owner(env: Env) -> str | None:
    client = env.server.client()
    try:
        value = client.get("{" + env.namespace + "}:scheduler")
    finally:
        client.close()
    return None if value is None else value.decode()


def start_scheduler(env: Env) -> subprocess.Popen[bytes]:
    process = env.spawn("queuectl-scheduler")
    env.wait_for_log(process, "scheduler started")
    return process


def test_delayed_jobs_run_close_to_due_time(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    leader = start_scheduler(env)
    env.wait_for_log(leader, "is now the leader")
    store = env.store()
    delays = {"d05": 0.5, "d10": 1.0, "d15": 1.5, "d20": 2.0}
    for job_id, delay in delays.items():
        env.enqueue(["true"], id=job_id, delay=delay)
    assert store.get_job("d05")["state"] == "scheduled"

    records = {job_id: env.wait_for_state(job_id, "completed") for job_id in delays}
    lateness_ms = {
        job_id: record["started_ms"] - record["run_at_ms"] for job_id, record in records.items()
    }

    print(
        "scheduler lateness, run_at to job start: "
        + ", ".join(f"{job_id} {late} ms" for job_id, late in lateness_ms.items())
    )
    for job_id, late in lateness_ms.items():
        assert late >= 0, f"{job_id} started {-late} ms before its run_at"
        assert late < 500, f"{job_id} started {late} ms after its run_at"


def test_run_at_time_is_honoured(env: Env) -> None:
    store = env.store()
    due_ms = store.now_ms() + 1200
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(due_ms // 1000))
    run_at = f"{moment}.{due_ms % 1000:03d}Z"
    env.spawn("queuectl-scheduler")
    env.cli("enqueue", "--id", "at", "--run-at", run_at, "--", "true", check=True)

    record = env.wait_for_state("at", "pending")
    moved_ms = store.now_ms()

    assert record["run_at_ms"] == due_ms
    assert moved_ms >= due_ms


def test_scheduled_job_waits_without_scheduler(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["true"], id="j", delay=0.2)
    time.sleep(1)

    assert env.store().get_job("j")["state"] == "scheduled"


@pytest.mark.slow
def test_standby_takes_over_from_killed_leader(env: Env) -> None:
    leader = start_scheduler(env)
    env.wait_for_log(leader, "is now the leader")
    standby = start_scheduler(env)
    owner = lock_owner(env)
    env.enqueue(["true"], id="before", delay=0.2)
    env.wait_for_state("before", "pending")

    # The standby never takes the lock while the leader renews it.
    time.sleep(2)
    assert "is now the leader" not in env.log_of(standby)
    assert lock_owner(env) == owner
    leader.send_signal(signal.SIGKILL)
    leader.wait(timeout=10)
    killed_at = time.monotonic()
    env.enqueue(["true"], id="after", delay=0.2)
    env.wait_for_log(standby, "is now the leader")
    takeover_s = time.monotonic() - killed_at
    env.wait_for_state("after", "pending")

    assert owner is not None
    assert f":{leader.pid}:" in owner
    assert f":{standby.pid}:" in (lock_owner(env) or "")
    print(f"standby took over {takeover_s:.2f} s after the leader was killed")
    assert takeover_s < 5


def test_stopped_leader_releases_lock(env: Env) -> None:
    leader = start_scheduler(env)
    env.wait_for_log(leader, "is now the leader")
    assert lock_owner(env) is not None

    leader.send_signal(signal.SIGTERM)
    code = leader.wait(timeout=15)

    assert code == 0
    assert lock_owner(env) is None
    assert "scheduler stopped" in env.log_of(leader)


def test_sighup_reloads_scheduler_config(env: Env) -> None:
    scheduler = start_scheduler(env)
    env.wait_for_log(scheduler, "is now the leader")

    env.write_config(log={"level": "debug"})
    scheduler.send_signal(signal.SIGHUP)
    env.wait_for_log(scheduler, f"config reloaded from {env.config_path}")
    env.enqueue(["true"], id="j", delay=0.1)

    env.wait_for_state("j", "pending")
    wait_until(
        lambda: "moved 1 due jobs" in env.log_of(scheduler),
        "a debug line after the reload",
    )
    assert scheduler.poll() is None


def test_scheduler_moves_more_than_one_batch(env: Env) -> None:
    env.write_config(scheduler={"batch_size": 10})
    config = env.config
    specs = [
        validate({"id": f"j{n}", "command": ["true"], "delay": 0.2}, config.jobs) for n in range(35)
    ]
    store = env.store()
    store.enqueue(specs)
    env.spawn("queuectl-scheduler")

    wait_until(
        lambda: store.counts()["states"]["pending"] == 35,
        lambda: f"35 pending jobs; counts {store.counts()}\n{env.logs()}",
    )
    assert store.counts()["states"]["scheduled"] == 0
