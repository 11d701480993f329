"""Steps of docs/operations.md, run as an operator would."""

from __future__ import annotations

import pytest
from machine import Machine

pytestmark = pytest.mark.timeout(600)


def doctor_lines(machine: Machine) -> dict[str, str]:
    """Return ``queuectl doctor``'s checks as name -> "level: detail"."""
    result = machine.queuectl("doctor", check=False)
    assert result.returncode == 0, f"doctor failed: {result.stdout}{result.stderr}"
    checks = {}
    for line in result.stdout.splitlines()[1:]:
        level, rest = line.split(None, 1)
        name, detail = rest.split(": ", 1)
        checks[name] = f"{level}: {detail}"
    return checks


def test_redis_durability_settings_satisfy_doctor(machine: Machine) -> None:
    machine.systemctl("start", "queuectl-worker@1.service")
    before = doctor_lines(machine)
    assert before["persistence"].startswith("warning: RDB snapshots only"), before

    # The settings docs/operations.md gives for Debian's redis-server.
    machine.sh(
        "sed -i -e 's/^appendonly no$/appendonly yes/' "
        "-e 's/^# maxmemory-policy noeviction$/maxmemory-policy noeviction/' "
        "/etc/redis/redis.conf"
    )
    machine.systemctl("restart", "redis-server.service")
    after = doctor_lines(machine)
    assert after["persistence"] == "ok: append-only file enabled", after
    assert after["maxmemory-policy"] == "ok: noeviction", after

    # The worker reconnects by itself after the Redis restart.
    job_id = machine.enqueue("--", "true")
    machine.wait_job(job_id, ("completed",), timeout_s=30)
