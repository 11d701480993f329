"""Settings of a chaos run: the size of the workload, the faults, the timings.

``FULL`` is what ``make chaos`` runs and ``QUICK`` what ``make chaos-quick``
and the test suite run.  Timings are short on purpose, so that a fault
shows its effect within seconds: a 4 s lease, a 1 s Redis socket timeout,
a 3 s scheduler lock and a retention of a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

FAULT_KINDS = (
    "kill_worker",
    "kill_scheduler",
    "stop_worker",
    "restart_redis",
    "pause_redis",
    "term_worker",
)


@dataclass(frozen=True)
class Settings:
    """One chaos run.  Durations are seconds."""

    name: str
    jobs: int
    faults_per_kind: int
    workers: int = 4
    queues: tuple[str, ...] = ("default", "bulk")

    # queuectl's own config.
    socket_timeout_s: float = 1.0
    heartbeat_interval_s: float = 1.0
    lease_timeout_s: float = 4.0
    stop_timeout_s: float = 1.0
    kill_grace_s: float = 1.0
    lock_timeout_s: float = 3.0
    reaper_loop_s: float = 1.0
    retention_s: float = 15.0
    backoff_base: float = 2.0
    backoff_max_s: float = 3.0
    max_retries: int = 10

    # The workload: how long a job sleeps, and the delays of delayed jobs.
    short_sleep_s: tuple[float, float] = (0.0, 0.3)
    long_extra_s: tuple[float, float] = (0.5, 2.5)
    delay_s: tuple[float, float] = (0.5, 8.0)
    batch_size: tuple[int, int] = (10, 40)

    # The faults: the pause before each one in its lane, and how long each lasts.
    gap_s: tuple[float, float] = (3.0, 7.0)
    restart_delay_s: tuple[float, float] = (0.2, 2.0)
    redis_down_s: tuple[float, float] = (0.2, 1.5)

    # Bounds of the phases after the faults.
    settle_timeout_s: float = 180.0
    run_timeout_s: float = 1200.0
    poll_s: float = 0.25
    sample_every_s: float = 3.0

    @property
    def worker_block_s(self) -> float:
        """Maximum time a worker's Redis call waits for a reply.

        A worker blocks up to 1 s waiting for work, and its client's socket
        timeout is stretched by that second (``queuectld.worker.IDLE_BLOCK_S``).
        """
        return self.socket_timeout_s + 1.0

    @property
    def stop_worker_s(self) -> tuple[float, float]:
        """How long a worker stays stopped: always past its lease timeout."""
        return (self.lease_timeout_s + 0.5, self.lease_timeout_s + 2.0)

    @property
    def pause_redis_s(self) -> tuple[float, float]:
        """How long Redis stays stopped: always past every client's socket timeout."""
        return (self.worker_block_s + 0.3, self.worker_block_s + 1.5)


FULL = Settings(name="full", jobs=2000, faults_per_kind=8)
QUICK = Settings(
    name="quick",
    jobs=250,
    faults_per_kind=1,
    retention_s=4.0,
    delay_s=(0.5, 4.0),
    gap_s=(1.0, 3.0),
    restart_delay_s=(0.2, 0.8),
    settle_timeout_s=60.0,
    run_timeout_s=150.0,
    poll_s=0.2,
    sample_every_s=2.0,
)
PROFILES = {"full": FULL, "quick": QUICK}
