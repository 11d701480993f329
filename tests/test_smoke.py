"""End to end: a job enqueued with the CLI is run by a worker."""

from __future__ import annotations

import time

from harness import Env


def wait_for_state(env: Env, job_id: str, state: str, timeout_s: float = 10.0) -> dict[str, object]:
    store = env.store()
    deadline = time.monotonic() + timeout_s
    record: dict[str, object] = {}
    while time.monotonic() < deadline:
        record = store.get_job(job_id)
        if record.get("state") == state:
            return record
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is {record.get('state')}, expected {state}\n{env.logs()}")


def test_enqueued_job_completes(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    result = env.cli("enqueue", '{"id": "job1", "command": "echo hello"}', check=True)
    assert result.stdout.strip() == "job1"

    record = wait_for_state(env, "job1", "completed")
    assert record["attempts"] == 1
    assert env.store().get_output("job1")["stdout"] == "hello\n"
