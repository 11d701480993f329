"""The checks made after the faults: each job's runs against its history,
and the processes left behind.

A job's runs are the lines ``<job id> <attempt>`` its processes appended to
the runs file.  Its history has one entry per attempt with an outcome.  The
rules, per job:

- every run has an attempt with its number in the history, and no attempt
  number ran more often than the history has entries for it;
- every attempt that ended ``completed``, ``failed`` or ``dead`` ran, and
  has only one such outcome;
- so every run beyond one per such outcome (a duplicate) belongs to an
  attempt that ended ``lost`` (worker killed, lease lost) or ``requeue``
  (graceful stop), which is what the delivery guarantee allows;
- the job ends in the state its kind expects, its ``attempts`` field is the
  number of its last attempt, and a delayed job never started before its
  ``run_at``.

A ``requeue`` does not count as an attempt, so the attempt after it reuses
its number: one attempt number can then have two entries and two runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import ProcInfo, all_procs, command_line, has_marker
from .workload import JobPlan

NORMAL_OUTCOMES = frozenset({"completed", "failed", "dead", "cancelled"})
EXTRA_OUTCOMES = frozenset({"lost", "requeue"})


@dataclass
class JobCheck:
    """The verdict on one job."""

    id: str
    kind: str
    state: str | None = None
    runs: int = 0
    duplicates: int = 0
    unexplained: int = 0
    lost: int = 0
    lost_unstarted: int = 0
    requeues: int = 0
    exit_lag_s: float | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_runs(path: Path) -> tuple[dict[str, Counter[int]], list[str]]:
    """Return each job's count of runs per attempt number, and malformed lines."""
    runs: dict[str, Counter[int]] = {}
    malformed: list[str] = []
    if not path.exists():
        return runs, malformed
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            malformed.append(line)
            continue
        runs.setdefault(parts[0], Counter())[int(parts[1])] += 1
    return runs, malformed


def read_job_pids(path: Path) -> list[int]:
    """Return the pid of every job process that started."""
    if not path.exists():
        return []
    pids = []
    for line in path.read_text().splitlines():
        first = line.split(" ", 1)[0]
        if first.isdigit():
            pids.append(int(first))
    return pids


def describe_history(record: dict[str, Any]) -> str:
    """Return a job's history in one line: ``1:lost@vm:2 2:completed@vm:3``."""
    entries = record.get("history") or []
    return " ".join(f"{e.get('attempt')}:{e.get('outcome')}@{e.get('worker')}" for e in entries)


def check_job(plan: JobPlan, record: dict[str, Any] | None, runs: Counter[int]) -> JobCheck:
    check = JobCheck(plan.id, plan.kind, runs=sum(runs.values()))
    if record is None:
        check.problems.append("never seen in a final state")
        return check
    check.state = record.get("state")
    if check.state != plan.expected_state:
        check.problems.append(f"ended {check.state}, expected {plan.expected_state}")

    history = record.get("history") or []
    by_attempt: dict[int, list[str]] = {}
    for entry in history:
        by_attempt.setdefault(int(entry.get("attempt", -1)), []).append(str(entry.get("outcome")))

    # Runs against recorded attempts.
    for attempt, count in sorted(runs.items()):
        recorded = len(by_attempt.get(attempt, []))
        if count > recorded:
            check.unexplained += count - recorded
            check.problems.append(
                f"attempt {attempt} ran {count} time(s), the history has {recorded} entries for it"
            )

    # Recorded attempts against runs.
    for attempt, outcomes in sorted(by_attempt.items()):
        normal = [outcome for outcome in outcomes if outcome in NORMAL_OUTCOMES]
        unknown = [o for o in outcomes if o not in NORMAL_OUTCOMES | EXTRA_OUTCOMES]
        if unknown:
            check.problems.append(f"attempt {attempt} has unknown outcomes {unknown}")
        if len(normal) > 1:
            check.problems.append(f"attempt {attempt} has {len(normal)} outcomes: {normal}")
        if normal and runs.get(attempt, 0) == 0:
            check.problems.append(f"attempt {attempt} is recorded {normal[0]} but never ran")
        check.lost += outcomes.count("lost")
        check.requeues += outcomes.count("requeue")
        if "lost" in outcomes and runs.get(attempt, 0) == 0:
            check.lost_unstarted += 1

    normal_total = sum(1 for entry in history if entry.get("outcome") in NORMAL_OUTCOMES)
    check.duplicates = max(0, check.runs - normal_total)
    _check_fields(plan, record, history, check)
    _check_timing(plan, record, history, check)
    return check


def _check_timing(
    plan: JobPlan, record: dict[str, Any], history: list[dict[str, Any]], check: JobCheck
) -> None:
    """Warn about outcomes that show the worker observed its command late.

    A graceful stop kills the command with SIGTERM, so a ``requeue`` entry
    whose command exited with a code (not a signal) had finished by itself:
    its result should have been recorded, not put back.  ``duration_ms`` is
    measured by the worker up to the moment it saw the command exit, so it
    exceeds the job's sleep only by the time to start a shell, unless the
    worker stopped watching its command.
    """
    for entry in history:
        if entry.get("outcome") == "requeue" and entry.get("exit_code") is not None:
            check.warnings.append(
                f"attempt {entry.get('attempt')} was put back (requeue) although its command "
                f"had exited with code {entry.get('exit_code')}"
            )
    duration_ms = record.get("duration_ms")
    if check.state == "completed" and isinstance(duration_ms, int):
        check.exit_lag_s = duration_ms / 1000 - plan.sleep_s


def _check_fields(
    plan: JobPlan, record: dict[str, Any], history: list[dict[str, Any]], check: JobCheck
) -> None:
    if not history:
        check.problems.append("history is empty")
        return
    last = max(int(entry.get("attempt", -1)) for entry in history)
    if record.get("attempts") != last:
        check.problems.append(f"attempts is {record.get('attempts')}, the last attempt is {last}")
    final_outcome = history[-1].get("outcome")
    # A failed attempt with no retries left makes the job dead.  Its history
    # entry keeps the outcome ``failed``, and the record's error gives the reason.
    exhausted = int(record.get("attempts", 0)) > int(record.get("max_retries", 0))
    allowed = {
        "completed": ("completed",),
        "dead": ("dead", "lost", "failed") if exhausted else ("dead",),
    }.get(str(check.state), ())
    if final_outcome not in allowed:
        check.problems.append(f"state {check.state} but the last attempt ended {final_outcome}")
    if plan.kind == "delayed":
        first = min(int(entry.get("started_ms", 0)) for entry in history)
        run_at = int(record.get("run_at_ms", 0))
        if first < run_at:
            check.problems.append(f"started {run_at - first} ms before its run_at")


def living_job_processes(marker: bytes) -> list[ProcInfo]:
    """Return every running process that carries the run's marker in its environment."""
    return [info for info in all_procs() if info.state != "Z" and has_marker(info.pid, marker)]


def zombies(parents: set[int], job_pids: set[int]) -> list[ProcInfo]:
    """Return zombies whose parent is in ``parents`` or which were job processes."""
    return [
        info
        for info in all_procs()
        if info.state == "Z" and (info.ppid in parents or info.pid in job_pids)
    ]


def describe_proc(info: ProcInfo) -> str:
    text = command_line(info.pid) or info.comm
    return f"pid {info.pid} (parent {info.ppid}, group {info.pgid}, state {info.state}): {text}"
