"""sd_notify messages of the daemons, received on a socket as systemd would.

Each test binds a unix datagram socket, passes it as NOTIFY_SOCKET, and reads
what the daemon sends: READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1.
"""

from __future__ import annotations

import signal
from pathlib import Path

from harness import Env, NotifySocket, start_redis, stop_pid

# 0.2 s: the daemons ping every half of it, so a second brings about ten pings.
WATCHDOG_USEC = 200_000


def test_worker_reports_ready_and_idle_status(env: Env, notify_socket: NotifySocket) -> None:
    env.spawn("queuectl-worker", "--instance", "1", env=notify_socket.environ())

    ready = notify_socket.wait_for("READY=1")

    assert "STATUS=idle on queues default" in notify_socket.messages[ready]
    assert notify_socket.lines("WATCHDOG=1") == [], "pinged without WATCHDOG_USEC"


def test_worker_pings_watchdog_idle_and_busy(env: Env, notify_socket: NotifySocket) -> None:
    env.spawn("queuectl-worker", "--instance", "1", env=notify_socket.environ(WATCHDOG_USEC))
    notify_socket.wait_for("READY=1")
    notify_socket.receive(1.0)
    idle_pings = len(notify_socket.lines("WATCHDOG=1"))

    env.enqueue(["sleep", "1.5"], id="busy")
    running = notify_socket.wait_for("STATUS=running job busy for")
    notify_socket.receive(1.0)
    busy_pings = len(notify_socket.lines("WATCHDOG=1")) - idle_pings
    notify_socket.wait_for("STATUS=idle on queues default", start=running)

    assert idle_pings >= 4, f"{idle_pings} pings in 1 s while idle"
    assert busy_pings >= 4, f"{busy_pings} pings in 1 s while a job ran"


def test_worker_ignores_watchdog_of_other_pid(env: Env, notify_socket: NotifySocket) -> None:
    variables = {**notify_socket.environ(WATCHDOG_USEC), "WATCHDOG_PID": "1"}
    env.spawn("queuectl-worker", "--instance", "1", env=variables)

    notify_socket.wait_for("READY=1")
    notify_socket.receive(0.5)

    assert notify_socket.lines("WATCHDOG=1") == []


def test_worker_reload_and_stop_messages(env: Env, notify_socket: NotifySocket) -> None:
    worker = env.spawn("queuectl-worker", "--instance", "1", env=notify_socket.environ())
    ready = notify_socket.wait_for("READY=1")

    worker.send_signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", start=ready + 1)
    ready_again = notify_socket.wait_for("READY=1", start=reloading + 1)
    worker.send_signal(signal.SIGTERM)
    stopping = notify_socket.wait_for("STOPPING=1", start=ready_again + 1)
    code = worker.wait(timeout=15)

    assert notify_socket.find("MONOTONIC_USEC=", reloading) == reloading
    assert stopping > ready_again > reloading
    assert code == 0


def test_worker_reports_waiting_for_redis(
    env: Env, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    folder = tmp_path / "late"
    env.write_config(redis={"url": f"unix://{folder}/redis.sock"})
    env.spawn("queuectl-worker", "--instance", "1", env=notify_socket.environ())

    waiting = notify_socket.wait_for("STATUS=waiting for Redis: ")
    early_ready = notify_socket.find("READY=1")
    server = start_redis(folder)
    try:
        ready = notify_socket.wait_for("READY=1", start=waiting, timeout_s=30)
        for process in env.processes:
            stop_pid(process.pid)
    finally:
        stop_pid(server.pid)
        server.process.wait()

    assert early_ready is None, "READY=1 before Redis answered"
    assert ready > waiting


def test_scheduler_messages(env: Env, notify_socket: NotifySocket) -> None:
    scheduler = env.spawn("queuectl-scheduler", env=notify_socket.environ(WATCHDOG_USEC))

    ready = notify_socket.wait_for("READY=1")
    leading = notify_socket.wait_for("STATUS=leader: nothing scheduled")
    scheduler.send_signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", start=leading)
    ready_again = notify_socket.wait_for("READY=1", start=reloading + 1)
    notify_socket.receive(0.5)
    scheduler.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1", start=ready_again + 1)

    assert "STATUS=standing by" in notify_socket.messages[ready]
    assert len(notify_socket.lines("WATCHDOG=1")) >= 2
    assert scheduler.wait(timeout=15) == 0


def test_reaper_loop_messages(env: Env, notify_socket: NotifySocket) -> None:
    reaper = env.spawn("queuectl-reaper", "--loop", "0.3", env=notify_socket.environ(WATCHDOG_USEC))

    ready = notify_socket.wait_for("READY=1")
    notify_socket.wait_for("STATUS=sleeping 0.3 s between passes")
    notify_socket.wait_for("WATCHDOG=1")
    reaper.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1", start=ready + 1)

    assert "STATUS=reaping" in notify_socket.messages[ready]
    assert reaper.wait(timeout=15) == 0
