"""Worker units under a booted systemd: start, status, recovery and logs."""

from __future__ import annotations

import json
import time

import pytest
from machine import Machine
from session import Measurements

pytestmark = pytest.mark.timeout(600)

WORKERS = [f"queuectl-worker@{n}.service" for n in (1, 2, 3)]


def held_by(machine: Machine, job_id: str, instance: str) -> dict[str, object]:
    """Wait until ``job_id`` runs on worker ``instance``; return its record."""
    record = machine.wait_job(job_id, ("processing",), timeout_s=30)
    assert record["worker"] == f"systest:{instance}", (
        f"job {job_id} runs on {record['worker']}, expected worker {instance}"
    )
    return record


def test_workers_start_report_status_and_run_jobs(machine: Machine) -> None:
    machine.systemctl("start", *WORKERS)
    for unit in WORKERS:
        state = machine.show(unit, "ActiveState", "SubState", "StatusText")
        assert state["ActiveState"] == "active", f"{unit} is not active: {state}"
        assert state["SubState"] == "running", f"{unit} is not running: {state}"
        assert state["StatusText"] == "idle on queues default", (
            f"{unit} has no idle STATUS= text: {state}"
        )

    slow = machine.enqueue("--id", "slow-1", "--", "sleep", "3")
    record = machine.wait_job(slow, ("processing",), timeout_s=10)
    instance = str(record["worker"]).rsplit(":", 1)[1]
    unit = f"queuectl-worker@{instance}.service"
    status, _ = machine.wait_for(
        lambda: machine.show(unit, "StatusText")["StatusText"].startswith(f"running job {slow}"),
        f"{unit} to report the running job in its status",
        timeout_s=5,
    )
    assert status

    ids = [machine.enqueue("--", "sh", "-c", f"echo job {n} on $QUEUECTL_QUEUE") for n in range(6)]
    for number, job_id in enumerate(ids):
        record = machine.wait_job(job_id, ("completed", "failed", "dead"), timeout_s=30)
        assert record["state"] == "completed", f"job {job_id} did not complete: {record}"
        assert record["output"]["stdout"] == f"job {number} on default\n"
    record = machine.wait_job(slow, ("completed",), timeout_s=30)
    assert record["exit_code"] == 0


def test_worker_waits_for_redis_before_ready(machine: Machine) -> None:
    unit = "queuectl-worker@1.service"
    machine.systemctl("stop", "redis-server.service")
    machine.systemctl("start", "--no-block", unit)

    def waiting() -> dict[str, str] | None:
        state = machine.show(unit, "ActiveState", "StatusText")
        return state if state["StatusText"].startswith("waiting for Redis: ") else None

    state, _ = machine.wait_for(waiting, f"{unit} to report that it waits for Redis", 20)
    assert state["ActiveState"] == "activating", f"{unit} reported ready without Redis: {state}"

    machine.systemctl("start", "redis-server.service")
    state = machine.wait_active(unit, timeout_s=20)
    assert state["StatusText"] == "idle on queues default", state
    assert machine.show(unit, "NRestarts")["NRestarts"] == "0"


def test_sigkill_restarts_worker_and_job_completes(
    machine: Machine, measurements: Measurements
) -> None:
    machine.systemctl("start", "queuectl-worker@2.service")
    job_id = machine.enqueue("--id", "killed-1", "--", "sleep", "5")
    held_by(machine, job_id, "2")
    machine.systemctl("start", "queuectl-worker@1.service", "queuectl-worker@3.service")

    started = time.monotonic()
    machine.systemctl("kill", "--signal=SIGKILL", "queuectl-worker@2.service")
    _, requeued_s = machine.wait_for(
        lambda: int(machine.job(job_id)["attempts"]) >= 2,
        f"job {job_id} to start a second attempt",
        timeout_s=60,
    )
    record = machine.wait_job(job_id, ("completed", "failed", "dead"), timeout_s=60)
    completed_s = time.monotonic() - started

    assert record["state"] == "completed", f"job {job_id} did not complete: {record}"
    outcomes = [entry["outcome"] for entry in record["history"]]
    assert outcomes == ["lost", "completed"], f"unexpected history of {job_id}: {outcomes}"
    state = machine.show("queuectl-worker@2.service", "ActiveState", "NRestarts")
    assert state == {"ActiveState": "active", "NRestarts": "1"}, (
        f"systemd did not restart queuectl-worker@2 once: {state}"
    )
    measurements.add("SIGKILL of a worker -> its job runs again", requeued_s)
    measurements.add("SIGKILL of a worker -> its 5 s job completed", completed_s)


def test_watchdog_restarts_stopped_worker(machine: Machine, measurements: Measurements) -> None:
    machine.systemctl("start", "queuectl-worker@1.service")
    pid = machine.show("queuectl-worker@1.service", "MainPID")["MainPID"]

    started = time.monotonic()
    machine.run("kill", "-STOP", pid)

    def restarted() -> dict[str, str] | None:
        state = machine.show("queuectl-worker@1.service", "ActiveState", "MainPID", "NRestarts")
        fresh = state["MainPID"] not in ("0", pid) and state["ActiveState"] == "active"
        return state if fresh else None

    state, _ = machine.wait_for(restarted, "the watchdog to restart the worker", 120)
    restart_s = time.monotonic() - started
    assert state["NRestarts"] == "1", f"expected one restart: {state}"
    journal = machine.journal("--unit=queuectl-worker@1.service")
    assert "Watchdog timeout" in journal, f"no watchdog timeout in the journal:\n{journal}"
    assert "Fatal Python error: Aborted" in journal, (
        f"faulthandler left no traceback in the journal:\n{journal}"
    )
    measurements.add("SIGSTOP of a worker -> watchdog restart (WatchdogSec=30s)", restart_s)


def test_stop_lets_job_finish_or_puts_it_back(machine: Machine, measurements: Measurements) -> None:
    machine.queuectl("config", "set", "worker.stop_timeout", "4")
    machine.queuectl("config", "set", "worker.kill_grace", "1")
    machine.systemctl("start", "queuectl-worker@1.service")

    # A job that ends within worker.stop_timeout finishes and is recorded.
    short = machine.enqueue("--", "sleep", "2")
    machine.wait_job(short, ("processing",), timeout_s=10)
    machine.systemctl("stop", "queuectl-worker@1.service")
    record = machine.job(short)
    assert record["state"] == "completed", f"job {short} did not finish during the stop: {record}"
    state = machine.show("queuectl-worker@1.service", "ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}, f"unclean stop: {state}"

    # A longer job is killed after the stop timeout and put back uncounted.
    machine.systemctl("start", "queuectl-worker@1.service")
    long = machine.enqueue("--", "sleep", "300")
    machine.wait_job(long, ("processing",), timeout_s=10)
    started = time.monotonic()
    machine.systemctl("stop", "queuectl-worker@1.service")
    stop_s = time.monotonic() - started

    record = machine.job(long)
    assert record["state"] == "pending", f"job {long} was not put back: {record}"
    assert record["attempts"] == 0, f"the interrupted attempt was counted: {record}"
    assert [entry["outcome"] for entry in record["history"]] == ["requeue"]
    state = machine.show("queuectl-worker@1.service", "Result", "ExecMainStatus")
    assert state == {"Result": "success", "ExecMainStatus": "0"}, (
        f"the worker did not exit by itself: {state}"
    )
    assert 4 <= stop_s < 15, f"stop took {stop_s:.1f} s, expected stop_timeout 4 s + grace 1 s"
    left = machine.run("pgrep", "-u", "queuectl", "-a", check=False).stdout
    assert "sleep 300" not in left, f"the job's process survived the stop:\n{left}"
    measurements.add("systemctl stop with a job past stop_timeout=4, kill_grace=1", stop_s)


def test_stop_extends_timeout_for_running_job(machine: Machine) -> None:
    # TimeoutStopSec= shorter than worker.stop_timeout: the worker asks for
    # more time with EXTEND_TIMEOUT_USEC, so systemd does not kill the job.
    machine.write_file(
        "/etc/systemd/system/queuectl-worker@.service.d/50-short-stop.conf",
        "[Service]\nTimeoutStopSec=3s\n",
    )
    machine.systemctl("daemon-reload")
    machine.queuectl("config", "set", "worker.stop_timeout", "10")
    machine.systemctl("start", "queuectl-worker@1.service")

    job = machine.enqueue("--", "sleep", "6")
    machine.wait_job(job, ("processing",), timeout_s=10)
    started = time.monotonic()
    machine.systemctl("stop", "queuectl-worker@1.service")
    stop_s = time.monotonic() - started

    record = machine.job(job)
    assert record["state"] == "completed", f"systemd killed job {job} during the stop: {record}"
    state = machine.show("queuectl-worker@1.service", "Result")
    assert state == {"Result": "success"}, f"the stop timed out: {state}"
    assert stop_s > 3, f"stop took {stop_s:.1f} s, so the job cannot have run to its end"


def test_reload_applies_changed_config(machine: Machine) -> None:
    unit = "queuectl-worker@1.service"
    machine.systemctl("start", unit)
    pid = machine.show(unit, "MainPID")["MainPID"]

    machine.write_file(
        "/etc/queuectl/queuectl.toml.d/50-queues.toml", '[worker]\nqueues = ["default", "mail"]\n'
    )
    machine.systemctl("reload", unit)
    state, _ = machine.wait_for(
        lambda: (
            machine.show(unit, "StatusText", "MainPID", "ActiveState")
            if machine.show(unit, "StatusText")["StatusText"] == "idle on queues default, mail"
            else None
        ),
        "the worker to report the reloaded queues",
        timeout_s=10,
    )
    assert state["MainPID"] == pid, "reload restarted the worker instead of reloading it"
    assert state["ActiveState"] == "active"
    mail = machine.enqueue("--queue", "mail", "--", "true")
    machine.wait_job(mail, ("completed",), timeout_s=20)

    # `queuectl config set` writes a drop-in the daemons can read and reloads them.
    result = machine.queuectl("config", "set", "worker.queues", '["reports"]')
    assert "asked running daemons to reload" in result.stdout, result.stdout
    machine.wait_for(
        lambda: machine.show(unit, "StatusText")["StatusText"] == "idle on queues reports",
        "the worker to take the queues set by `queuectl config set`",
        timeout_s=10,
    )
    assert machine.show(unit, "MainPID")["MainPID"] == pid


def test_invalid_config_fails_without_restart_loop(machine: Machine) -> None:
    unit = "queuectl-worker@1.service"
    machine.systemctl("start", unit)
    pid = machine.show(unit, "MainPID")["MainPID"]

    # A reload with a broken file keeps the running config.
    machine.write_file("/etc/queuectl/queuectl.toml.d/60-broken.toml", "[worker\n")
    machine.systemctl("reload", unit)
    # An idle worker notices SIGHUP when its blocking wait for work ends (1 s at most).
    machine.wait_for(
        lambda: "reload failed, keeping the running config" in machine.journal(f"--unit={unit}"),
        "the worker to log the failed reload",
        timeout_s=10,
    )
    state = machine.show(unit, "ActiveState", "MainPID", "StatusText")
    assert state["ActiveState"] == "active", f"a failed reload stopped the worker: {state}"
    assert state["MainPID"] == pid, f"a failed reload restarted the worker: {state}"
    assert "reload failed, keeping the running config" in machine.journal(f"--unit={unit}")

    # A start with an invalid value fails once, with exit code 6, and stays down.
    machine.write_file(
        "/etc/queuectl/queuectl.toml.d/60-broken.toml", '[worker]\nstop_timeout = "soon"\n'
    )
    result = machine.systemctl("restart", unit, check=False)
    assert result.returncode != 0, "restart with an invalid config succeeded"
    time.sleep(8)
    state = machine.show(unit, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert state == {
        "ActiveState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "6",
        "NRestarts": "0",
    }, f"the worker did not fail once with exit code 6: {state}"
    journal = machine.journal(f"--unit={unit}")
    assert "60-broken.toml: worker.stop_timeout must be a number" in journal, journal


def test_invalid_instance_name_fails_without_restart_loop(machine: Machine) -> None:
    unit = f"queuectl-worker@{'x' * 70}.service"
    result = machine.systemctl("start", unit, check=False)
    assert result.returncode != 0, f"{unit} started with a 70-character instance name"
    time.sleep(5)
    state = machine.show(unit, "ActiveState", "ExecMainStatus", "NRestarts")
    assert state == {"ActiveState": "failed", "ExecMainStatus": "2", "NRestarts": "0"}, (
        f"{unit} did not fail once with exit code 2: {state}"
    )
    journal = machine.journal(f"--unit={unit}")
    assert "--instance" in journal, f"the journal does not name the bad option:\n{journal}"


def test_reaper_recovers_job_of_worker_kept_down(
    machine: Machine, measurements: Measurements
) -> None:
    machine.systemctl("start", "queuectl-worker@1.service")
    job_id = machine.enqueue("--id", "orphan-1", "--", "sleep", "3")
    held_by(machine, job_id, "1")
    machine.systemctl("start", "queuectl-worker@2.service")

    machine.systemctl("mask", "--runtime", "queuectl-worker@1.service")
    started = time.monotonic()
    machine.systemctl("kill", "--signal=SIGKILL", "queuectl-worker@1.service")
    _, requeued_s = machine.wait_for(
        lambda: int(machine.job(job_id)["attempts"]) >= 2,
        f"the reaper to give job {job_id} to another worker",
        timeout_s=90,
    )
    record = machine.wait_job(job_id, ("completed", "failed", "dead"), timeout_s=30)
    completed_s = time.monotonic() - started

    assert record["state"] == "completed", f"job {job_id} did not complete: {record}"
    assert record["worker"] == "systest:2", f"job {job_id} ran on {record['worker']}"
    assert [entry["outcome"] for entry in record["history"]] == ["lost", "completed"]
    assert machine.show("queuectl-worker@1.service", "ActiveState")["ActiveState"] != "active"
    reaper = machine.journal("--unit=queuectl-reaper.service")
    assert f"job {job_id}: its worker was lost; requeued" in reaper, reaper
    # The lease is 30 s, the timer fires every 10 s with AccuracySec=1s.
    assert requeued_s < 30 + 10 + 1 + 5, f"recovery took {requeued_s:.1f} s"
    measurements.add("worker killed and kept down -> reaper requeues its job", requeued_s)
    measurements.add("worker killed and kept down -> its 3 s job completed", completed_s)


def test_journal_has_one_line_per_job_event(machine: Machine) -> None:
    unit = "queuectl-worker@1.service"
    machine.systemctl("start", unit)
    good = machine.enqueue("--", "true")
    flaky = machine.enqueue("--max-retries", "1", "--", "sh", "-c", "echo broken >&2; exit 3")
    missing = machine.enqueue("--", "/usr/bin/no-such-program")
    machine.wait_job(good, ("completed",), timeout_s=20)
    machine.wait_job(flaky, ("dead",), timeout_s=30)
    machine.wait_job(missing, ("dead",), timeout_s=20)

    expected = {
        good: ["started: attempt 1 of 4", "completed in"],
        flaky: [
            "started: attempt 1 of 2",
            "failed (exited with code 3: broken); retry in",
            "started: attempt 2 of 2",
            "dead: exited with code 3: broken",
        ],
        missing: ["dead: "],
    }
    for job_id, events in expected.items():
        lines = machine.journal(f"--unit={unit}", "--output=json", f"--grep={job_id}")
        entries = [json.loads(line) for line in lines.splitlines()]
        messages = [entry["MESSAGE"] for entry in entries]
        assert len(messages) == len(events), f"job {job_id}: expected {events}, got {messages}"
        for message, event in zip(messages, events, strict=True):
            assert f"job {job_id} " in message, f"job {job_id}: no id in {message!r}"
            assert event in message, f"job {job_id}: expected {event!r}, got {message!r}"
        for entry in entries:
            assert entry["SYSLOG_IDENTIFIER"] == "queuectl-worker@1", entry
            assert entry["QUEUECTL_INSTANCE"] == "1", entry
            assert entry["PRIORITY"] in ("4", "6"), entry


def test_cli_worker_start_and_stop_drive_units(machine: Machine) -> None:
    result = machine.queuectl("worker", "start", "--count", "2")
    assert "queuectl-worker@{1,2}.service" in result.stdout, result.stdout
    for unit in ("queuectl-worker@1.service", "queuectl-worker@2.service"):
        assert machine.show(unit, "ActiveState")["ActiveState"] == "active", unit
    assert machine.show("queuectl-worker@3.service", "ActiveState")["ActiveState"] == "inactive"

    live, _ = machine.wait_for(
        lambda: [w["name"] for w in machine.queuectl_json("worker", "list")] or None,
        "the workers' heartbeats",
        timeout_s=10,
    )
    assert sorted(live) == ["systest:1", "systest:2"], live

    for count in ("0", "257", "two"):
        bad = machine.queuectl("worker", "start", "--count", count, check=False)
        assert bad.returncode == 2, f"--count {count}: exit {bad.returncode}, {bad.stderr}"
        assert "--count" in bad.stderr, bad.stderr

    result = machine.queuectl("worker", "stop")
    assert "stopped queuectl-worker@*.service" in result.stdout, result.stdout
    for unit in ("queuectl-worker@1.service", "queuectl-worker@2.service"):
        assert machine.show(unit, "ActiveState")["ActiveState"] == "inactive", unit


def test_target_restart_and_stop_reach_every_instance(machine: Machine) -> None:
    # One instance enabled, one started by hand: both are PartOf= the target.
    machine.systemctl("enable", "--now", "queuectl-worker@1.service")
    machine.systemctl("start", "queuectl-worker@7.service")
    units = ["queuectl-scheduler.service", "queuectl-worker@1.service", "queuectl-worker@7.service"]
    pids = {unit: machine.show(unit, "MainPID")["MainPID"] for unit in units}

    machine.systemctl("restart", "queuectl.target")
    for unit in units:
        state = machine.wait_active(unit, timeout_s=30)
        assert state["MainPID"] != pids[unit], f"restarting queuectl.target missed {unit}"

    # The target stops first and the units after it, so the command returns
    # before they are all down.
    machine.systemctl("stop", "queuectl.target")
    for unit in [*units, "queuectl-reaper.timer"]:
        machine.wait_for(
            lambda unit=unit: machine.show(unit, "ActiveState")["ActiveState"] == "inactive",
            f"stopping queuectl.target to stop {unit}",
            timeout_s=30,
        )


def test_boot_starts_enabled_units_and_reaper(machine: Machine, measurements: Measurements) -> None:
    machine.systemctl("enable", "queuectl-worker@1.service", "queuectl-worker@2.service")
    # No worker runs yet, so this job waits in Redis across the reboot.
    job_id = machine.enqueue("--id", "before-reboot", "--", "true")
    assert machine.job(job_id)["state"] == "pending"

    machine.reboot()
    for unit in (
        "queuectl-scheduler.service",
        "queuectl-worker@1.service",
        "queuectl-worker@2.service",
    ):
        machine.wait_active(unit, timeout_s=30)
    record = machine.wait_job(job_id, ("completed",), timeout_s=30)
    assert record["attempts"] == 1, record

    def first_pass_start_us() -> int | None:
        value = machine.show("queuectl-reaper.service", "ExecMainStartTimestampMonotonic")
        start = int(value["ExecMainStartTimestampMonotonic"] or 0)
        return start or None

    reaper_us, _ = machine.wait_for(first_pass_start_us, "the first reaper pass after boot", 30)
    manager = machine.systemctl("show", "--property=UserspaceTimestampMonotonic").stdout
    boot_us = int(manager.strip().split("=", 1)[1])
    delay_s = (reaper_us - boot_us) / 1e6
    assert 0 < delay_s < 20, f"the first reaper pass came {delay_s:.1f} s after boot"
    measurements.add("boot -> first reaper pass (OnActiveSec=5s)", delay_s)
