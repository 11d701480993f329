"""The package's life cycle: install, upgrade over running daemons, remove, purge."""

from __future__ import annotations

import time

import pytest
from machine import Machine
from session import Measurements, Settings

pytestmark = pytest.mark.timeout(600)

DAEMONS = ["queuectl-scheduler.service", "queuectl-worker@1.service", "queuectl-worker@2.service"]


def package_version(machine: Machine) -> str:
    return machine.run("dpkg-query", "--show", "--showformat=${Version}", "queuectl").stdout


def package_status(machine: Machine) -> str:
    result = machine.run(
        "dpkg-query", "--show", "--showformat=${db:Status-Abbrev}", "queuectl", check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "not installed"


def queuectl_processes(machine: Machine) -> str:
    return machine.run("pgrep", "-a", "-u", "queuectl", check=False).stdout


def test_install_enables_and_starts_daemons(
    bare_machine: Machine, settings: Settings, measurements: Measurements
) -> None:
    machine = bare_machine
    started = time.monotonic()
    machine.install_package(settings.deb)
    install_s = time.monotonic() - started

    enabled = machine.systemctl(
        "is-enabled", "queuectl.target", "queuectl-scheduler.service", "queuectl-reaper.timer"
    ).stdout.split()
    assert enabled == ["enabled"] * 3, f"units not enabled on install: {enabled}"
    template = machine.systemctl("is-enabled", "queuectl-worker@1.service", check=False)
    assert template.stdout.strip() == "disabled", f"a worker was enabled: {template.stdout}"

    for unit in ("queuectl-scheduler.service", "queuectl-reaper.timer", "queuectl.target"):
        machine.wait_active(unit, timeout_s=30)
    status = machine.show("queuectl-scheduler.service", "StatusText")["StatusText"]
    assert status.startswith("leader"), f"the scheduler did not take the lead: {status}"
    workers = machine.systemctl("list-units", "--no-legend", "queuectl-worker@*").stdout
    assert workers.strip() == "", f"worker instances started on install:\n{workers}"

    # The timer runs the reaper 5 s after it starts.
    def reaper_ran() -> dict[str, str] | None:
        state = machine.show(
            "queuectl-reaper.service", "Result", "ExecMainStatus", "ExecMainExitTimestampMonotonic"
        )
        return state if state["ExecMainExitTimestampMonotonic"] not in ("", "0") else None

    reaper, _ = machine.wait_for(reaper_ran, "the timer to run a reaper pass", timeout_s=20)
    assert reaper["Result"] == "success", reaper
    assert reaper["ExecMainStatus"] == "0", reaper

    account = machine.run("getent", "passwd", "queuectl").stdout.strip().split(":")
    assert account[5:] == ["/var/lib/queuectl", "/usr/sbin/nologin"], account
    state_dir = machine.run("stat", "--format=%a %U %G", "/var/lib/queuectl").stdout.strip()
    assert state_dir == "750 queuectl queuectl", state_dir
    measurements.add("apt-get install of the package (daemons started without waiting)", install_s)


def test_upgrade_keeps_jobs_and_restarts_daemons(
    machine: Machine, settings: Settings, measurements: Measurements
) -> None:
    machine.systemctl("enable", "--now", "queuectl-worker@1.service")
    machine.systemctl("start", "queuectl-worker@2.service")
    machine.queuectl("config", "set", "max-retries", "5")
    before = package_version(machine)

    running = machine.enqueue("--id", "upgrade-running", "--", "sleep", "4")
    machine.wait_job(running, ("processing",), timeout_s=10)
    queued = [machine.enqueue("--", "sleep", "1") for _ in range(6)]
    delayed = machine.enqueue("--id", "upgrade-delayed", "--delay", "20", "--", "true")
    pids = {unit: machine.show(unit, "MainPID")["MainPID"] for unit in DAEMONS}

    started = time.monotonic()
    machine.install_package(settings.next_deb)
    upgrade_s = time.monotonic() - started

    after = package_version(machine)
    assert after != before, f"the upgrade left version {before} installed"
    assert after.endswith("+systest1"), f"unexpected version after the upgrade: {after}"
    for unit in DAEMONS:
        state = machine.wait_active(unit, timeout_s=30)
        assert state["MainPID"] != pids[unit], f"{unit} was not restarted by the upgrade"
    assert machine.systemctl("is-enabled", "queuectl-worker@1.service").stdout.strip() == "enabled"
    assert machine.show("queuectl.target", "ActiveState")["ActiveState"] == "active"

    for job_id in [running, *queued, delayed]:
        record = machine.wait_job(job_id, ("completed", "failed", "dead"), timeout_s=60)
        assert record["state"] == "completed", f"job {job_id} did not complete: {record}"
    states = machine.queuectl_json("status")["states"]
    assert states["completed"] == 8, f"expected 8 completed jobs: {states}"
    history = machine.job(running)["history"]
    assert [entry["outcome"] for entry in history] == ["completed"], (
        f"the job running during the upgrade did not finish in its first attempt: {history}"
    )
    kept = machine.queuectl("config", "get", "max-retries").stdout.strip()
    assert kept == "5", f"the upgrade lost a setting: max-retries = {kept}"
    modes = machine.run("stat", "--format=%a %G", "/etc/queuectl/queuectl.toml").stdout.strip()
    assert modes == "640 queuectl", f"the upgrade changed the config's mode: {modes}"
    measurements.add("apt-get install of a newer version over running daemons", upgrade_s)


def test_remove_stops_every_unit_and_keeps_config(machine: Machine) -> None:
    machine.systemctl("enable", "--now", "queuectl-worker@1.service")
    machine.systemctl("start", "queuectl-worker@2.service")
    assert "queuectl-worker" in queuectl_processes(machine)

    machine.run("apt-get", "remove", "--yes", "queuectl", timeout=300)
    assert package_status(machine) == "rc", package_status(machine)
    left = queuectl_processes(machine)
    assert left == "", f"processes left running after removal:\n{left}"
    units = machine.systemctl("list-units", "--all", "--no-legend", "queuectl*").stdout
    assert "active" not in units.replace("inactive", ""), f"units still active:\n{units}"
    conffile = machine.run("test", "-f", "/etc/queuectl/queuectl.toml", check=False)
    assert conffile.returncode == 0, "apt remove deleted the config"

    machine.run("apt-get", "purge", "--yes", "queuectl", timeout=300)
    assert package_status(machine) == "not installed", package_status(machine)
    assert_purged(machine)


def test_purge_removes_units_state_and_config(machine: Machine) -> None:
    machine.systemctl("enable", "--now", "queuectl-worker@1.service")
    machine.queuectl("config", "set", "timeout", "60")
    job_id = machine.enqueue("--", "sh", "-c", "echo state > /var/lib/queuectl/left-by-a-job")
    machine.wait_job(job_id, ("completed",), timeout_s=20)

    machine.run("apt-get", "purge", "--yes", "queuectl", timeout=300)
    assert package_status(machine) == "not installed", package_status(machine)
    left = queuectl_processes(machine)
    assert left == "", f"processes left running after purge:\n{left}"
    assert_purged(machine)
    # Debian keeps system accounts: files the account owns may remain elsewhere.
    assert machine.run("getent", "passwd", "queuectl", check=False).returncode == 0


def assert_purged(machine: Machine) -> None:
    for path in (
        "/etc/queuectl",
        "/var/lib/queuectl",
        "/etc/systemd/system/queuectl.target.wants",
        "/etc/systemd/system/multi-user.target.wants/queuectl.target",
        "/lib/systemd/system/queuectl-worker@.service",
        "/usr/lib/tmpfiles.d/queuectl.conf",
        "/usr/bin/queuectl",
    ):
        exists = machine.run("test", "-e", path, check=False).returncode == 0
        assert not exists, f"{path} survived the purge"
    files = machine.systemctl("list-unit-files", "--no-legend", "queuectl*", check=False)
    assert files.stdout.strip() == "", f"unit files left after purge:\n{files.stdout}"
    overrides = machine.run("dpkg-statoverride", "--list").stdout
    assert "queuectl" not in overrides, f"stat overrides left after purge:\n{overrides}"
