"""queuectl-reaper: recovers jobs of dead workers and removes expired records.

One pass, then exit (a systemd timer runs it), or ``--loop SECONDS`` on
machines without systemd.  Each pass requeues or dead-letters every job
whose lease deadline passed, deletes finished records past their retention,
and removes the records of workers that stopped heartbeating.  Several reapers at once are
safe: each job is taken by a script that checks its lease first.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .config import Config
from .errors import RedisFailure
from .service import Notifier, Signals, daemon_arguments, run_daemon
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class PassReport:
    requeued: int = 0
    dead: int = 0
    cancelled: int = 0
    removed: int = 0
    workers_forgotten: int = 0


def reap_once(store: Store, config: Config) -> PassReport:
    """Run one reaper pass; every step works in batches and never scans keys."""
    report = PassReport()
    batch = config.reaper.batch_size
    while True:
        taken = store.reap(batch)
        for job_id, state in taken:
            if state == "dead":
                report.dead += 1
                log.warning(
                    "job %s: its worker was lost and it has no retries left; now dead", job_id
                )
            elif state == "cancelled":
                report.cancelled += 1
                log.info(
                    "job %s: its worker was lost after a cancel request; now cancelled", job_id
                )
            else:
                report.requeued += 1
                log.warning("job %s: its worker was lost; requeued", job_id)
        if len(taken) < batch:
            break

    jobs = config.jobs
    retention = {
        "completed": jobs.retention_completed_s,
        "cancelled": jobs.retention_completed_s,
        "dead": jobs.retention_dead_s,
    }
    for state, age_s in retention.items():
        while True:
            removed = store.remove_finished(state, age_s, batch)
            report.removed += removed
            if removed < batch:
                break
    report.workers_forgotten = store.forget_workers(silent_s=config.worker.lease_timeout_s)
    return report


def _run(config: Config, signals: Signals, notifier: Notifier, loop_s: float | None) -> None:
    store = Store(config)
    notifier.ready("reaping")
    while True:
        try:
            report = reap_once(store, config)
            if report.requeued or report.dead or report.removed or report.workers_forgotten:
                log.info(
                    "reaper pass: %d requeued, %d dead, %d records removed, %d workers forgotten",
                    report.requeued,
                    report.dead,
                    report.removed,
                    report.workers_forgotten,
                )
        except RedisFailure as error:
            if loop_s is None:
                raise
            log.warning("%s", error)
        if loop_s is None:
            return
        notifier.status(f"sleeping {loop_s:g} s between passes")
        deadline = time.monotonic() + loop_s
        while not signals.stopping and time.monotonic() < deadline:
            notifier.watchdog()
            time.sleep(min(0.1, loop_s))
        if signals.stopping:
            return


def main(argv: Sequence[str] | None = None) -> None:
    parser = daemon_arguments("Recover jobs of dead workers and remove expired records.", argv)
    parser.add_argument(
        "--loop",
        type=float,
        metavar="SECONDS",
        help="repeat every SECONDS until stopped (default: one pass)",
    )
    args = parser.parse_args(argv)
    if args.loop is not None and not 0 < args.loop <= 86400:
        parser.error(f"--loop must be from 0 to 86400 seconds, not {args.loop:g}")

    def body(config: Config, signals: Signals, notifier: Notifier) -> None:
        _run(config, signals, notifier, args.loop)

    sys.exit(run_daemon("queuectl-reaper", body, args.config))
