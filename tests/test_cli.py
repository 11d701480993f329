"""The `queuectl` admin CLI: every command, its --json form and its exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from harness import Env, process_state, start_redis, stop_pid, wait_until

from queuectld.cli.workers import systemd_manages_workers
from queuectld.store import Outcome

USAGE, NOT_FOUND, CONFLICT, UNREACHABLE, CONFIG_ERROR, CHECK_FAILED = 2, 3, 4, 5, 6, 8


def as_json(env: Env, *args: str) -> Any:
    result = env.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def make_states(env: Env) -> None:
    """Put one job in each of pending (two queues), scheduled, completed and dead."""
    env.enqueue(["true"], id="p1")
    env.enqueue(["true"], id="p2", queue="mail", priority=5)
    env.enqueue(["true"], id="s1", delay=3600)
    env.enqueue(["true"], id="c1", queue="work")
    env.enqueue(["false"], id="d1", queue="work", max_retries=0)
    store = env.store()
    keys = store.worker_keys(("work",))
    for kind, stdout in (("completed", "all good\n"), ("failed", "")):
        job = store.claim("host:1", keys, 5000).job
        assert job is not None
        store.finish(
            job,
            Outcome(kind, exit_code=0 if kind == "completed" else 1, stdout=stdout, stderr=""),
            worker="host:1",
            history_limit=5,
        )


def test_status_counts_states_and_queues(env: Env) -> None:
    make_states(env)

    status = as_json(env, "status")
    text = env.cli("status", check=True).stdout

    assert status == {
        "states": {
            "scheduled": 1,
            "pending": 2,
            "processing": 0,
            "failed": 0,
            "completed": 1,
            "dead": 1,
            "cancelled": 0,
        },
        "pending_by_queue": {"default": 1, "mail": 1, "work": 0},
        "workers": 0,
    }
    assert re.search(r"^pending\s+2$", text, re.MULTILINE)
    assert "workers alive: 0" in text


def test_list_filters_by_state_and_queue(env: Env) -> None:
    make_states(env)

    everything = as_json(env, "list")
    pending = as_json(env, "list", "--state", "pending")
    work = as_json(env, "list", "--queue", "work")
    limited = as_json(env, "list", "--limit", "2")
    text = env.cli("list", "--state", "pending", check=True).stdout

    assert [r["id"] for r in everything] == ["s1", "p2", "p1", "c1", "d1"]
    assert [r["id"] for r in pending] == ["p2", "p1"], "priority first"
    assert [r["id"] for r in work] == ["c1", "d1"]
    assert len(limited) == 2
    assert text.splitlines()[0].split() == [
        "ID",
        "STATE",
        "QUEUE",
        "PRI",
        "ATTEMPTS",
        "COMMAND",
        "/",
        "ERROR",
    ]
    assert len(text.splitlines()) == 3


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--state", "running"], USAGE, "--state 'running' is not a state"),
        (["--queue", "nosuch"], NOT_FOUND, "no such queue"),
        (["--limit", "0"], USAGE, "--limit"),
        (["--limit", "many"], USAGE, "invalid int value"),
    ],
    ids=["bad state", "unknown queue", "zero limit", "limit not a number"],
)
def test_list_bad_arguments(env: Env, args: list[str], code: int, fragment: str) -> None:
    env.enqueue(["true"], id="j")

    result = env.cli("list", *args)

    assert result.returncode == code, result.stderr
    assert fragment in result.stderr


def test_show_prints_record_history_and_output(env: Env) -> None:
    make_states(env)

    text = env.cli("show", "c1", check=True).stdout
    record = as_json(env, "show", "c1")

    assert re.search(r"^state:\s+completed$", text, re.MULTILINE)
    assert re.search(r"^worker:\s+host:1$", text, re.MULTILINE)
    assert "attempt 1: completed on host:1" in text
    assert "all good" in text
    assert record["state"] == "completed"
    assert record["output"] == {"stdout": "all good\n", "stderr": ""}
    assert record["history"][0]["outcome"] == "completed"


def test_unknown_job_is_not_found(env: Env) -> None:
    for command in (["show", "nosuch"], ["cancel", "nosuch"], ["retry", "nosuch"]):
        result = env.cli(*command)
        assert result.returncode == NOT_FOUND, command
        assert "no job with id 'nosuch'" in result.stderr


def test_cancel_pending_and_scheduled(env: Env) -> None:
    make_states(env)

    pending = env.cli("cancel", "p1")
    scheduled = env.cli("cancel", "s1")

    assert pending.returncode == 0
    assert pending.stdout == "job p1 cancelled\n"
    assert scheduled.returncode == 0
    assert env.store().get_job("s1")["state"] == "cancelled"
    assert [r["id"] for r in as_json(env, "list", "--state", "cancelled")] == ["p1", "s1"]


def test_cancel_finished_job_conflicts(env: Env) -> None:
    make_states(env)
    before = env.dump()

    result = env.cli("cancel", "c1")

    assert result.returncode == CONFLICT
    assert "already completed" in result.stderr
    assert env.dump() == before


def test_retry_sends_job_back_to_queue(env: Env) -> None:
    make_states(env)
    env.cli("cancel", "p1", check=True)

    dead = env.cli("retry", "d1")
    cancelled = env.cli("retry", "p1")
    pending = env.cli("retry", "p2")

    assert dead.returncode == 0
    assert dead.stdout == "job d1 is pending again\n"
    assert cancelled.returncode == 0
    assert env.store().get_job("d1")["state"] == "pending"
    assert env.store().get_job("p1")["state"] == "pending"
    assert pending.returncode == CONFLICT
    assert "job p2 is pending" in pending.stderr


def test_dlq_list_retry_and_purge(env: Env) -> None:
    for n in range(3):
        env.enqueue(["false"], id=f"job{n + 1}", max_retries=0)
    store = env.store()
    keys = store.worker_keys(("default",))
    for _ in range(3):
        job = store.claim("host:1", keys, 5000).job
        assert job is not None
        store.finish(
            job, Outcome("failed", exit_code=1, error="exited 1"), worker="host:1", history_limit=5
        )

    listed = as_json(env, "dlq", "list")
    text = env.cli("dlq", "list", check=True).stdout
    single = env.cli("dlq", "retry", "job1")
    not_dead = env.cli("dlq", "retry", "job1")
    every = env.cli("dlq", "retry", "--all")
    job = store.claim("host:1", keys, 5000).job
    assert job is not None
    store.finish(job, Outcome("dead", error="gone"), worker="host:1", history_limit=5)
    purged = env.cli("dlq", "purge")

    assert [r["id"] for r in listed] == ["job1", "job2", "job3"]
    assert "exited 1 (no retries left)" in text
    assert single.returncode == 0, single.stderr
    assert not_dead.returncode == CONFLICT
    assert "only dead jobs can be retried" in not_dead.stderr
    assert every.stdout == "2 dead jobs are pending again\n"
    assert purged.stdout == "deleted 1 dead jobs\n"
    assert as_json(env, "dlq", "list") == []
    assert env.cli("show", job.id).returncode == NOT_FOUND
    assert store.counts()["states"]["pending"] == 2


def test_first_users_dlq_retry_example(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    env.cli("enqueue", '{"id":"job1","command":"false","max_retries":0}', check=True)
    env.wait_for_state("job1", "dead")

    result = env.cli("dlq", "retry", "job1")
    record = env.wait_for_state("job1", "dead")

    assert result.returncode == 0
    assert record["attempts"] == 1, "a retried dead job starts its attempts over"
    assert len(record["history"]) == 2


@pytest.mark.parametrize("args", [["dlq", "retry"], ["dlq", "retry", "x", "--all"]])
def test_dlq_retry_needs_id_or_all(env: Env, args: list[str]) -> None:
    result = env.cli(*args)

    assert result.returncode == USAGE
    assert "--all" in result.stderr


def test_dlq_retry_all_keeps_unreadable_record(env: Env) -> None:
    env.enqueue(["true"], id="broken")
    env.enqueue(["false"], id="fine", max_retries=0)
    client = env.server.client()
    client.hset("{" + env.namespace + "}:jobs", "broken", "garbage{")
    client.close()
    store = env.store()
    keys = store.worker_keys(("default",))
    job = store.claim("host:1", keys, 5000).job
    assert job is not None
    store.finish(job, Outcome("failed", exit_code=1), worker="host:1", history_limit=5)
    assert store.get_job("broken")["state"] == "dead"

    single = env.cli("retry", "broken")
    every = env.cli("dlq", "retry", "--all")

    assert single.returncode == CONFLICT
    assert "job broken has an unreadable record" in single.stderr
    assert every.returncode == CONFLICT
    assert every.stdout == "1 dead jobs are pending again\n"
    assert "1 dead jobs could not be retried" in every.stderr
    assert store.get_job("broken")["state"] == "dead"
    assert store.get_job("fine")["state"] == "pending"


def detached_pids(env: Env) -> dict[str, int]:
    return {
        path.stem.removeprefix("worker-"): int(path.read_text())
        for path in env.run_dir.glob("worker-*.pid")
    }


@pytest.mark.slow
def test_detached_workers_start_list_and_stop(env: Env) -> None:
    if systemd_manages_workers():
        pytest.skip("systemd manages the worker units here, so `worker start` would use them")

    started = env.cli("worker", "start", "--count", "2")
    pids = wait_until(
        lambda: len(detached_pids(env)) == 2 and detached_pids(env),
        lambda: f"two pidfiles in {env.run_dir}\n{env.logs()}",
    )
    store = env.store()
    wait_until(lambda: len(store.workers()) == 2, lambda: f"two live workers\n{env.logs()}")
    again = env.cli("worker", "start", "--count", "2")
    listed = as_json(env, "worker", "list")
    text = env.cli("worker", "list", check=True).stdout
    env.enqueue(["true"], id="j")
    env.wait_for_state("j", "completed")
    reload = env.cli("config", "set", "max-retries", "4")
    wait_until(
        lambda: env.logs().count("config reloaded from") == 2,
        lambda: f"both workers to reload\n{env.logs()}",
    )
    stopped = env.cli("worker", "stop")
    none_left = env.cli("worker", "stop")

    assert started.returncode == 0, started.stderr
    assert "started worker 1, pid" in started.stdout
    assert "started worker 2, pid" in started.stdout
    assert "worker 1 already runs as pid" in again.stdout
    assert sorted(w["pid"] for w in listed) == sorted(pids.values())
    assert all(w["alive"] for w in listed)
    assert sorted(w["name"].rsplit(":", 1)[1] for w in listed) == ["1", "2"]
    assert text.splitlines()[0].split() == ["NAME", "HOST", "PID", "JOB", "LAST", "BEAT"]
    assert "asked 2 detached workers to reload" in reload.stdout
    assert stopped.returncode == 0, stopped.stderr
    assert f"worker 1 (pid {pids['1']}) stopped" in stopped.stdout
    assert none_left.stdout == "no detached workers are running\n"
    for pid in pids.values():
        assert process_state(pid) in (None, "Z"), f"worker {pid} still runs"
    assert store.workers() == []


def test_worker_start_count_out_of_range(env: Env) -> None:
    result = env.cli("worker", "start", "--count", "0")

    assert result.returncode == USAGE
    assert "--count must be from 1 to 256" in result.stderr


def test_doctor_reports_checks(env: Env) -> None:
    result = env.cli("doctor", "--json")
    report = json.loads(result.stdout)
    checks = {check["name"]: check for check in report["checks"]}

    assert result.returncode == 0, result.stdout
    assert report["redis"] == env.server.url
    assert checks["config"]["level"] == "ok"
    assert checks["redis version"]["level"] == "ok"
    assert checks["maxmemory-policy"]["level"] == "ok"
    assert checks["clock skew"]["level"] == "ok"
    # The session's server runs with neither RDB snapshots nor an append-only file.
    assert checks["persistence"]["level"] == "warning"
    assert "no persistence" in checks["persistence"]["detail"]


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--appendonly", "yes"], "ok       persistence: append-only file enabled"),
        (["--save", "3600 1"], "warning  persistence: RDB snapshots only"),
    ],
    ids=["aof", "rdb"],
)
def test_doctor_reports_persistence_and_eviction(
    env: Env, tmp_path: Path, options: list[str], expected: str
) -> None:
    server = start_redis(tmp_path / "r", *options, "--maxmemory-policy", "allkeys-lru")
    try:
        env.write_config(redis={"url": server.url})
        result = env.cli("doctor")
    finally:
        stop_pid(server.pid)
        server.process.wait()

    assert result.returncode == 0, result.stdout
    assert "warning  maxmemory-policy: allkeys-lru" in result.stdout
    assert expected in result.stdout


def test_doctor_fails_without_redis(env: Env, tmp_path: Path) -> None:
    env.write_config(redis={"url": f"unix://{tmp_path}/absent.sock"})

    result = env.cli("doctor")

    assert result.returncode == CHECK_FAILED
    assert "failed   redis: cannot reach Redis" in result.stdout


READ_COMMANDS = [
    ["status"],
    ["list"],
    ["show", "x"],
    ["cancel", "x"],
    ["retry", "x"],
    ["dlq", "list"],
    ["dlq", "retry", "--all"],
    ["dlq", "purge"],
    ["worker", "list"],
    ["enqueue", "--", "true"],
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=[" ".join(a) for a in READ_COMMANDS])
def test_unreachable_redis_exits_5(env: Env, tmp_path: Path, args: list[str]) -> None:
    env.write_config(redis={"url": f"unix://{tmp_path}/absent.sock"})

    result = env.cli(*args)

    assert result.returncode == UNREACHABLE, result.stderr
    assert f"cannot reach Redis at unix://{tmp_path}/absent.sock" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["frobnicate"], ["list", "--colour"], ["show"], ["dlq"], ["config", "get"], []],
    ids=[
        "unknown command",
        "unknown option",
        "missing id",
        "missing subcommand",
        "missing key",
        "nothing",
    ],
)
def test_usage_errors_exit_2(env: Env, args: list[str]) -> None:
    result = env.cli(*args)

    assert result.returncode == USAGE
    assert "usage: queuectl" in result.stderr


def test_config_error_exits_6_for_any_command(env: Env) -> None:
    env.write_config(worker={"queues": []})

    result = env.cli("status")

    assert result.returncode == CONFIG_ERROR
    assert f"{env.config_path}: worker.queues must name at least one entry" in result.stderr


def test_help_and_version(env: Env) -> None:
    help_text = env.cli("--help")
    version = env.cli("--version")

    assert help_text.returncode == 0
    assert "3 not found" in help_text.stdout
    assert version.stdout.strip() == "1.0.0"


def test_password_file_authenticates(env: Env, tmp_path: Path) -> None:
    server = start_redis(tmp_path / "r", "--requirepass", "s3cret")
    good, wrong = tmp_path / "good.pass", tmp_path / "wrong.pass"
    good.write_text("s3cret\n")
    wrong.write_text("guess\n")
    try:
        env.write_config(redis={"url": server.url, "password_file": str(good)})
        accepted = env.cli("status")
        env.write_config(redis={"password_file": str(wrong)})
        rejected = env.cli("status")
        env.write_config(redis={"password_file": str(tmp_path / "missing.pass")})
        missing = env.cli("status")
    finally:
        stop_pid(server.pid)
        server.process.wait()

    assert accepted.returncode == 0, accepted.stderr
    assert rejected.returncode == 7
    assert "rejected the credentials" in rejected.stderr
    assert "guess" not in rejected.stderr
    assert missing.returncode == CONFIG_ERROR
    assert "redis.password_file" in missing.stderr
