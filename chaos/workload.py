"""The jobs of a chaos run, and the thread that enqueues them with the CLI.

Every job runs the same small shell script.  It first appends one line
``<job id> <attempt>`` to the runs file, and ``<pid> <job id> <attempt>`` to
the pids file (each ``echo`` is one short write with O_APPEND, so lines of
concurrent jobs never interleave).  Then it sleeps, and it may exit non-zero
on purpose.  Every job also carries the run's marker in its environment, so
the harness can find any job process still alive, even one whose worker died.

Kinds of job, and the final state each must reach:

- ``plain``: sleeps up to 0.3 s; completed.
- ``priority``: a plain job with a priority from -9 to 9; completed.
- ``delayed``: enqueued with a delay; it must not start before its
  ``run_at``; completed.
- ``retried``: fails its first attempt (exit 3), then succeeds; completed.
- ``long``: sleeps past the lease timeout, so only heartbeats keep its
  lease; completed.
- ``doomed``: always fails, with ``max_retries = 1``; dead.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import BIN
from .settings import Settings

JOB_SCRIPT = """\
echo "$QUEUECTL_JOB_ID $QUEUECTL_JOB_ATTEMPT" >> "$1"
echo "$$ $QUEUECTL_JOB_ID $QUEUECTL_JOB_ATTEMPT" >> "$2"
sleep "$3"
case "$4" in
  fail-first) [ "$QUEUECTL_JOB_ATTEMPT" -gt 1 ] || exit 3 ;;
  fail-always) exit 4 ;;
esac
"""
# Share of each kind of job; the rest are plain.
SHARES = {"priority": 0.20, "delayed": 0.15, "retried": 0.12, "long": 0.02, "doomed": 0.05}
EXPECTED_STATE = {"doomed": "dead"}
MARKER_NAME = "QUEUECTL_CHAOS_RUN"
# Exit code of the CLI when Redis is unreachable (queuectld.errors.ExitCode).
REDIS_UNAVAILABLE = 5


@dataclass(frozen=True)
class JobPlan:
    """One job as the harness planned it."""

    id: str
    kind: str
    queue: str
    sleep_s: float
    spec: dict[str, object]

    @property
    def expected_state(self) -> str:
        return EXPECTED_STATE.get(self.kind, "completed")


def plan_jobs(settings: Settings, rng: random.Random, folder: Path, marker: str) -> list[JobPlan]:
    """Return the run's jobs in enqueue order, with kinds mixed at random."""
    kinds = []
    for kind, share in SHARES.items():
        kinds += [kind] * round(settings.jobs * share)
    kinds += ["plain"] * (settings.jobs - len(kinds))
    rng.shuffle(kinds)

    plans = []
    for number, kind in enumerate(kinds, start=1):
        job_id = f"c{number:05d}-{kind}"
        queue = rng.choice(settings.queues)
        sleep_s = rng.uniform(*settings.short_sleep_s)
        mode = "ok"
        spec: dict[str, object] = {"id": job_id, "queue": queue, "timeout": 120}
        if kind == "priority":
            spec["priority"] = rng.choice([p for p in range(-9, 10) if p != 0])
        elif kind == "delayed":
            spec["delay"] = round(rng.uniform(*settings.delay_s), 3)
        elif kind == "retried":
            mode = "fail-first"
        elif kind == "long":
            sleep_s = settings.lease_timeout_s + rng.uniform(*settings.long_extra_s)
        elif kind == "doomed":
            mode = "fail-always"
            spec["max_retries"] = 1
        spec["command"] = [
            "sh",
            "-c",
            JOB_SCRIPT,
            "chaos-job",
            str(folder / "runs"),
            str(folder / "pids"),
            f"{sleep_s:.3f}",
            mode,
        ]
        spec["env"] = {MARKER_NAME: marker}
        plans.append(JobPlan(job_id, kind, queue, round(sleep_s, 3), spec))
    return plans


@dataclass
class EnqueueStats:
    """Counters and errors of the enqueue thread."""

    calls: int = 0
    failed_calls: int = 0
    retried_batches: int = 0
    already_stored: int = 0
    errors: list[str] = field(default_factory=list)
    acknowledged: dict[str, float] = field(default_factory=dict)


class Enqueuer(threading.Thread):
    """Enqueues the planned jobs in batches, spread over ``window_s`` seconds.

    Each batch is one ``queuectl enqueue --file`` call.  A call that fails
    (Redis unreachable, reply lost) is repeated with ``--if-absent`` until it
    succeeds, so a batch that was stored before its reply was lost is kept
    as it is.  A job counts as acknowledged once a call that included it
    exited 0.
    """

    def __init__(
        self,
        plans: list[JobPlan],
        settings: Settings,
        rng: random.Random,
        folder: Path,
        run: Callable[[list[str], float], tuple[int, str, str]],
        window_s: float,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="enqueuer", daemon=True)
        self.plans = plans
        self.settings = settings
        self.folder = folder
        self.run_cli = run
        self.stop = stop
        self.stats = EnqueueStats()
        self.batches: list[list[JobPlan]] = []
        start = 0
        while start < len(plans):
            size = rng.randint(*settings.batch_size)
            self.batches.append(plans[start : start + size])
            start += size
        # Send times: the first batch at once, the rest at random over the window.
        self.offsets = [0.0, *sorted(rng.uniform(0, window_s) for _ in self.batches[1:])]

    def run(self) -> None:
        started = time.monotonic()
        for number, (batch, offset) in enumerate(zip(self.batches, self.offsets, strict=True)):
            delay = started + offset - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            self._send(number, batch)

    def _send(self, number: int, batch: list[JobPlan]) -> None:
        path = self.folder / f"batch-{number:04d}.jsonl"
        path.write_text("".join(json.dumps(plan.spec) + "\n" for plan in batch))
        argv = [str(BIN / "queuectl"), "enqueue", "--file", str(path)]
        deadline = time.monotonic() + 120.0
        retried = False
        while not self.stop.is_set():
            self.stats.calls += 1
            code, stdout, stderr = self.run_cli(argv, 60.0)
            if code == 0:
                self._acknowledge(batch, stdout, stderr)
                break
            self.stats.failed_calls += 1
            if code != REDIS_UNAVAILABLE:
                self.stats.errors.append(f"batch {number}: exit {code}: {stderr.strip()}")
            if time.monotonic() >= deadline:
                self.stats.errors.append(f"batch {number}: not stored within 120 s")
                return
            if not retried:
                argv.append("--if-absent")
                retried = True
                self.stats.retried_batches += 1
            self.stop.wait(0.3)
        path.unlink()

    def _acknowledge(self, batch: list[JobPlan], stdout: str, stderr: str) -> None:
        printed = stdout.split()
        expected = [plan.id for plan in batch]
        if printed != expected:
            self.stats.errors.append(
                f"enqueue printed {printed[:3]}..., expected {expected[:3]}..."
            )
        self.stats.already_stored += stderr.count("already exists")
        now = time.time()
        for plan in batch:
            self.stats.acknowledged[plan.id] = now
