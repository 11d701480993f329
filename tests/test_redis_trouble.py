"""A worker whose Redis stops answering while a job runs, and then receives SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from harness import Env, RedisServer, start_redis, stop_pid


def paused_redis_stop(env: Env, tmp_path: Path, *, paused_s: float) -> dict[str, object]:
    """Run a 1 s job, pause Redis, SIGTERM the worker, resume Redis after ``paused_s``."""
    server: RedisServer = start_redis(tmp_path / "r")
    env.write_config(
        redis={"url": server.url, "socket_timeout": 1.0},
        worker={"heartbeat_interval": 0.3, "lease_timeout": 30.0, "stop_timeout": 10.0},
    )
    worker = env.spawn("queuectl-worker", "--instance", "1")
    try:
        env.enqueue(["sh", "-c", "sleep 1; echo done"], id="through")
        env.wait_for_state("through", "processing")
        os.kill(server.pid, signal.SIGSTOP)
        worker.send_signal(signal.SIGTERM)
        time.sleep(paused_s)
        os.kill(server.pid, signal.SIGCONT)
        worker.wait(timeout=30)
        record = env.store().get_job("through")
    finally:
        os.kill(server.pid, signal.SIGCONT)
        stop_pid(server.pid)
        server.process.wait()
    return {"record": record, "log": env.log_of(worker), "code": worker.returncode}


def test_job_finishing_during_outage_is_recorded(env: Env, tmp_path: Path) -> None:
    result = paused_redis_stop(env, tmp_path, paused_s=4)
    record = result["record"]
    assert isinstance(record, dict)

    assert result["code"] == 0, result["log"]
    assert record["state"] == "completed", result["log"]
    assert [entry["outcome"] for entry in record["history"]] == ["completed"]
    assert record["attempts"] == 1
    assert record["duration_ms"] < 2500, "the worker stopped watching the job during the outage"


def test_stopping_worker_waits_to_record_outcome(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / "aof"
    options = ("--appendonly", "yes", "--appendfsync", "always")
    server = start_redis(folder, *options)
    env.write_config(
        redis={"url": server.url, "socket_timeout": 1.0},
        worker={"heartbeat_interval": 0.3, "lease_timeout": 30.0, "stop_timeout": 10.0},
    )
    worker = env.spawn("queuectl-worker", "--instance", "1")
    try:
        env.enqueue(["sleep", "1"], id="through")
        env.wait_for_state("through", "processing")
        stop_pid(server.pid)
        server.process.wait()
        worker.send_signal(signal.SIGTERM)
        env.wait_for_log(worker, "cannot record the outcome yet")
        server = start_redis(folder, *options)
        worker.wait(timeout=30)
        record = env.store().get_job("through")
    finally:
        stop_pid(server.pid)
        server.process.wait()

    assert record["state"] == "completed", env.log_of(worker)
    assert [entry["outcome"] for entry in record["history"]] == ["completed"]


def test_out_of_memory_is_reported_and_waited_out(env: Env, tmp_path: Path) -> None:
    server = start_redis(tmp_path / "oom", "--maxmemory-policy", "noeviction")
    env.write_config(redis={"url": server.url})
    worker = env.spawn("queuectl-worker", "--instance", "1")
    client = server.client()
    try:
        env.wait_for_log(worker, "started")
        client.config_set("maxmemory", 1)
        refused = env.cli("enqueue", '{"id": "big", "command": ["true"]}')
        env.wait_for_log(worker, "maxmemory")
        alive_while_full = worker.poll() is None
        client.config_set("maxmemory", 0)
        created = env.cli("enqueue", '{"id": "after", "command": ["true"]}')
        record = env.wait_for_state("after", "completed", timeout_s=30)
    finally:
        client.close()
        stop_pid(server.pid)
        server.process.wait()

    assert refused.returncode == 7
    assert server.url in refused.stderr
    assert "maxmemory" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert alive_while_full, "the worker exited when Redis ran out of memory"
    assert created.returncode == 0, created.stderr
    assert record["attempts"] == 1
