"""queuectl-worker: claims jobs, runs them one at a time and records the outcomes.

One process per systemd unit instance (``queuectl-worker@3``).  Its name in
Redis is ``<host>:<instance>``, so a restarted instance finds the jobs its
predecessor held and takes them back at once.  While idle the worker blocks
on its queues' notify lists, so a new job starts within milliseconds without
polling.

Recording outcomes and claiming the next jobs is one Redis call.  When the
queue stays deep and jobs are short, the worker claims several jobs per call
(doubling up to ``BATCH_MAX``) and records their outcomes together, so the
call's cost is shared.  No job waits in a batch longer than ``BATCH_HOLD_S``:
then the worker records what finished and hands back what it has not
started, and claims one job at a time again.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import shlex
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from . import __version__
from .allowlist import rejection
from .config import Config, check_not_root
from .errors import ConflictError, RedisFailure
from .jobs import Claimed
from .runner import (
    Running,
    SpawnError,
    become_subreaper,
    keep_fds_from_jobs,
    reap_orphans,
    spawn,
)
from .service import Notifier, Signals, daemon_arguments, reload_config, run_daemon, wait_for_redis
from .store import Attempt, Claim, Outcome, Store, WorkerKeys

log = logging.getLogger(__name__)

# Maximum time a worker blocks waiting for work, so it notices stops and reloads.
IDLE_BLOCK_S = 1.0
# Most jobs claimed by one call.
BATCH_MAX = 16
# Maximum time a claimed job waits to start, or an outcome waits to be recorded.
BATCH_HOLD_S = 0.25
INSTANCE_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# How often the STATUS of a running job is refreshed.
STATUS_EVERY_S = 1.0


def backoff_delay_s(attempts: int, base: float, cap_s: float) -> float:
    """Return the delay before retry number ``attempts``.

    The delay is ``base ** attempts`` capped at ``cap_s``, then jittered to
    between half and all of that, so jobs that failed together spread out.
    """
    try:
        delay = min(base**attempts, cap_s)
    except OverflowError:
        delay = cap_s
    return delay / 2 + random.uniform(0, delay / 2)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Worker:
    """One worker process and its main loop."""

    def __init__(
        self,
        config: Config,
        signals: Signals,
        notifier: Notifier,
        instance: str,
        config_arg: str | None,
    ) -> None:
        self.config = config
        self.signals = signals
        self.notifier = notifier
        self.config_arg = config_arg
        self.host = socket.gethostname()
        self.instance = instance
        self.name = f"{self.host}:{instance}"
        self.started_at = time.time()
        self.current: Claimed | None = None
        self.next_beat = 0.0
        # Claimed and not started yet, and finished with the outcome not recorded yet.
        self.ready: deque[Claimed] = deque()
        self.done: list[Attempt] = []
        self.batch = 1
        self.claimed_at = 0.0
        self.hold_until = 0.0
        # Jobs whose outcome call failed once: a later "lost" may mean it was recorded.
        self.unsure: set[str] = set()
        # Claimed jobs whose hand-back failed; see _release.
        self.unreleased: list[Claimed] = []
        self._apply(config)

    def _apply(self, config: Config) -> None:
        self.config = config
        self.store = Store(config, block_s=IDLE_BLOCK_S)
        self.keys: WorkerKeys = self.store.worker_keys(config.worker.queues)
        self.lease_ms = round(config.worker.lease_timeout_s * 1000)
        self.hold_s = min(BATCH_HOLD_S, config.worker.lease_timeout_s / 4)
        self.idle_text = f"idle on queues {', '.join(config.worker.queues)}"

    # --- life cycle ----------------------------------------------------------

    def run(self) -> None:
        check_not_root(self.config.worker, os.geteuid())
        become_subreaper()
        keep_fds_from_jobs()
        if not wait_for_redis(self._start, self.signals, self.notifier, what="worker"):
            return
        self.notifier.ready(self.idle_text)
        log.info(
            "worker %s started, pid %d, queues %s",
            self.name,
            os.getpid(),
            ",".join(self.config.worker.queues),
        )
        while not self.signals.stopping:
            if self.signals.reload:
                self._reload()
            try:
                self._cycle()
            except RedisFailure as error:
                self._wait_after(error)
        self._stop()

    def _start(self) -> None:
        self.store.ping()
        self._check_predecessor()
        for job_id, state in self.store.reclaim(self.name):
            log.warning(
                "job %s: took it back from the previous process of %s; now %s",
                job_id,
                self.name,
                state,
            )
        self._beat()

    def _check_predecessor(self) -> None:
        for entry in self.store.workers():
            if entry.get("name") != self.name or entry.get("host") != self.host:
                continue
            pid = entry.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and _is_worker_process(pid):
                raise ConflictError(
                    f"worker name {self.name} is in use by running process {pid}; "
                    "give this worker another --instance"
                )

    def _reload(self) -> None:
        self.signals.reload = False
        fresh = reload_config(self.config_arg, self.config, self.notifier)
        if fresh is not self.config:
            self.store.close()
            self._apply(fresh)
        self.notifier.status(self.idle_text)

    def _stop(self) -> None:
        self.notifier.status("stopping")
        if self.unreleased:
            self._release([])
        try:
            self.store.forget_workers([self.name])
        except RedisFailure as error:
            log.warning("could not remove the worker record: %s", error)
        log.info("worker %s stopped", self.name)

    def _wait_after(self, error: RedisFailure) -> None:
        log.warning("%s", error)
        wait_for_redis(self._resume_held, self.signals, self.notifier, what="worker")
        self.notifier.status(self.idle_text)

    def _resume_held(self) -> None:
        """After a lost connection, hand back a job whose claim reply was lost."""
        self.store.ping()
        self.unreleased = []
        for job_id, _ in self.store.reclaim(self.name, started=False):
            log.warning(
                "job %s: its claim reply was lost with the connection; handed it back", job_id
            )
        self._beat()

    # --- claiming ------------------------------------------------------------

    def _cycle(self) -> None:
        if not self.ready:
            self._take(self.store.claim(self.name, self.keys, self.lease_ms, self.batch))
        if not self.ready:
            # Jobs that arrive after a pause may be few and long: share them out.
            self.batch = 1
            if not self._interrupted():
                self._idle_wait()
            return
        while self.ready and not self._interrupted():
            self._run(self.ready.popleft())
            if self.ready and time.monotonic() < self.hold_until and not self._interrupted():
                continue
            self._flush(claim=not self.ready and not self._interrupted())
        self._flush(claim=False)

    def _interrupted(self) -> bool:
        return self.signals.stopping or self.signals.reload

    def _take(self, claim: Claim) -> None:
        for job_id in claim.skipped:
            log.error(
                "job %s: record unreadable or missing; moved to the dead-letter queue", job_id
            )
        self.ready.extend(claim.jobs)
        self.claimed_at = time.monotonic()
        self.hold_until = self.claimed_at + self.hold_s

    def _idle_wait(self) -> None:
        self.notifier.status(self.idle_text)
        self.notifier.watchdog()
        self._beat_if_due()
        reap_orphans()
        # Wake up for each heartbeat too, or a short lease_timeout would make
        # an idle worker look silent to `worker list` and the reaper.
        block_s = min(IDLE_BLOCK_S, self.config.worker.heartbeat_interval_s)
        self.store.wait_for_work(self.keys, self.notifier.max_sleep_s(block_s))

    def _beat_if_due(self) -> None:
        if time.monotonic() >= self.next_beat:
            self._beat()

    def _beat(self) -> None:
        job = self.current
        self.store.beat_worker(
            self.name,
            {
                "host": self.host,
                "instance": self.instance,
                "pid": os.getpid(),
                "queues": list(self.config.worker.queues),
                "job": job.id if job else None,
                "started": round(self.started_at),
                "version": __version__,
            },
        )
        self.next_beat = time.monotonic() + self.config.worker.heartbeat_interval_s

    # --- running -------------------------------------------------------------

    def _run(self, job: Claimed) -> None:
        """Run ``job`` and keep its outcome for the next ``_flush``."""
        started_after_ms = round((time.monotonic() - self.claimed_at) * 1000)
        self.current = job
        try:
            outcome = self._execute(job)
        finally:
            self.current = None
        # Reap what the job's killed group left to us now: a busy worker that
        # claims job after job would not reach its idle wait for a long time.
        reap_orphans()
        if outcome is not None:
            self.done.append(Attempt(job, outcome, started_after_ms))

    def _flush(self, *, claim: bool) -> None:
        """Hand back unstarted jobs, record outcomes, and claim the next batch.

        The batch doubles while every job of the last one finished within
        the hold time, and drops to one job when a batch outlasted it.
        """
        unstarted = list(self.ready)
        self.ready.clear()
        if unstarted or self.unreleased:
            self._release(unstarted)
        if unstarted or time.monotonic() >= self.hold_until:
            self.batch = 1
        elif claim:
            self.batch = min(self.batch * 2, BATCH_MAX)
        attempts, self.done = self.done, []
        count = self.batch if claim else 0
        if attempts or count:
            following = self._record(attempts, count)
            if following is not None:
                self._take(following)

    def _buffer_deadline(self) -> float:
        """Return when buffered jobs or outcomes must go to Redis (inf if none)."""
        return self.hold_until if self.ready or self.done or self.unreleased else math.inf

    def _flush_while_running(self) -> None:
        """Record outcomes and hand back unstarted jobs while a long job runs.

        One try each: what fails stays buffered until the next heartbeat.
        """
        failed = False
        if self.ready or self.unreleased:
            failed = not self._release(list(self.ready))
            self.ready.clear()
        if self.done:
            try:
                results, _ = self._finish(self.done, 0)
            except RedisFailure as error:
                for item in self.done:
                    log.warning("job %s: cannot record the outcome yet: %s", item.job.id, error)
                    self.unsure.add(item.job.id)
                failed = True
            else:
                self._log_results(self.done, results)
                self.done = []
        self.batch = 1
        if failed:
            self.hold_until = time.monotonic() + self.config.worker.heartbeat_interval_s

    def _release(self, jobs: list[Claimed]) -> bool:
        """Hand back claimed jobs that were not started; return whether Redis took them.

        Jobs whose hand-back failed are never run here: the call may still
        have reached Redis, which would then give them to another worker.
        They are handed back again with the next batch; a repeat is harmless.
        """
        jobs = self.unreleased + jobs
        try:
            self.store.release(jobs)
        except RedisFailure as error:
            log.warning("cannot hand back %d claimed jobs yet: %s", len(jobs), error)
            self.unreleased = jobs
            return False
        self.unreleased = []
        log.info(
            "handed back %d claimed jobs it had not started, from job %s",
            len(jobs),
            jobs[0].id,
        )
        return True

    def _finish(
        self, attempts: list[Attempt], count: int
    ) -> tuple[list[tuple[str, str | None]], Claim | None]:
        return self.store.finish_many(
            attempts,
            worker=self.name,
            history_limit=self.config.jobs.history_limit,
            claim_next=self.keys,
            claim_count=count,
            lease_ms=self.lease_ms,
        )

    def _record(self, attempts: list[Attempt], count: int) -> Claim | None:
        """Record ``attempts`` and claim up to ``count`` jobs; wait out Redis failures."""
        try:
            results, following = self._finish(attempts, count)
        except RedisFailure as error:
            for item in attempts:
                log.warning("job %s: cannot record the outcome yet: %s", item.job.id, error)
        else:
            self._log_results(attempts, results)
            return following

        # The reply may have been lost after the script ran, so retry without
        # claiming; a second run reports such a job's lease as lost.
        self.unsure.update(attempt.job.id for attempt in attempts)
        recorded: list[list[tuple[str, str | None]]] = []

        def attempt() -> None:
            recorded.append(self._finish(attempts, 0)[0])

        # A stopping worker still waits to record what the jobs did, for as
        # long as it would have let a job run, plus the time one call may
        # block: a retry sent while Redis stalls can take all of that.
        settings = self.config.worker
        call_s = self.config.redis.socket_timeout_s + IDLE_BLOCK_S
        give_up_at = time.monotonic() + settings.stop_timeout_s + settings.kill_grace_s + call_s
        if not wait_for_redis(
            attempt, self.signals, self.notifier, what="worker", deadline=give_up_at
        ):
            for item in attempts:
                log.error(
                    "job %s: outcome not recorded; Redis stayed unreachable while the worker "
                    "stopped, so the job will run again",
                    item.job.id,
                )
            self.unsure.clear()
            return None
        self._resume_held()
        self._log_results(attempts, recorded[0])
        return None

    def _log_results(self, attempts: list[Attempt], results: list[tuple[str, str | None]]) -> None:
        for item, (status, state) in zip(attempts, results, strict=True):
            job = item.job
            unsure = job.id in self.unsure
            self.unsure.discard(job.id)
            if status == "lost" and unsure:
                # The first call may have recorded the outcome before its reply was lost.
                log.warning(
                    "job %s: the connection broke while its outcome was recorded; "
                    "`queuectl show %s` shows what Redis kept",
                    job.id,
                    job.id,
                )
            elif status == "lost":
                log.warning(
                    "job %s: lease lost before the outcome was recorded; result discarded", job.id
                )
            else:
                self._log_outcome(job, item.outcome, state)

    def _execute(self, job: Claimed) -> Outcome | None:
        """Run the job's command; return its outcome, or None if the lease was lost."""
        jobs = self.config.jobs
        cwd = job.cwd or jobs.cwd
        env = self._environment(job)
        refused = rejection(job.command[0], self.config.security.allowed_commands, env["PATH"], cwd)
        if refused:
            return Outcome("dead", error=refused)
        try:
            process = spawn(job.command, env, cwd)
        except SpawnError as error:
            return Outcome("dead", error=str(error))

        log.info(
            "job %s started: attempt %d of %d, pid %d, command %s",
            job.id,
            job.attempts,
            int(job.record.get("max_retries", 0)) + 1,
            process.pid,
            _shown(job.command),
        )
        self.notifier.status(f"running job {job.id} for 0 s")
        running = Running(process, jobs.output_limit, self.signals.read_fd)
        reason = self._supervise(job, running)
        assert running.exit is not None
        return self._outcome(job, running, reason)

    def _environment(self, job: Claimed) -> dict[str, str]:
        env = {"PATH": self.config.jobs.path}
        env.update(self.config.jobs.environment)
        env.update(job.env)
        env.update(
            QUEUECTL_JOB_ID=job.id, QUEUECTL_JOB_ATTEMPT=str(job.attempts), QUEUECTL_QUEUE=job.queue
        )
        return env

    def _supervise(self, job: Claimed, running: Running) -> str | None:
        """Wait for the job to exit while heartbeating; return why it was stopped."""
        settings = self.config.worker
        deadline = running.started + job.timeout_s
        next_beat = running.started + settings.heartbeat_interval_s
        next_status = running.started
        stop_deadline: float | None = None
        reason: str | None = None

        while True:
            now = time.monotonic()
            wake = min(
                next_beat, next_status + STATUS_EVERY_S, now + self.notifier.max_sleep_s(60.0)
            )
            if reason is None:
                wake = min(wake, deadline, stop_deadline or wake)
            else:
                wake = min(wake, running.kill_due(settings.kill_grace_s) or wake)
            if running.pump(min(wake, self._buffer_deadline())):
                return reason
            self.signals.drain()
            now = time.monotonic()
            next_status = self._tend(job, running, now, next_status)
            if self.signals.stopping and stop_deadline is None:
                stop_deadline = self._begin_stop(job, now)
            if self.signals.stop_count >= 2 and reason in (None, "stopping"):
                reason = "stopping"
                running.kill_now()
            if now >= next_beat and reason != "lease_lost":
                reason = self._heartbeat(job, reason) or reason
                # The call may have blocked until Redis responded or timed out:
                # look at the job again before judging it by the clock.
                now = time.monotonic()
                next_beat = now + settings.heartbeat_interval_s
                if running.pump(now):
                    return reason
            if reason is None and now >= deadline:
                reason = "timeout"
            if reason is None and stop_deadline is not None and now >= stop_deadline:
                reason = "stopping"
            if reason is not None:
                running.terminate()
                running.escalate(settings.kill_grace_s)

    def _tend(self, job: Claimed, running: Running, now: float, next_status: float) -> float:
        """Do the periodic chores of a running job; return the next status time."""
        self.notifier.watchdog()
        if now >= self._buffer_deadline():
            self._flush_while_running()
        if now < next_status:
            return next_status
        self.notifier.status(f"running job {job.id} for {now - running.started:.0f} s")
        return now + STATUS_EVERY_S

    def _begin_stop(self, job: Claimed, now: float) -> float:
        """Give the running job its stop timeout; return when that ends."""
        settings = self.config.worker
        # Let other workers have the jobs this one claimed and will not start.
        self.hold_until = now
        self.notifier.extend_timeout(settings.stop_timeout_s + settings.kill_grace_s)
        log.info("job %s: stopping; the job has %.0f s to finish", job.id, settings.stop_timeout_s)
        return now + settings.stop_timeout_s

    def _heartbeat(self, job: Claimed, reason: str | None) -> str | None:
        try:
            beat = self.store.heartbeat(job, self.lease_ms)
            self._beat_if_due()
        except RedisFailure as error:
            log.warning("job %s: heartbeat failed, the job keeps running: %s", job.id, error)
            return None
        if beat == 0:
            log.warning("job %s: lease lost (the job looked abandoned); killing it", job.id)
            return "lease_lost"
        if beat == 2 and reason is None:
            log.info("job %s: cancel requested; stopping it", job.id)
            return "cancelled"
        return None

    def _outcome(self, job: Claimed, running: Running, reason: str | None) -> Outcome | None:
        assert running.exit is not None
        exit_ = running.exit
        result = Outcome(
            "completed",
            exit_code=exit_.exit_code,
            signal=exit_.signal,
            duration_ms=round(exit_.duration_s * 1000),
            stdout=running.stdout.text(),
            stderr=running.stderr.text(),
        )
        if reason == "lease_lost":
            return None
        if reason == "cancelled":
            return replace(result, kind="cancelled", error="cancelled while running")
        if reason == "stopping":
            return replace(result, kind="requeue", error="worker stopped before the job finished")

        if reason == "timeout":
            error = f"timed out after {job.timeout_s:g} s"
        elif exit_.signal is not None:
            error = f"killed by {signal_name(exit_.signal)}"
        elif exit_.exit_code == 0:
            return result
        else:
            error = f"exited with code {exit_.exit_code}"
        detail = running.stderr.last_line()
        if detail:
            error = f"{error}: {detail[:200]}"
        jobs = self.config.jobs
        delay_s = backoff_delay_s(job.attempts, jobs.backoff_base, jobs.backoff_max_s)
        return replace(result, kind="failed", error=error, retry_delay_ms=round(delay_s * 1000))

    def _log_outcome(self, job: Claimed, outcome: Outcome, state: str | None) -> None:
        seconds = outcome.duration_ms / 1000
        if state == "completed":
            log.info("job %s completed in %.3f s", job.id, seconds)
        elif state == "failed":
            log.info(
                "job %s failed (%s); retry in %.1f s",
                job.id,
                outcome.error,
                outcome.retry_delay_ms / 1000,
            )
        elif state == "dead":
            log.warning("job %s dead: %s", job.id, outcome.error)
        elif state == "cancelled":
            log.info("job %s cancelled while running", job.id)
        elif state == "pending":
            log.info("job %s put back in its queue: %s", job.id, outcome.error)


def _shown(command: Sequence[str]) -> str:
    text = shlex.join(command)
    return text if len(text) <= 200 else text[:197] + "..."


def _is_worker_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            cmdline = stream.read()
    except OSError:
        return False
    return b"queuectl" in cmdline and b"worker" in cmdline


def main(argv: Sequence[str] | None = None) -> None:
    parser = daemon_arguments("Run queued jobs, one at a time.", argv)
    parser.add_argument(
        "--instance",
        default=os.environ.get("QUEUECTL_INSTANCE", "1"),
        help="instance name; the worker's name is <host>:<instance> (default: 1)",
    )
    args = parser.parse_args(argv)
    if not INSTANCE_PATTERN.match(args.instance):
        parser.error(
            f"--instance {args.instance!r} is not a valid name; "
            "use 1 to 64 characters of A-Z a-z 0-9 . _ -"
        )

    def body(config: Config, signals: Signals, notifier: Notifier) -> None:
        Worker(config, signals, notifier, args.instance, args.config).run()

    sys.exit(run_daemon("queuectl-worker", body, args.config))


if __name__ == "__main__":
    main()
