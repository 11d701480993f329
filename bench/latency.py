"""queuectl's latencies: dispatch, scheduled lateness and recovery from a killed worker.

A job learns when its process started by running ``stamp`` (bench/stamp.c),
which prints the CLOCK_REALTIME time at which it reached ``main``.  The
worker keeps the job's stdout in Redis, so the benchmark reads the stamp back
with the job's output.  The benchmark takes its own times with
``time.time_ns()``, the same clock, and the job records' ``run_at_ms`` come
from Redis ``TIME``, also that clock on this one machine.  Reading the
record's ``started_ms`` instead would miss the spawn, which is a large part
of the dispatch time, and has only millisecond resolution.

The daemons run with the default log level, info.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queuectld.jobs import validate
from queuectld.store import Store

from .context import QUEUECTL_BIN, Context, open_store
from .procs import BenchError, signal_group, wait_until

# After a job finished, time for the worker to go back to waiting for work.
IDLE_SETTLE_S = 0.005
# First check of a dispatched job's state; most jobs have finished by then.
FIRST_CHECK_S = 0.003
# How long the first attempt of a recovery job runs unless its worker is killed first.
RECOVERY_JOB_S = 20
# Lease settings of the reaper-path measurement.
REAPER_LEASE_S = 5.0
REAPER_HEARTBEAT_S = 1.0
REAPER_LOOP_S = 1.0


@dataclass
class Dispatch:
    """Dispatch latencies in ms: from enqueue returning to the job's process starting."""

    latencies_ms: list[float]
    # Enqueue returning to the claim, from the record's started_ms (1 ms resolution).
    to_claim_ms: list[float] = field(default_factory=list)


@dataclass
class Lateness:
    """Lateness in ms of delayed jobs: start of the job's process minus its due time."""

    lateness_ms: list[float]
    spacing_s: float


@dataclass
class Recovery:
    """Seconds from SIGKILL of a worker mid-job to that job completing."""

    restart_s: list[float]
    reaper_s: list[float]
    lease_timeout_s: float = REAPER_LEASE_S
    heartbeat_s: float = REAPER_HEARTBEAT_S
    reaper_loop_s: float = REAPER_LOOP_S


def _start_workers(
    ctx: Context, config_path: Path, instances: list[str], log_name: str
) -> list[subprocess.Popen[bytes]]:
    return [
        ctx.processes.start(
            [str(QUEUECTL_BIN / "queuectl-worker"), "--instance", instance],
            log=ctx.folder / log_name,
            env=ctx.queuectl_env(config_path),
        )
        for instance in instances
    ]


def _wait_registered(store: Store, instances: list[str]) -> None:
    """Wait until every worker instance in ``instances`` wrote its record to Redis."""
    expected = set(instances)

    def registered() -> set[str]:
        return {str(entry["instance"]) for entry in store.workers() if "instance" in entry}

    wait_until(
        registered,
        lambda seen: expected <= seen,
        timeout_s=30,
        description=f"queuectl workers {', '.join(sorted(expected))} to register",
    )


def _stamp_ns(store: Store, job_id: str) -> int:
    output = store.get_output(job_id).get("stdout", "").strip()
    if not output.isdigit():
        raise BenchError(f"job {job_id} printed no time stamp: {output!r}")
    return int(output)


def _wait_completed(
    store: Store, job_id: str, *, timeout_s: float, interval_s: float, description: str
) -> None:
    wait_until(
        lambda: str(store.get_job(job_id)["state"]),
        lambda state: state == "completed",
        timeout_s=timeout_s,
        interval_s=interval_s,
        description=description,
    )


# --- dispatch ----------------------------------------------------------------


def measure_dispatch(ctx: Context, jobs: int, workers: int = 2) -> Dispatch:
    """Enqueue ``jobs`` jobs one at a time, each while every worker is idle."""
    server = ctx.redis("dispatch")
    config_path = ctx.queuectl_config(server, "dispatch")
    config, store = open_store(config_path)
    instances = [str(n) for n in range(1, workers + 1)]
    leaders = _start_workers(ctx, config_path, instances, "dispatch.log")
    try:
        _wait_registered(store, instances)
        result = Dispatch([])
        for number in range(jobs + 1):
            spec = validate({"command": [str(ctx.stamp)]}, config.jobs)
            store.enqueue([spec])
            returned_ns = time.time_ns()
            time.sleep(FIRST_CHECK_S)
            _wait_completed(
                store,
                spec.id,
                timeout_s=10,
                interval_s=0.001,
                description=f"dispatch job {spec.id}",
            )
            time.sleep(IDLE_SETTLE_S)
            # The first job pays for cold caches in the worker; it is left out.
            if number == 0:
                continue
            result.latencies_ms.append((_stamp_ns(store, spec.id) - returned_ns) / 1e6)
            started_ms = int(store.get_job(spec.id)["started_ms"])
            result.to_claim_ms.append(started_ms - returned_ns / 1e6)
        return result
    finally:
        store.close()
        for leader in leaders:
            ctx.processes.stop(leader)
        ctx.processes.stop(server.process)


# --- scheduled lateness --------------------------------------------------------


def measure_lateness(ctx: Context, jobs: int, spacing_s: float, workers: int = 2) -> Lateness:
    """Enqueue ``jobs`` delayed jobs due ``spacing_s`` apart; measure how late each starts."""
    server = ctx.redis("lateness")
    config_path = ctx.queuectl_config(server, "lateness")
    config, store = open_store(config_path)
    instances = [str(n) for n in range(1, workers + 1)]
    leaders = _start_workers(ctx, config_path, instances, "lateness.log")
    leaders.append(
        ctx.processes.start(
            [str(QUEUECTL_BIN / "queuectl-scheduler")],
            log=ctx.folder / "lateness.log",
            env=ctx.queuectl_env(config_path),
        )
    )
    try:
        _wait_registered(store, instances)
        # The scheduler is up once it holds the leader lock.
        wait_until(
            lambda: store.client.exists(store.keys.scheduler),
            lambda exists: bool(exists),
            timeout_s=30,
            description="the scheduler to take the leader lock",
        )
        # All jobs go in one script call, so their delays count from one Redis time.
        specs = [
            validate({"command": [str(ctx.stamp)], "delay": 1.0 + n * spacing_s}, config.jobs)
            for n in range(jobs)
        ]
        store.enqueue(specs)
        ids = [spec.id for spec in specs]
        wait_until(
            lambda: store.counts()["states"]["completed"],
            lambda done: done >= jobs,
            timeout_s=30 + jobs * spacing_s,
            interval_s=0.1,
            description=f"{jobs} delayed jobs",
        )
        lateness = []
        for job_id in ids:
            due_ms = int(store.get_job(job_id)["run_at_ms"])
            lateness.append(_stamp_ns(store, job_id) / 1e6 - due_ms)
        return Lateness(lateness, spacing_s)
    finally:
        store.close()
        for leader in leaders:
            ctx.processes.stop(leader)
        ctx.processes.stop(server.process)


# --- recovery ------------------------------------------------------------------

# The first attempt sleeps until killed with its worker; a later attempt exits at
# once, so the time to completion is the recovery alone.
RECOVERY_COMMAND = [
    "sh",
    "-c",
    f'[ "$QUEUECTL_JOB_ATTEMPT" = 1 ] && exec sleep {RECOVERY_JOB_S}; exit 0',
]
STARTED_LINE = re.compile(r"job (\S+) started: .* pid (\d+),")


def measure_recovery(ctx: Context, trials: int) -> Recovery:
    """Kill a worker mid-job ``trials`` times: restarted at once, and left down."""
    result = Recovery([], [])
    server = ctx.redis("recovery")
    try:
        restart_path = ctx.queuectl_config(server, "recovery-restart")
        for trial in range(trials):
            result.restart_s.append(_recover_by_restart(ctx, restart_path, trial))
        server.client().flushall()
        reaper_path = ctx.queuectl_config(
            server,
            "recovery-reaper",
            worker=f"lease_timeout = {REAPER_LEASE_S}\nheartbeat_interval = {REAPER_HEARTBEAT_S}\n",
        )
        for trial in range(trials):
            result.reaper_s.append(_recover_by_reaper(ctx, reaper_path, trial))
        return result
    finally:
        ctx.processes.stop(server.process)


def _claimed_job(ctx: Context, store: Store, config: Any, log: Path) -> tuple[str, int]:
    """Enqueue a recovery job, wait until it runs; return its id and its process id."""
    spec = validate({"command": RECOVERY_COMMAND}, config.jobs)
    store.enqueue([spec])

    def job_pid() -> int | None:
        for match in STARTED_LINE.finditer(log.read_text()):
            if match.group(1) == spec.id:
                return int(match.group(2))
        return None

    pid = wait_until(
        job_pid, lambda found: found is not None, timeout_s=30, description="the job to start"
    )
    assert pid is not None
    # Let the shell exec the sleep, so the job is in the middle of its run.
    time.sleep(0.1)
    return spec.id, pid


def _kill_orphan(pid: int) -> None:
    """Stop the first attempt's process, left running by its killed worker.

    The job runs in its own session, so its pid is also its process group id.
    """
    signal_group(pid, signal.SIGKILL)


def _recover_by_restart(ctx: Context, config_path: Path, trial: int) -> float:
    config, store = open_store(config_path)
    log = ctx.folder / f"recovery-restart-{trial}.log"
    instance = f"restart-{trial}"
    (victim,) = _start_workers(ctx, config_path, [instance], log.name)
    replacement: list[subprocess.Popen[bytes]] = []
    try:
        job_id, job_pid = _claimed_job(ctx, store, config, log)
        ctx.processes.kill(victim)
        killed_at = time.monotonic()
        replacement = _start_workers(ctx, config_path, [instance], log.name)
        _wait_completed(
            store,
            job_id,
            timeout_s=60,
            interval_s=0.002,
            description="the job of the killed worker to complete after the restart",
        )
        recovered = time.monotonic() - killed_at
        _kill_orphan(job_pid)
        return recovered
    finally:
        store.close()
        for leader in [victim, *replacement]:
            ctx.processes.stop(leader)


def _recover_by_reaper(ctx: Context, config_path: Path, trial: int) -> float:
    config, store = open_store(config_path)
    log = ctx.folder / f"recovery-reaper-{trial}.log"
    (victim,) = _start_workers(ctx, config_path, [f"victim-{trial}"], log.name)
    others: list[subprocess.Popen[bytes]] = []
    try:
        job_id, job_pid = _claimed_job(ctx, store, config, log)
        # A second worker, idle, and a reaper loop take over once the lease expires.
        others = _start_workers(ctx, config_path, [f"survivor-{trial}"], log.name)
        others.append(
            ctx.processes.start(
                [str(QUEUECTL_BIN / "queuectl-reaper"), "--loop", str(REAPER_LOOP_S)],
                log=log,
                env=ctx.queuectl_env(config_path),
            )
        )
        _wait_registered(store, [f"survivor-{trial}"])
        ctx.processes.kill(victim)
        killed_at = time.monotonic()
        _wait_completed(
            store,
            job_id,
            timeout_s=60,
            interval_s=0.005,
            description="the job of the killed worker to complete through the reaper",
        )
        recovered = time.monotonic() - killed_at
        _kill_orphan(job_pid)
        return recovered
    finally:
        store.close()
        for leader in [victim, *others]:
            ctx.processes.stop(leader)
