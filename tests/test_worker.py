"""queuectl-worker running real commands: outcomes, output, environment and limits."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from harness import BIN, Env, process_state, vm_peak_kib, wait_until

from queuectld.jobs import validate
from queuectld.store import Store


def start_worker(env: Env, instance: str = "1", **extra_env: str) -> None:
    """Start a worker and wait until it has registered in Redis."""
    process = env.spawn("queuectl-worker", "--instance", instance, env=extra_env)
    env.wait_for_log(process, "started, pid")


def test_completed_job_records_outcome(env: Env) -> None:
    process = env.spawn("queuectl-worker", "--instance", "7")
    env.enqueue(["sh", "-c", "echo out; echo err >&2"], id="j")

    record = env.wait_for_state("j", "completed")

    assert record["exit_code"] == 0
    assert record["attempts"] == 1
    assert record["worker"].endswith(":7")
    assert record["finished_ms"] >= record["started_ms"] >= record["created_ms"]
    assert record["duration_ms"] < 5000
    assert env.store().get_output("j") == {"stdout": "out\n", "stderr": "err\n"}
    log = env.wait_for_log(process, "job j completed")
    assert "job j started: attempt 1 of 4" in log


def test_failed_job_retries_then_goes_dead(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    env.spawn("queuectl-scheduler")
    env.enqueue(["sh", "-c", "echo broken >&2; exit 3"], id="j", max_retries=2)

    record = env.wait_for_state("j", "dead", timeout_s=30)

    assert record["attempts"] == 3
    assert record["exit_code"] == 3
    assert record["error"] == "exited with code 3: broken (no retries left)"
    assert [entry["outcome"] for entry in record["history"]] == ["failed"] * 3
    assert [entry["attempt"] for entry in record["history"]] == [1, 2, 3]
    assert env.store().get_output("j")["stderr"] == "broken\n"


def test_failed_job_waits_for_scheduler(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["false"], id="j", max_retries=1)
    failed = env.wait_for_state("j", "failed")
    store = env.store()

    # Workers never poll the failed set: without a scheduler the job stays failed.
    wait_until(lambda: store.now_ms() > failed["next_run_ms"] + 500, "the backoff to pass")
    assert store.get_job("j")["state"] == "failed"
    env.spawn("queuectl-scheduler")
    record = env.wait_for_state("j", "dead")

    assert record["attempts"] == 2
    assert record["exit_code"] == 1


def spawn_failure_cases(tmp_path: Path) -> dict[str, tuple[dict[str, object], str]]:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    a_file = tmp_path / "plain-file"
    a_file.write_text("")
    return {
        "not found": ({"command": ["no-such-program-42"]}, "command not found: no-such-program-42"),
        "not executable": ({"command": [str(script)]}, f"command not executable: {script}"),
        "missing cwd": (
            {"command": ["true"], "cwd": "/nonexistent/dir"},
            "working directory not found: /nonexistent/dir",
        ),
        "cwd is a file": (
            {"command": ["true"], "cwd": str(a_file)},
            f"working directory is not a directory: {a_file}",
        ),
    }


@pytest.mark.parametrize("case", ["not found", "not executable", "missing cwd", "cwd is a file"])
def test_spawn_failure_goes_straight_to_dead(env: Env, tmp_path: Path, case: str) -> None:
    spec, error = spawn_failure_cases(tmp_path)[case]
    process = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(**{"id": "bad", "max_retries": 5, **spec})  # type: ignore[arg-type]
    env.enqueue(["true"], id="after")

    record = env.wait_for_state("bad", "dead")

    assert record["attempts"] == 1
    assert record["error"] == error
    assert len(record["history"]) == 1
    env.wait_for_state("after", "completed")
    assert f"job bad dead: {error}" in env.log_of(process)


def test_allowlist_rejects_enqueue_and_run(env: Env) -> None:
    env.write_config(security={"allowed_commands": ["/usr/bin/*", "/bin/*"]})
    refused = env.cli("enqueue", "--", "/opt/evil")
    # The worker checks again on its own host, whatever the enqueuing host allowed.
    env.write_config(security={"allowed_commands": []})
    env.enqueue(["/opt/evil"], id="evil")
    env.enqueue(["/bin/true"], id="fine")
    env.write_config(security={"allowed_commands": ["/usr/bin/*", "/bin/*"]})
    env.spawn("queuectl-worker", "--instance", "1")

    record = env.wait_for_state("evil", "dead")

    assert refused.returncode == 2
    assert "command not allowed: /opt/evil" in refused.stderr
    assert record["error"].startswith("command not allowed: /opt/evil")
    assert record["attempts"] == 1
    env.wait_for_state("fine", "completed")


def test_unreadable_record_buried_worker_continues(env: Env) -> None:
    env.enqueue(["true"], id="broken")
    env.enqueue(["true"], id="after")
    client = env.server.client()
    client.hset("{" + env.namespace + "}:jobs", "broken", "garbage{")
    process = env.spawn("queuectl-worker", "--instance", "1")

    env.wait_for_state("after", "completed")
    record = env.store().get_job("broken")

    assert record["state"] == "dead"
    assert record["raw"] == "garbage{"
    assert "unreadable" in record["error"]
    assert "job broken: record unreadable" in env.log_of(process)
    assert process.poll() is None, "the worker must keep running"


def test_record_missing_fields_is_buried(env: Env) -> None:
    env.enqueue(["true"], id="broken")
    env.enqueue(["true"], id="after")
    client = env.server.client()
    client.hset("{" + env.namespace + "}:jobs", "broken", '{"id": "broken", "priority": 0}')
    process = env.spawn("queuectl-worker", "--instance", "1")

    env.wait_for_state("after", "completed")

    assert env.store().get_job("broken")["state"] == "dead"
    assert process.poll() is None, f"the worker died\n{env.logs()}"


def test_output_tail_is_bounded(env: Env) -> None:
    env.write_config(jobs={"output_limit": 1000})
    process = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["true"], id="warm-up")
    env.wait_for_state("warm-up", "completed")
    baseline_kib = vm_peak_kib(process.pid)
    size = 40_000_000
    script = f"head -c {size} /dev/zero | tr '\\0' a; echo END; head -c {size} /dev/zero >&2"
    env.enqueue(["sh", "-c", script], id="loud")

    env.wait_for_state("loud", "completed", timeout_s=60)
    output = env.store().get_output("loud")
    peak_kib = vm_peak_kib(process.pid)

    head, _, stdout_tail = output["stdout"].partition("\n")
    assert head == f"[{size + 4 - 1000} earlier bytes omitted]"
    assert stdout_tail == "a" * 996 + "END\n"
    assert output["stderr"] == f"[{size - 1000} earlier bytes omitted]\n" + "\0" * 1000
    print(f"worker peak memory: {baseline_kib} KiB before, {peak_kib} KiB after 80 MB of output")
    assert peak_kib - baseline_kib < 20_000, "the worker buffered the output"


def test_invalid_utf8_output_becomes_replacement(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["printf", "ok \\377\\376 end"], id="j")

    env.wait_for_state("j", "completed")

    assert env.store().get_output("j")["stdout"] == "ok \ufffd\ufffd end"


def test_job_environment_is_built_from_scratch(env: Env) -> None:
    env.write_config(
        jobs={
            "path": "/usr/bin:/bin:/opt/custom/bin",
            "environment": {"LANG": "C.UTF-8", "SHARED": "config", "FROM_CONFIG": "yes"},
        }
    )
    env.spawn(
        "queuectl-worker",
        "--instance",
        "1",
        env={
            "NOTIFY_SOCKET": "/nonexistent/notify.sock",
            "WATCHDOG_USEC": "60000000",
            "WATCHDOG_PID": "1",
            "SECRET_TOKEN": "do-not-leak",
            "QUEUECTL_INSTANCE": "1",
        },
    )
    env.enqueue(["env"], id="j", env={"SHARED": "job", "FROM_JOB": "1"}, queue="default")

    env.wait_for_state("j", "completed")
    lines = env.store().get_output("j")["stdout"].splitlines()
    variables = dict(line.split("=", 1) for line in lines)

    assert variables == {
        "PATH": "/usr/bin:/bin:/opt/custom/bin",
        "LANG": "C.UTF-8",
        "SHARED": "job",
        "FROM_CONFIG": "yes",
        "FROM_JOB": "1",
        "QUEUECTL_JOB_ID": "j",
        "QUEUECTL_JOB_ATTEMPT": "1",
        "QUEUECTL_QUEUE": "default",
    }


def test_stdin_is_dev_null(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["sh", "-c", "readlink /proc/self/fd/0; cat; echo done"], id="j", timeout=10)

    env.wait_for_state("j", "completed")

    assert env.store().get_output("j")["stdout"] == "/dev/null\ndone\n"


def test_cwd_from_job_or_config(env: Env, tmp_path: Path) -> None:
    own = tmp_path / "own dir"
    own.mkdir()
    env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["pwd"], id="own", cwd=str(own))
    env.enqueue(["pwd"], id="default")

    env.wait_for_state("own", "completed")
    env.wait_for_state("default", "completed")

    assert env.store().get_output("own")["stdout"] == f"{own}\n"
    assert env.store().get_output("default")["stdout"] == f"{tmp_path}\n"


def test_relative_program_runs_from_job_cwd(env: Env, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    script = tools / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $(pwd)\n")
    script.chmod(0o755)
    worker = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["./hello.sh"], id="j", cwd=str(tools))

    env.wait_for_state("j", "completed")

    assert env.store().get_output("j")["stdout"] == f"hello from {tools}\n"
    # The worker enters the job's directory only while it starts the job.
    assert os.readlink(f"/proc/{worker.pid}/cwd") == os.getcwd()


def test_job_gets_no_inherited_descriptors_and_default_signals(env: Env) -> None:
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        worker = subprocess.Popen(
            [str(BIN / "queuectl-worker"), "--instance", "1"],
            env=env.environ(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_end,),
        )
    finally:
        os.close(write_end)
    env.processes.append(worker)
    script = "ls /proc/self/fd | tr '\\n' ' '; echo; grep -E '^Sig(Blk|Ign)' /proc/self/status"
    env.enqueue(["sh", "-c", script], id="j")

    env.wait_for_state("j", "completed")

    os.close(read_end)
    fds, *fields = env.store().get_output("j")["stdout"].splitlines()
    # 0-2, plus the one ls opens to read the listing.
    assert fds.split() == ["0", "1", "2", "3"]
    status = dict(line.split() for line in fields)
    assert status["SigBlk:"] == "0000000000000000"
    # SIGPIPE (13) and SIGXFSZ (25) start with their default action.
    ignored = int(status["SigIgn:"], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))


def enqueue_many(env: Env, specs: list[dict[str, object]]) -> None:
    store = env.store()
    store.enqueue([validate(spec, env.config.jobs) for spec in specs])


def test_deep_queue_is_claimed_in_batches(env: Env) -> None:
    enqueue_many(env, [{"id": f"j{n:03d}", "command": ["true"]} for n in range(200)])
    client = env.server.client()
    client.config_resetstat()
    start_worker(env)

    wait_until(lambda: env.store().counts()["states"]["completed"] == 200, "200 jobs to complete")

    calls = client.info("commandstats")["cmdstat_evalsha"]["calls"]
    client.close()
    # One call per job would be over 200; batches of up to 16 need far fewer.
    assert calls < 60
    record = env.store().get_job("j199")
    assert record["attempts"] == 1
    assert [entry["outcome"] for entry in record["history"]] == ["completed"]


def test_long_job_hands_back_batch(env: Env) -> None:
    # 31 short jobs grow the batch to 16, so the next claim takes the long
    # job together with the jobs queued behind it.
    specs: list[dict[str, object]] = [
        {"id": f"warm{n:02d}", "command": ["true"]} for n in range(31)
    ]
    specs.append({"id": "long", "command": ["sleep", "4"]})
    specs += [{"id": f"after{n}", "command": ["true"]} for n in range(5)]
    enqueue_many(env, specs)
    first = env.spawn("queuectl-worker", "--instance", "1")
    env.wait_for_log(first, "handed back 5 claimed jobs it had not started, from job after0")
    env.spawn("queuectl-worker", "--instance", "2")

    for n in range(5):
        record = env.wait_for_state(f"after{n}", "completed", timeout_s=3)
        assert record["worker"].endswith(":2")
        assert record["attempts"] == 1
    assert env.store().get_job("long")["state"] == "processing"


def test_timeout_kills_whole_process_group(env: Env) -> None:
    process = env.spawn("queuectl-worker", "--instance", "1")
    pid_file = env.pid_dir / "grandchild"
    env.enqueue(
        ["sh", "-c", f'sleep 300 & echo "$$ $!" > "{pid_file}"; wait'],
        id="slow",
        timeout=1,
        max_retries=0,
    )

    record = env.wait_for_state("slow", "dead")
    shell_pid, sleep_pid = (int(word) for word in pid_file.read_text().split())

    assert record["error"].startswith("timed out after 1 s")
    assert 1000 <= record["duration_ms"] < 5000
    wait_until(lambda: process_state(sleep_pid) is None, f"grandchild {sleep_pid} to be reaped")
    assert process_state(shell_pid) is None
    zombies = [
        child
        for child in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        if process_state(int(child)) == "Z"
    ]
    assert zombies == []


def test_timeout_escalates_to_sigkill(env: Env) -> None:
    env.write_config(worker={"kill_grace": 0.5})
    env.spawn("queuectl-worker", "--instance", "1")
    pid_file = env.pid_dir / "stubborn"
    env.enqueue(
        ["sh", "-c", f'trap "" TERM; sleep 300 & echo $! > "{pid_file}"; wait; wait'],
        id="stubborn",
        timeout=0.5,
        max_retries=0,
    )

    record = env.wait_for_state("stubborn", "dead")
    sleep_pid = int(pid_file.read_text())

    assert record["signal"] == 9
    assert record["error"].startswith("timed out after 0.5 s")
    assert record["duration_ms"] < 4000
    wait_until(lambda: process_state(sleep_pid) is None, f"grandchild {sleep_pid} to be reaped")


def test_cancel_running_job_kills_it(env: Env) -> None:
    process = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(env.pid_job("victim", 300), id="victim")
    env.wait_for_state("victim", "processing")
    pid = env.job_pid("victim")

    result = env.cli("cancel", "victim")
    record = env.wait_for_state("victim", "cancelled")

    assert result.returncode == 0, result.stderr
    assert "is running; its worker stops it" in result.stdout
    assert record["error"] == "cancelled while running"
    assert record["signal"] == 15
    wait_until(lambda: process_state(pid) is None, f"job process {pid} to be gone")
    assert "job victim cancelled while running" in env.log_of(process)


def test_workers_never_share_a_job(env: Env) -> None:
    for instance in ("1", "2", "3"):
        env.spawn("queuectl-worker", "--instance", instance)
    store = env.store()
    wait_until(lambda: len(store.workers()) == 3, lambda: f"three workers\n{env.logs()}")
    config = env.config
    command = ["sleep", "0.02"]
    specs = [validate({"id": f"j{n}", "command": command}, config.jobs) for n in range(60)]
    store.enqueue(specs)

    records = [env.wait_for_state(spec.id, "completed") for spec in specs]

    assert [record["attempts"] for record in records] == [1] * 60
    assert [len(record["history"]) for record in records] == [1] * 60
    assert len({record["worker"] for record in records}) > 1, "only one worker took jobs"


def test_idle_worker_starts_job_at_once(env: Env) -> None:
    start_worker(env)
    store = Store(env.config)
    latencies: list[float] = []
    for n in range(5):
        # Let the worker go back to blocking on its queue first.
        time.sleep(0.3)
        spec = validate({"id": f"j{n}", "command": ["date", "+%s.%N"]}, env.config.jobs)
        store.enqueue([spec])
        returned = time.time()
        env.wait_for_state(spec.id, "completed")
        started = float(store.get_output(spec.id)["stdout"])
        latencies.append(started - returned)
    store.close()

    print(
        "dispatch latency, enqueue return to job start: "
        + ", ".join(f"{latency * 1000:.1f} ms" for latency in latencies)
        + f" (median {statistics.median(latencies) * 1000:.1f} ms)"
    )
    assert max(latencies) < 0.5


def test_worker_name_in_use_is_refused(env: Env) -> None:
    start_worker(env, "same")

    second = env.run("queuectl-worker", "--instance", "same", timeout_s=30)

    assert second.returncode == 4
    assert f"is in use by running process {env.processes[0].pid}" in second.stderr
    assert os.path.exists(f"/proc/{env.processes[0].pid}")


def test_sighup_reloads_worker_config(env: Env) -> None:
    worker = env.spawn("queuectl-worker", "--instance", "1")
    env.wait_for_log(worker, "started, pid")
    env.enqueue(["true"], id="mail-job", queue="mail")

    env.write_config(worker={"queues": ["mail", "default"]})
    worker.send_signal(signal.SIGHUP)
    record = env.wait_for_state("mail-job", "completed")

    assert "config reloaded from" in env.log_of(worker)
    assert record["attempts"] == 1


def test_invalid_reload_keeps_old_config(env: Env) -> None:
    worker = env.spawn("queuectl-worker", "--instance", "1")
    env.wait_for_log(worker, "started, pid")
    store = env.store()
    spec = validate({"id": "j", "command": ["true"]}, env.config.jobs)

    env.write_config(jobs={"timeout": -1})
    worker.send_signal(signal.SIGHUP)
    log = env.wait_for_log(worker, "reload failed, keeping the running config")
    store.enqueue([spec])
    # Put a valid config back so that the test's own library calls work.
    env.write_config(jobs={"timeout": 60})
    env.wait_for_state("j", "completed")

    assert "jobs.timeout" in log
    assert worker.poll() is None


def test_busy_worker_leaves_no_zombies(env: Env) -> None:
    process = env.spawn("queuectl-worker", "--instance", "1")
    pid_file = env.pid_dir / "background"
    # The first job exits at once and leaves a background child behind; the
    # second keeps the worker busy, so it never goes idle in between.
    env.enqueue(["sh", "-c", f'sleep 300 & echo $! > "{pid_file}"'], id="leaves-child")
    env.enqueue(["sleep", "2"], id="busy")
    env.wait_for_state("busy", "processing")
    child = int(pid_file.read_text())

    wait_until(
        lambda: process_state(child) is None,
        lambda: f"the background child {child} to be reaped; it is {process_state(child)}",
        timeout_s=1.5,
    )
    assert env.store().get_job("busy")["state"] == "processing", "the check came too late"
    assert process.poll() is None


@pytest.mark.parametrize("instance", ["", "a b", "a:b", "x" * 65])
def test_invalid_instance_name_is_usage_error(env: Env, instance: str) -> None:
    result = env.run("queuectl-worker", "--instance", instance, timeout_s=30)

    assert result.returncode == 2
    assert "--instance" in result.stderr


def test_idle_worker_heartbeat_stays_fresh(env: Env) -> None:
    start_worker(env)
    store = env.store()
    lease_ms = env.config.worker.lease_timeout_s * 1000
    ages: list[int] = []

    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        workers = store.workers()
        ages.append(store.now_ms() - workers[0]["last_beat_ms"] if workers else -1)
        time.sleep(0.05)

    print(f"idle worker heartbeat age: max {max(ages)} ms, lease {lease_ms:.0f} ms")
    assert -1 not in ages, "the worker record disappeared"
    assert max(ages) < lease_ms / 2


def test_worker_runs_by_priority_then_age(env: Env, tmp_path: Path) -> None:
    env.write_config(worker={"queues": ["a", "b"]})
    order_file = tmp_path / "order"
    command = ["sh", "-c", f'echo "$QUEUECTL_JOB_ID" >> "{order_file}"']
    for job_id, queue, priority in [
        ("low", "a", -1),
        ("first", "b", 0),
        ("urgent", "a", 9),
        ("second", "a", 0),
        ("third", "b", 0),
    ]:
        env.enqueue(command, id=job_id, queue=queue, priority=priority)
    env.spawn("queuectl-worker", "--instance", "1")

    env.wait_for_state("low", "completed")

    assert order_file.read_text().split() == ["urgent", "first", "second", "third", "low"]
