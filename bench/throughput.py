"""Throughput: jobs per second of each system, and of the bare spawn loop.

One measurement of a queue system:

1. start a fresh redis-server and the system's workers;
2. wait until every worker announced itself, run a few warm-up jobs, let the
   workers go idle;
3. pause the workers' process groups with SIGSTOP and enqueue the jobs, so
   neither worker start-up nor the enqueue is timed;
4. resume the groups with SIGCONT and start the clock;
5. poll Redis every ``POLL_S`` until every job has finished.

Jobs per second is the job count over that interval.  The pause lasts at
least ``MIN_PAUSE_S``, longer than the longest idle back-off of any worker
(Dramatiq polls an empty queue with a back-off of up to one second), so that
every worker wakes up at once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

import redis

from .context import BENCH, Context
from .procs import (
    BenchError,
    RedisServer,
    group_cpu_s,
    group_memory_kib,
    machine_busy_s,
    memory_kib,
    signal_group,
    wait_until,
)
from .systems import System

POLL_S = 0.005
MIN_PAUSE_S = 1.5
# Time for workers to go back to waiting after the warm-up.
SETTLE_S = 0.5
WARMUP_PER_WORKER = 3
# Time the parallel bare loops get to start their interpreters before the clock starts.
BARE_START_S = 1.0


class Probe(Protocol):
    """Something that watches the timed part of a measurement, such as a profiler."""

    def start(self, leaders: list[subprocess.Popen[bytes]], server: RedisServer) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Throughput:
    """One throughput measurement."""

    system: str
    label: str
    workers: int
    jobs: int
    seconds: float
    # CPU seconds of the worker processes themselves (the bare loops for the bare
    # loop), of the children they reaped (the jobs' processes), and of redis-server.
    own_cpu_s: float
    child_cpu_s: float
    redis_cpu_s: float = 0.0
    # CPU time of every process on the machine, to show how busy the rest of it was.
    machine_cpu_s: float = 0.0
    # Sum over the system's processes, in KiB: resident when idle, and peak.
    rss_idle_kib: int = 0
    rss_peak_kib: int = 0
    # Per worker process, for systems with one process per worker.
    worker_rss_kib: list[dict[str, int]] = field(default_factory=list)

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def cpu_s(self) -> float:
        return self.own_cpu_s + self.child_cpu_s + self.redis_cpu_s

    @property
    def cpu_ms_per_job(self) -> float:
        return self.cpu_s * 1000 / self.jobs

    @property
    def other_cores(self) -> float:
        """Return the cores that other processes kept busy on average during the run."""
        return max(0.0, self.machine_cpu_s - self.cpu_s) / self.seconds


def measure_bare(ctx: Context, processes: int, jobs: int, variant: str) -> Throughput:
    """Run ``processes`` bare loops that together spawn ``true`` ``jobs`` times."""
    share = jobs // processes
    start_at = time.monotonic() + BARE_START_S
    loops = [
        subprocess.Popen(
            [sys.executable, str(BENCH / "bare_loop.py"), str(share), repr(start_at), variant],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    time.sleep(max(0.0, start_at - time.monotonic()))
    busy_before = machine_busy_s()
    ends, own_s, child_s = [], 0.0, 0.0
    for loop in loops:
        output, _ = loop.communicate(timeout=max(60.0, jobs / 50))
        if loop.returncode != 0:
            raise BenchError(f"bare loop exited with {loop.returncode}")
        end, own, children = output.split()
        ends.append(float(end))
        own_s += float(own)
        child_s += float(children)
    busy = machine_busy_s() - busy_before
    key = "bare" if variant == "plain" else "bare-worker"
    label = "bare loop" if variant == "plain" else "bare loop, worker's spawn options"
    seconds = max(ends) - start_at
    return Throughput(
        key, label, processes, share * processes, seconds, own_s, child_s, machine_cpu_s=busy
    )


def measure_system(
    ctx: Context, system: System, workers: int, jobs: int, probe: Probe | None = None
) -> Throughput:
    """Measure ``system`` with ``workers`` workers on ``jobs`` jobs (see the module doc)."""
    server = ctx.redis(f"{system.key}-{workers}")
    leaders: list[subprocess.Popen[bytes]] = []
    try:
        client = server.client()
        leaders = system.start(ctx, server, workers)
        _wait_ready(system, client, workers, leaders)

        warmup = WARMUP_PER_WORKER * workers
        system.enqueue(ctx, server, warmup)
        wait_until(
            lambda: system.outstanding(client, warmup),
            lambda left: left <= 0,
            timeout_s=120,
            description=f"{system.label}: warm-up jobs",
        )
        time.sleep(SETTLE_S)
        idle = [memory_kib(leader.pid) for leader in leaders]
        idle_total = sum(group_memory_kib(leader.pid)["VmRSS"] for leader in leaders)

        # Enqueue while paused, then time from the resume to the last job.
        paused_at = time.monotonic()
        for leader in leaders:
            signal_group(leader.pid, signal.SIGSTOP)
        system.enqueue(ctx, server, jobs)
        time.sleep(max(0.0, paused_at + MIN_PAUSE_S - time.monotonic()))
        redis_before, busy_before = server.cpu_s(), machine_busy_s()
        cpu_before = _group_cpu(leaders)
        started = time.monotonic()
        for leader in leaders:
            signal_group(leader.pid, signal.SIGCONT)
        if probe is not None:
            probe.start(leaders, server)
        wait_until(
            lambda: system.outstanding(client, warmup + jobs),
            lambda left: left <= 0,
            timeout_s=max(120.0, jobs / 10),
            interval_s=POLL_S,
            description=f"{system.label} with {workers} workers: {jobs} jobs",
        )
        seconds = time.monotonic() - started
        if probe is not None:
            probe.stop()
        own_after, child_after = _group_cpu(leaders)
        own_cpu, child_cpu = own_after - cpu_before[0], child_after - cpu_before[1]
        busy, redis_cpu = machine_busy_s() - busy_before, server.cpu_s() - redis_before

        failed = system.failed(client)
        if failed:
            raise BenchError(f"{system.label}: {failed} jobs failed; see the logs in {ctx.folder}")
        peak_total = sum(group_memory_kib(leader.pid)["VmHWM"] for leader in leaders)
        per_worker = [
            {"idle": before.get("VmRSS", 0), "peak": memory_kib(leader.pid).get("VmHWM", 0)}
            for before, leader in zip(idle, leaders, strict=True)
        ]
        return Throughput(
            system.key,
            system.label,
            workers,
            jobs,
            seconds,
            own_cpu,
            child_cpu,
            redis_cpu,
            busy,
            idle_total,
            peak_total,
            per_worker,
        )
    finally:
        for leader in leaders:
            ctx.processes.stop(leader)
        ctx.processes.stop(server.process)


def _last_line(system: System) -> str:
    """Return the last line the system's workers wrote to their log."""
    if system.log is None or not system.log.exists():
        return "no log"
    lines = system.log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "empty log"


def _group_cpu(leaders: list[subprocess.Popen[bytes]]) -> tuple[float, float]:
    readings = [group_cpu_s(leader.pid) for leader in leaders]
    return sum(own for own, _ in readings), sum(children for _, children in readings)


def _wait_ready(
    system: System, client: redis.Redis, workers: int, leaders: list[subprocess.Popen[bytes]]
) -> None:
    def count() -> int | None:
        for leader in leaders:
            if leader.poll() is not None:
                code, line = leader.returncode, _last_line(system)
                raise BenchError(f"{system.label}: a worker exited with {code}: {line}")
        return system.registered(client)

    wait_until(
        count,
        lambda registered: registered is None or registered >= workers,
        timeout_s=60,
        description=f"{system.label}: {workers} workers to register",
    )
