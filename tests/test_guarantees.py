"""The delivery guarantees under failure: dead and frozen workers, stops, Redis restarts."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness import (
    SCHEMA_KEY,
    Env,
    RedisServer,
    process_state,
    start_redis,
    stop_pid,
    wait_until,
)

from queuectld.store import Store


def attempt_job(env: Env, seconds: float) -> list[str]:
    """Return a command that writes its pid to ``pid_dir/attempt-N``, then sleeps."""
    pid_file = f'{env.pid_dir}/attempt-"$QUEUECTL_JOB_ATTEMPT"'
    return ["sh", "-c", f"echo $$ > {pid_file}; exec sleep {seconds:g}"]


def wait_for_lease_expiry(env: Env, job_id: str) -> None:
    """Wait until the job's lease deadline in Redis has passed."""
    client = env.server.client()
    store = env.store()
    key = "{" + env.namespace + "}:processing"

    def expired() -> bool:
        deadline = client.zscore(key, job_id)
        return deadline is not None and store.now_ms() > deadline

    wait_until(expired, f"the lease of {job_id} to expire")
    client.close()


def kill_worker(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def test_reaper_recovers_job_of_killed_worker(env: Env) -> None:
    first = env.spawn("queuectl-worker", "--instance", "a")
    env.enqueue(attempt_job(env, 1), id="j")
    env.wait_for_state("j", "processing")
    env.job_pid("attempt-1")

    kill_worker(first)
    wait_for_lease_expiry(env, "j")
    reaper = env.run("queuectl-reaper", check=True)
    requeued = env.store().get_job("j")
    env.spawn("queuectl-worker", "--instance", "b")
    record = env.wait_for_state("j", "completed")

    assert "job j: its worker was lost; requeued" in reaper.stderr
    assert requeued["state"] == "pending"
    assert record["attempts"] == 2
    assert [entry["outcome"] for entry in record["history"]] == ["lost", "completed"]
    assert record["history"][0]["worker"].endswith(":a")
    assert record["history"][0]["error"].startswith("worker lost: no heartbeat for")
    assert record["worker"].endswith(":b")


def test_restarted_instance_reclaims_job_at_once(env: Env) -> None:
    # A long lease: only the reclaim at start, not an expired lease, can free the job.
    env.write_config(worker={"lease_timeout": 60})
    first = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(attempt_job(env, 1), id="j")
    env.wait_for_state("j", "processing")
    env.job_pid("attempt-1")

    kill_worker(first)
    restarted_ms = env.store().now_ms()
    second = env.spawn("queuectl-worker", "--instance", "1")
    record = env.wait_for_state("j", "completed")

    assert [entry["outcome"] for entry in record["history"]] == ["lost", "completed"]
    assert "restarted while running the job" in record["history"][0]["error"]
    assert record["history"][1]["started_ms"] - restarted_ms < 10_000
    assert "job j: took it back from the previous process" in env.log_of(second)


def test_frozen_worker_loses_lease_and_result(env: Env) -> None:
    command = ["sh", "-c", 'sleep 1.5; echo "attempt $QUEUECTL_JOB_ATTEMPT"']
    frozen = env.spawn("queuectl-worker", "--instance", "frozen")
    env.enqueue(command, id="j")
    env.wait_for_state("j", "processing")

    frozen.send_signal(signal.SIGSTOP)
    try:
        wait_for_lease_expiry(env, "j")
        env.run("queuectl-reaper", check=True)
        env.spawn("queuectl-worker", "--instance", "other")
        newer = env.wait_for_state("j", "completed")
        newer_output = env.store().get_output("j")
    finally:
        frozen.send_signal(signal.SIGCONT)
    log = env.wait_for_log(frozen, "job j: lease lost")

    assert newer_output["stdout"] == "attempt 2\n"
    assert [entry["outcome"] for entry in newer["history"]] == ["lost", "completed"]
    assert env.store().get_job("j") == newer, "the late result overwrote the newer one"
    assert env.store().get_output("j") == newer_output
    assert frozen.poll() is None, f"the frozen worker died after SIGCONT\n{log}"


@pytest.mark.slow
@pytest.mark.parametrize("recovery", ["reaper", "restart"])
def test_worker_killing_job_ends_dead(env: Env, recovery: str) -> None:
    env.enqueue(["sh", "-c", "kill -KILL $PPID"], id="killer", max_retries=1)
    store = env.store()

    for round_ in range(1, 6):
        instance = "1" if recovery == "restart" else str(round_)
        worker = env.spawn("queuectl-worker", "--instance", instance)

        def worker_gone_or_job_dead(worker: subprocess.Popen[bytes] = worker) -> bool:
            return worker.poll() is not None or store.get_job("killer")["state"] == "dead"

        wait_until(
            worker_gone_or_job_dead,
            lambda: f"a worker to be killed by its job\n{env.logs()}",
        )
        if store.get_job("killer")["state"] == "dead":
            break
        worker.wait()
        if recovery == "reaper":
            wait_for_lease_expiry(env, "killer")
            env.run("queuectl-reaper", check=True)

    record = store.get_job("killer")
    assert record["state"] == "dead", f"still {record['state']} after 5 workers\n{env.logs()}"
    assert record["attempts"] == 2
    assert [entry["outcome"] for entry in record["history"]] == ["lost", "lost"]
    assert record["error"].endswith("(no retries left)")


def test_sigterm_lets_running_job_finish(env: Env) -> None:
    worker = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["sh", "-c", "sleep 1; echo finished"], id="running")
    env.enqueue(["true"], id="waiting")
    env.wait_for_state("running", "processing")

    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=15)
    record = env.store().get_job("running")

    assert code == 0
    assert record["state"] == "completed"
    assert env.store().get_output("running")["stdout"] == "finished\n"
    assert env.store().get_job("waiting")["state"] == "pending", "claimed while stopping"
    log = env.log_of(worker)
    assert "job running: stopping; the job has 5 s to finish" in log
    assert re.search(r"worker \S+:1 stopped", log)
    assert env.store().workers() == [], "the stopped worker left its record"


def test_stop_timeout_requeues_without_attempt(env: Env) -> None:
    env.write_config(worker={"stop_timeout": 0.5, "kill_grace": 0.5})
    worker = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(env.pid_job("long", 300), id="long", max_retries=0)
    env.wait_for_state("long", "processing")
    pid = env.job_pid("long")

    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=15)
    stop_s = time.monotonic() - started
    record = env.store().get_job("long")

    assert code == 0
    assert stop_s < 5, f"stopping took {stop_s:.1f} s"
    assert record["state"] == "pending"
    assert record["attempts"] == 0
    assert record["history"][-1]["outcome"] == "requeue"
    assert process_state(pid) is None, "the job outlived its worker"


def test_second_sigterm_stops_at_once(env: Env) -> None:
    env.write_config(worker={"stop_timeout": 60, "kill_grace": 30})
    worker = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(env.pid_job("long", 300), id="long")
    env.wait_for_state("long", "processing")
    pid = env.job_pid("long")

    worker.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    still_running = worker.poll() is None
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=15)
    stop_s = time.monotonic() - started
    record = env.store().get_job("long")

    assert still_running, "the first SIGTERM did not wait for the job"
    assert code == 0
    assert stop_s < 3, f"the second SIGTERM took {stop_s:.1f} s"
    assert record["state"] == "pending"
    assert record["attempts"] == 0
    assert process_state(pid) is None


@pytest.mark.slow
def test_worker_survives_redis_restarts(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / "r"
    options = ("--appendonly", "yes", "--appendfsync", "always")
    server = start_redis(folder, *options)
    env.write_config(redis={"url": server.url})
    worker = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["sh", "-c", "sleep 2; echo survived"], id="through")
    env.wait_for_state("through", "processing")

    try:
        # First outage while a job runs, second while the worker is idle.
        stop_redis(server)
        env.wait_for_log(worker, "job through: heartbeat failed, the job keeps running")
        server = start_redis(folder, *options)
        record = env.wait_for_state("through", "completed", timeout_s=30)
        stop_redis(server)
        env.wait_for_log(worker, "retrying every")
        server = start_redis(folder, *options)
        env.wait_for_log(worker, "Redis answers again; worker resumes", timeout_s=30)
        env.enqueue(["true"], id="after")
        env.wait_for_state("after", "completed")
        output = env.store().get_output("through")
        # The fixture checks keys on the session's server, so check this one here.
        for process in env.processes:
            stop_pid(process.pid)
        keys = [key.decode() for key in server.client().keys("*")]
    finally:
        stop_redis(server)

    assert record["attempts"] == 1
    assert output["stdout"] == "survived\n"
    assert [key for key in keys if not SCHEMA_KEY.match(key)] == []


def stop_redis(server: RedisServer) -> None:
    """Stop a redis-server this test started; its data stays in its folder."""
    stop_pid(server.pid)
    server.process.wait()


def test_enqueued_job_readable_at_once(env: Env) -> None:
    env.enqueue(["true"], id="durable")
    # A new connection reads the job as soon as enqueue has returned.
    store = Store(env.config)
    record = store.get_job("durable")
    store.close()

    assert record["state"] == "pending"
