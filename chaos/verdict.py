"""The checks made after the faults, as methods of the chaos run.

``Verdict`` is a base class of ``ChaosRun`` in run.py.  Each method checks
one part of the outcome: it records figures in ``self.report``, failures
with ``self.problem`` and warnings with ``self.warn``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .checks import (
    JobCheck,
    check_job,
    describe_history,
    describe_proc,
    living_job_processes,
    read_job_pids,
    read_runs,
    zombies,
)
from .cluster import Cluster
from .faults import Injector, explains_loss
from .keyspace import Snapshot, inconsistencies, orphan_keys, take_snapshot
from .monitor import Watcher
from .procs import ProcessTable
from .settings import FAULT_KINDS, Settings
from .workload import Enqueuer, JobPlan

# Log lines shown per failing job, and failing jobs shown in full.
LOG_LINES_PER_JOB = 40
JOBS_SHOWN = 10
# A worker that observes its command's exit later than this after the
# command's own run time was not watching it, since a shell starts in well
# under a second.
EXIT_LAG_WARN_S = 1.0


class Verdict:
    """The post-run checks; ``ChaosRun`` provides the state they read."""

    settings: Settings
    folder: Path
    marker: str
    kill_orphans: bool
    cluster: Cluster
    table: ProcessTable
    report: dict[str, Any]
    plans: list[JobPlan]
    snapshot: Snapshot | None
    watcher: Watcher | None
    enqueuer: Enqueuer | None
    injector: Injector | None

    def say(self, text: str) -> None:
        raise NotImplementedError

    def problem(self, text: str) -> None:
        raise NotImplementedError

    def warn(self, text: str) -> None:
        raise NotImplementedError

    def check_processes(self) -> None:
        """No job process may outlive its job, and no daemon may leave a zombie behind."""
        settings = self.settings
        marker = self.marker.encode()
        grace_s = settings.heartbeat_interval_s + settings.kill_grace_s + 3.0
        if not self.kill_orphans:
            grace_s += settings.lease_timeout_s + settings.long_extra_s[1]
        limit = time.monotonic() + grace_s
        while living_job_processes(marker) and time.monotonic() < limit:
            time.sleep(0.2)
        leftovers = [describe_proc(info) for info in living_job_processes(marker)]
        self.report["leftover_processes"] = leftovers
        for text in leftovers:
            self.problem(f"job process still running {grace_s:g} s after every job ended: {text}")

        # A zombie seen in two samples 1.5 s apart is one its parent does not reap.
        daemon_pids = {p.pid for _, p in self.cluster.daemons() if p.poll() is None}
        # Pids are reused during a long run, so the set may be smaller than the list.
        started_pids = read_job_pids(self.folder / "pids")
        job_pids = set(started_pids)
        me = {os.getpid()}
        first = {z.pid for z in zombies(daemon_pids, job_pids) if z.ppid not in me}
        time.sleep(1.5)
        lasting = [z for z in zombies(daemon_pids, job_pids) if z.pid in first and z.ppid not in me]
        self.report["zombies"] = [describe_proc(info) for info in lasting]
        for info in lasting:
            self.problem(f"zombie not reaped by its parent: {describe_proc(info)}")
        self.report["job_processes"] = len(started_pids)
        self.report["adopted_reaped"] = self.table.adopted_reaped
        self.report["orphans_killed"] = self.injector.orphans_killed if self.injector else 0

    def check_keyspace(self) -> None:
        """Check one final snapshot, the samples taken during the run, and the key names."""
        assert self.watcher is not None
        client = self.cluster.client()
        keys = self.cluster.keys
        snapshot = take_snapshot(client, keys, self.settings.queues)
        self.snapshot = snapshot
        problems = inconsistencies(snapshot)
        for text in problems:
            self.problem(f"final keyspace: {text}")
        orphans = orphan_keys(client, keys)
        self.report["orphan_keys"] = orphans
        for key in orphans:
            self.problem(f"orphan key: {key}")

        self.watcher.stop.set()
        self.watcher.join(timeout=10)
        result = self.watcher.result
        self.report["samples"] = result.samples
        self.report["inconsistencies"] = problems + [
            f"at {at:.1f} s: {text}" for at, text in result.violations
        ]
        for at, text in result.violations[:20]:
            self.problem(f"keyspace sample at {at:.1f} s: {text}")
        if len(result.violations) > 20:
            self.problem(f"{len(result.violations) - 20} more keyspace sample violations")
        for job_id in result.refinished:
            self.problem(f"job {job_id} reached a final state a second time")
        for job_id in result.unreadable:
            self.problem(f"job {job_id}: final record is not valid JSON")
        for job_id in result.missed:
            self.problem(f"job {job_id}: record expired before the harness could copy it")

    def check_runs(self) -> None:
        """Check each job's runs against its history; count lost jobs and duplicates."""
        assert self.enqueuer is not None and self.watcher is not None
        stats = self.enqueuer.stats
        finals = self.watcher.result.finals
        runs, malformed = read_runs(self.folder / "runs")
        for line in malformed:
            self.problem(f"malformed line in the runs file: {line!r}")
        planned = {plan.id for plan in self.plans}
        for job_id in sorted(set(runs) - planned):
            self.problem(f"the runs file names a job that was never enqueued: {job_id}")
        for text in stats.errors:
            self.problem(f"enqueue: {text}")
        self.check_acknowledged(finals)

        checks = [check_job(p, finals.get(p.id), runs.get(p.id, Counter())) for p in self.plans]
        failing = [c for c in checks if c.problems and c.id in stats.acknowledged]
        self.report.update(
            runs=sum(c.runs for c in checks),
            duplicates=sum(c.duplicates for c in checks),
            unexplained_runs=sum(c.unexplained for c in checks),
            jobs_with_duplicates=sum(1 for c in checks if c.duplicates),
            lost_attempts=sum(c.lost for c in checks),
            lost_attempts_unstarted=sum(c.lost_unstarted for c in checks),
            requeues=sum(c.requeues for c in checks),
            enqueue={
                "calls": stats.calls,
                "failed_calls": stats.failed_calls,
                "retried_batches": stats.retried_batches,
                "already_stored": stats.already_stored,
            },
        )
        self.report["job_problems"] = [
            {
                "id": c.id,
                "kind": c.kind,
                "state": c.state,
                "problems": c.problems,
                "history": describe_history(finals.get(c.id, {})),
                "runs": dict(runs.get(c.id, Counter())),
                "log": self.log_lines(c.id),
            }
            for c in failing[:JOBS_SHOWN]
        ]
        for check in failing:
            self.problem(f"job {check.id} ({check.kind}): {'; '.join(check.problems)}")
        for check in checks:
            for text in check.warnings:
                self.warn(f"job {check.id}: {text}")
        self.report["job_warnings"] = [
            {
                "id": c.id,
                "kind": c.kind,
                "warnings": c.warnings,
                "history": describe_history(finals.get(c.id, {})),
                "runs": dict(runs.get(c.id, Counter())),
                "log": self.log_lines(c.id),
            }
            for c in [c for c in checks if c.warnings][:JOBS_SHOWN]
        ]
        self.report_exit_lags(checks, finals)
        self.measure_recovery(finals)
        self.attribute_losses(finals)

    def check_acknowledged(self, finals: dict[str, dict[str, Any]]) -> None:
        """Count acknowledged jobs never seen final: still in Redis (unfinished) or gone (lost)."""
        assert self.enqueuer is not None
        acknowledged = self.enqueuer.stats.acknowledged
        records = self.snapshot.records if self.snapshot else {}
        unfinished = {}
        lost = []
        for job_id in acknowledged:
            if job_id in finals:
                continue
            if job_id in records:
                unfinished[job_id] = records[job_id].get("state")
            else:
                lost.append(job_id)
        never = sorted({plan.id for plan in self.plans} - set(acknowledged))
        self.report.update(
            acknowledged=len(acknowledged),
            never_acknowledged=len(never),
            lost=len(lost),
            unfinished=len(unfinished),
            final=len(finals),
            states=dict(Counter(str(record.get("state")) for record in finals.values())),
        )
        for job_id in lost:
            self.problem(f"job {job_id} was acknowledged but is gone without a final state")
        for job_id, state in unfinished.items():
            self.problem(f"job {job_id} is still {state}: {describe_history(records[job_id])}")
        if never:
            self.problem(f"{len(never)} jobs were never acknowledged, such as {never[0]}")

    def report_exit_lags(self, checks: list[JobCheck], finals: dict[str, dict[str, Any]]) -> None:
        """Warn about completed jobs whose worker saw the command exit late.

        A worker stopped with SIGSTOP during the attempt observes the exit
        late on purpose, so such jobs are left out.
        """
        assert self.injector is not None
        stops = [f for f in self.injector.faults if f.kind == "stop_worker"]
        measured = []
        for check in checks:
            history = finals.get(check.id, {}).get("history") or []
            if check.exit_lag_s is None or not history:
                continue
            last = history[-1]
            instance = str(last.get("worker", "")).rpartition(":")[2]
            started, ended = int(last.get("started_ms", 0)), int(last.get("finished_ms", 0))
            if not any(f.worker == instance and started <= f.at_ms <= ended for f in stops):
                measured.append(check)
        if measured:
            worst = max(measured, key=lambda c: c.exit_lag_s or 0.0)
            self.report["max_exit_lag"] = {
                "seconds": round(worst.exit_lag_s or 0.0, 2),
                "job": worst.id,
            }
        late = sorted(
            (c for c in measured if (c.exit_lag_s or 0.0) > EXIT_LAG_WARN_S),
            key=lambda c: -(c.exit_lag_s or 0.0),
        )
        self.report["late_exits"] = len(late)
        for check in late[:JOBS_SHOWN]:
            self.warn(
                f"job {check.id}: the worker saw its command exit {check.exit_lag_s:.1f} s "
                f"after the command's own run time"
            )

    def attribute_losses(self, finals: dict[str, dict[str, Any]]) -> None:
        """Warn about lost attempts that no kill or stop of their worker explains.

        These are warnings, not failures, because the job still ran again as
        the guarantee allows.  But the worker was not killed or stopped, so
        it lost the attempt by a fault of its own.
        """
        assert self.injector is not None
        faults = self.injector.faults
        unexplained = []
        graceful = []
        for job_id, record in sorted(finals.items()):
            for entry in record.get("history") or []:
                if entry.get("outcome") != "lost":
                    continue
                instance = str(entry.get("worker", "")).rpartition(":")[2]
                started = int(entry.get("started_ms", 0))
                ended = int(entry.get("finished_ms", 0))
                text = (
                    f"job {job_id} attempt {entry.get('attempt')} on {entry.get('worker')}: "
                    f"{entry.get('error')}"
                )
                if not any(explains_loss(f, instance, started, ended) for f in faults):
                    unexplained.append(text)
                # A restarted worker takes back its job as lost.  After a graceful
                # stop, with no kill or SIGSTOP in between, it should find none.
                own = [
                    f.kind
                    for f in faults
                    if f.worker == instance and started - 1000 <= f.at_ms <= ended
                ]
                if "term_worker" in own and not {"kill_worker", "stop_worker"} & set(own):
                    graceful.append(text)
        self.report["unexplained_lost_attempts"] = len(unexplained)
        self.report["lost_after_graceful_stop"] = len(graceful)
        for text in unexplained:
            self.warn(f"lost attempt that no kill or stop of its worker explains: {text}")
        # A gracefully stopped worker records or puts back its job itself.
        for text in graceful:
            self.problem(f"lost attempt after a graceful stop of its worker: {text}")

    def measure_recovery(self, finals: dict[str, dict[str, Any]]) -> None:
        """Record, per fault kind, the longest time from a fault to an affected job's end."""
        assert self.injector is not None
        faults = self.injector.faults
        self.report["faults"] = {kind: sum(f.kind == kind for f in faults) for kind in FAULT_KINDS}
        self.report["fault_log"] = [
            {
                "kind": f.kind,
                "at_s": round(f.at_s, 1),
                "target": f.target,
                "lasted_s": round(f.lasted_s, 1),
                "affected": f.affected,
                "note": f.note,
            }
            for f in faults
        ]
        for kind, count in self.report["faults"].items():
            if count < self.settings.faults_per_kind:
                self.problem(
                    f"{kind} injected {count} times, planned {self.settings.faults_per_kind}"
                )

        longest: dict[str, dict[str, Any]] = {}
        for fault in faults:
            for job_id in fault.affected:
                finished = finals.get(job_id, {}).get("finished_ms")
                if not isinstance(finished, int) or finished < fault.at_ms:
                    continue
                seconds = (finished - fault.at_ms) / 1000
                if seconds > longest.get(fault.kind, {}).get("seconds", -1.0):
                    longest[fault.kind] = {
                        "seconds": round(seconds, 2),
                        "job": job_id,
                        "fault_at_s": round(fault.at_s, 1),
                    }
        self.report["recovery"] = longest
        self.report["affected_jobs"] = sum(len(f.affected) for f in faults)

    def log_lines(self, job_id: str) -> list[str]:
        """Return the daemon log lines that name ``job_id``, in time order.

        Repeated "heartbeat failed" lines are left out and counted in a last line.
        """
        found = []
        skipped = 0
        for path in sorted(self.cluster.logs.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if job_id not in line:
                    continue
                if "heartbeat failed" in line:
                    skipped += 1
                    continue
                # Each line starts with its time stamp, so sorting orders them in time.
                found.append((line, f"{path.stem}: {line}"))
        lines = [text for _, text in sorted(found)][:LOG_LINES_PER_JOB]
        if skipped:
            lines.append(f'({skipped} "heartbeat failed" lines left out)')
        return lines
