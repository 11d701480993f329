"""The printed summary of a chaos run."""

from __future__ import annotations

from typing import Any

from .settings import FAULT_KINDS

# Problems and warnings printed in full; the JSON report has all of them.
SHOWN = 30


def format_report(report: dict[str, Any]) -> str:
    """Return the figures of a run as plain text, one fact a line."""
    get = report.get
    lines = [
        "",
        f"== chaos run ({get('profile')}, seed {get('seed')}): "
        f"{'PASSED' if get('passed') else 'FAILED'} in {get('elapsed_s')} s",
    ]
    faults = get("faults") or {}
    if faults:
        lines.append(
            "faults injected: "
            + ", ".join(f"{kind} {faults.get(kind, 0)}" for kind in FAULT_KINDS)
            + f" (total {sum(faults.values())})"
        )
    lines += _job_lines(report)
    lines += _recovery_lines(report)
    lines += _system_lines(report)
    lines += _problem_lines(report)
    return "\n".join(lines)


def _job_lines(report: dict[str, Any]) -> list[str]:
    get = report.get
    if "acknowledged" not in report:
        return []
    states = ", ".join(f"{n} {state}" for state, n in sorted((get("states") or {}).items()))
    enqueue = get("enqueue") or {}
    return [
        f"jobs: {get('jobs')} planned, {get('acknowledged')} acknowledged by enqueue, "
        f"{get('final')} final ({states})",
        f"lost: {get('lost')}; unfinished: {get('unfinished')}; "
        f"never acknowledged: {get('never_acknowledged')}",
        f"runs: {get('runs')} lines in the runs file; duplicates: {get('duplicates')} "
        f"in {get('jobs_with_duplicates')} jobs; unexplained runs: {get('unexplained_runs')}",
        f"attempts ended lost: {get('lost_attempts')} "
        f"({get('lost_attempts_unstarted')} of them never started); "
        f"requeued by a graceful stop: {get('requeues')}",
        f"enqueue: {enqueue.get('calls')} CLI calls, {enqueue.get('failed_calls')} failed "
        f"and were repeated with --if-absent, which found "
        f"{enqueue.get('already_stored')} jobs already stored",
    ]


def _recovery_lines(report: dict[str, Any]) -> list[str]:
    get = report.get
    recovery = get("recovery") or {}
    if not recovery:
        return []
    worst_kind, worst = max(recovery.items(), key=lambda item: item[1]["seconds"])
    lines = [
        f"longest time from a fault to an affected job's end: {worst['seconds']} s "
        f"({worst_kind} at {worst['fault_at_s']} s, job {worst['job']}); "
        f"{get('affected_jobs')} affected jobs in all"
    ]
    for kind in FAULT_KINDS:
        if kind in recovery:
            entry = recovery[kind]
            lines.append(f"  {kind:<15} {entry['seconds']:>6} s  job {entry['job']}")
    return lines


def _system_lines(report: dict[str, Any]) -> list[str]:
    get = report.get
    lines = []
    if "leftover_processes" in report:
        lines.append(
            f"processes: {get('job_processes')} job processes started; "
            f"{len(get('leftover_processes') or [])} left running; "
            f"{len(get('zombies') or [])} zombies; {get('orphans_killed')} job process groups "
            f"of killed workers killed as systemd would; {get('adopted_reaped')} orphans "
            "reaped by the harness"
        )
    if "orphan_keys" in report:
        lines.append(
            f"keyspace: {len(get('orphan_keys') or [])} orphan keys; "
            f"{len(get('inconsistencies') or [])} inconsistencies in the final snapshot and "
            f"{get('samples')} samples taken during the run"
        )
    if "after_retention" in report:
        lines.append(
            f"keyspace after retention: {_sizes(get('after_retention') or {})}; "
            f"baseline: {_sizes(get('baseline') or {})}; "
            f"{'equal' if get('keyspace_matches_baseline') else 'DIFFERENT'}"
        )
    if "unexplained_lost_attempts" in report:
        lag = get("max_exit_lag") or {}
        lines.append(
            f"lost attempts that no kill or stop of their worker explains: "
            f"{get('unexplained_lost_attempts')}; lost after a graceful stop: "
            f"{get('lost_after_graceful_stop')}; commands whose exit the worker saw "
            f"over 1 s late: {get('late_exits')} (max {lag.get('seconds')} s, job {lag.get('job')})"
        )
    return lines


def _problem_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for title, items in (
        ("warnings", report.get("warnings")),
        ("problems", report.get("problems")),
    ):
        if not items:
            continue
        lines.append(f"{title} ({len(items)}):")
        lines += [f"  - {text}" for text in items[:SHOWN]]
        if len(items) > SHOWN:
            lines.append(f"  ... {len(items) - SHOWN} more")
    for job in report.get("job_problems") or []:
        lines.append(f"job {job['id']} ({job['kind']}, {job['state']}): FAILED")
        lines += _job_story(job, job["problems"])
    for job in report.get("job_warnings") or []:
        lines.append(f"job {job['id']} ({job['kind']}): warning")
        lines += _job_story(job, job["warnings"])
    return lines


def _job_story(job: dict[str, Any], findings: list[str]) -> list[str]:
    """Return a job's findings, history, runs and log lines, indented."""
    lines = [f"  {text}" for text in findings]
    lines.append(f"  history (attempt:outcome@worker): {job['history']}")
    lines.append(f"  runs per attempt: {job['runs']}")
    lines += [f"  {line}" for line in job["log"]]
    return lines


def _sizes(sizes: dict[str, Any]) -> str:
    total = sum(int(size) for _, size in sizes.values())
    return f"{len(sizes)} keys, {total} entries"
