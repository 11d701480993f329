"""The units' sandbox: exposure scores and what a job may touch."""

from __future__ import annotations

import re

import pytest
from machine import Machine
from session import Measurements

pytestmark = pytest.mark.timeout(600)

# Highest `systemd-analyze security` exposure each unit may have.
EXPOSURE_GOALS = {
    "queuectl-scheduler.service": 2.0,
    "queuectl-reaper.service": 2.0,
    "queuectl-worker@1.service": 3.0,
}


def run_job(machine: Machine, script: str) -> dict[str, object]:
    job_id = machine.enqueue("--max-retries", "0", "--", "sh", "-c", script)
    return machine.wait_job(job_id, ("completed", "dead"), timeout_s=20)


def test_exposure_scores_meet_goals(machine: Machine, measurements: Measurements) -> None:
    for unit, goal in EXPOSURE_GOALS.items():
        output = machine.run("systemd-analyze", "security", "--no-pager", unit).stdout
        match = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", output)
        assert match, f"no overall score for {unit} in:\n{output}"
        score = float(match.group(1))
        assert score <= goal, f"{unit} scores {score}, the goal is {goal} or less:\n{output}"
        measurements.add_score(f"systemd-analyze security {unit}", score)


def test_jobs_write_only_where_documented(machine: Machine) -> None:
    machine.systemctl("start", "queuectl-worker@1.service")

    writable = run_job(
        machine,
        "echo ok > /var/lib/queuectl/out && echo ok > /tmp/out && "
        "echo ok > /run/queuectl/worker-1/out && cat /var/lib/queuectl/out",
    )
    assert writable["state"] == "completed", f"a documented writable path failed: {writable}"

    for path in ("/etc/queuectl-job", "/srv/out", "/usr/local/out"):
        record = run_job(machine, f"echo no > {path}")
        assert record["state"] == "dead", f"a job wrote to {path}: {record}"
        assert "Read-only file system" in str(record["error"]), record
    # ProtectHome= hides home folders even where the account could read them.
    machine.write_file("/home/alice/notes", "private\n", mode="0644")
    outside = machine.run("runuser", "-u", "queuectl", "--", "cat", "/home/alice/notes")
    assert outside.stdout == "private\n"
    hidden = run_job(machine, "cat /home/alice/notes")
    assert hidden["state"] == "dead", f"a job read a home folder: {hidden}"

    # The drop-in documented in the unit widens what jobs may write.
    machine.run("mkdir", "-p", "/srv/out")
    machine.run("chown", "queuectl:queuectl", "/srv/out")
    machine.write_file(
        "/etc/systemd/system/queuectl-worker@.service.d/50-srv.conf",
        "[Service]\nReadWritePaths=/srv/out\n",
    )
    machine.systemctl("daemon-reload")
    machine.systemctl("restart", "queuectl-worker@1.service")
    widened = run_job(machine, "echo yes > /srv/out/report")
    assert widened["state"] == "completed", f"ReadWritePaths= did not widen the sandbox: {widened}"
    assert machine.run("cat", "/srv/out/report").stdout == "yes\n"


def test_config_readable_only_by_group(machine: Machine) -> None:
    listing = machine.run(
        "stat", "--format=%a %U %G", "/etc/queuectl/queuectl.toml", "/etc/queuectl/queuectl.toml.d"
    ).stdout.split("\n")
    assert listing[0] == "640 root queuectl", f"config file: {listing[0]}"
    assert listing[1] == "2750 root queuectl", f"drop-in folder: {listing[1]}"

    denied = machine.run("runuser", "-u", "nobody", "--", "queuectl", "status", check=False)
    assert denied.returncode == 6, f"a stranger read the config: {denied}"
    assert "permission denied; run as a member of its group" in denied.stderr, denied.stderr
