"""Turn the measurements of one run into table rows, each with its target."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .admin import BulkEnqueue, CliTimes
from .latency import Dispatch, Lateness, Recovery
from .report import MIB, Row, at_least, at_most, percentile
from .throughput import Throughput

PEERS = ("rq", "rq-simple", "dramatiq", "celery")
# Throughput rows in table order: (system key, shown with worker counts 1 and 2).
THROUGHPUT_ORDER = ("bare", "bare-worker", "queuectl", "rq", "rq-simple", "dramatiq", "celery")


@dataclass
class Results:
    """Everything one run measured; a section that failed leaves its field empty."""

    throughput: list[Throughput] = field(default_factory=list)
    dispatch: Dispatch | None = None
    lateness: Lateness | None = None
    recovery: Recovery | None = None
    bulk: BulkEnqueue | None = None
    cli: CliTimes | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def runs(self, system: str, workers: int) -> list[Throughput]:
        return [r for r in self.throughput if r.system == system and r.workers == workers]


@dataclass
class ThroughputSummary:
    """The median over rounds of one system and worker count."""

    system: str
    label: str
    workers: int
    jobs_per_s: float
    low: float
    high: float
    ratio: float | None
    cpu_ms: float
    # Medians of CPU ms per job: worker processes, the jobs' processes, redis-server.
    own_cpu_ms: float
    child_cpu_ms: float
    redis_cpu_ms: float
    other_cores: float


def summarize_throughput(results: Results) -> list[ThroughputSummary]:
    """Return medians per system and worker count; ratios are medians of per-round ratios."""
    summaries = []
    for system in THROUGHPUT_ORDER:
        for workers in (1, 2):
            runs = results.runs(system, workers)
            if not runs:
                continue
            rates = [run.jobs_per_s for run in runs]
            summaries.append(
                ThroughputSummary(
                    system,
                    runs[0].label,
                    workers,
                    statistics.median(rates),
                    min(rates),
                    max(rates),
                    _median_ratio(runs, results.runs("bare", workers)),
                    statistics.median(run.cpu_ms_per_job for run in runs),
                    statistics.median(run.own_cpu_s * 1000 / run.jobs for run in runs),
                    statistics.median(run.child_cpu_s * 1000 / run.jobs for run in runs),
                    statistics.median(run.redis_cpu_s * 1000 / run.jobs for run in runs),
                    statistics.median(run.other_cores for run in runs),
                )
            )
    return summaries


def _median_ratio(runs: Sequence[Throughput], references: Sequence[Throughput]) -> float | None:
    """Return the median of run/reference jobs-per-second ratios, pairing runs of one round."""
    pairs = list(zip(runs, references, strict=False))
    if not pairs:
        return None
    return statistics.median(run.jobs_per_s / ref.jobs_per_s for run, ref in pairs)


def throughput_rows(results: Results) -> list[Row]:
    summaries = summarize_throughput(results)
    rows = [
        Row("throughput", s.label, s.jobs_per_s, "jobs/s", s.workers, s.ratio, s.cpu_ms)
        for s in summaries
    ]
    if "throughput" in results.errors or not summaries:
        rows.append(Row("throughput", "throughput runs", None, ""))
        return rows
    rows.append(_bare_target_row(results))
    rows.append(_peer_target_row(results, summaries))
    return rows


def _bare_target_row(results: Results) -> Row:
    ratio = _median_ratio(results.runs("queuectl", 2), results.runs("bare", 2))
    return Row(
        "throughput",
        "queuectl / bare loop",
        ratio,
        "x",
        2,
        target=">= 0.85",
        met=at_least(ratio, 0.85),
    )


def _peer_target_row(results: Results, summaries: Sequence[ThroughputSummary]) -> Row:
    peers = [s for s in summaries if s.system in PEERS and s.workers == 2]
    if not peers:
        return Row("throughput", "queuectl / fastest peer", None, "x", 2)
    fastest = max(peers, key=lambda s: s.jobs_per_s)
    ratio = _median_ratio(results.runs("queuectl", 2), results.runs(fastest.system, 2))
    return Row(
        "throughput",
        f"queuectl / fastest peer ({fastest.label})",
        ratio,
        "x",
        2,
        target=">= 2.00",
        met=at_least(ratio, 2.0),
    )


def latency_rows(results: Results) -> list[Row]:
    rows = []
    dispatch = results.dispatch.latencies_ms if results.dispatch else []
    rows += [
        _percentile_row("dispatch latency", "p50", dispatch, 50, 2.0, 2),
        _percentile_row("dispatch latency", "p99", dispatch, 99, 10.0, 2),
        _percentile_row("dispatch latency", "max", dispatch, 100, None, 2),
    ]
    lateness = results.lateness.lateness_ms if results.lateness else []
    rows += [
        _percentile_row("scheduled lateness", "p50", lateness, 50, None, 2),
        _percentile_row("scheduled lateness", "p99", lateness, 99, 50.0, 2),
        _percentile_row("scheduled lateness", "max", lateness, 100, None, 2),
    ]
    return rows


def _percentile_row(
    section: str,
    name: str,
    values: Sequence[float],
    percent: float,
    limit_ms: float | None,
    workers: int,
) -> Row:
    value = percentile(values, percent) if values else None
    if limit_ms is None:
        return Row(section, name, value, "ms", workers)
    return Row(
        section,
        name,
        value,
        "ms",
        workers,
        target=f"<= {limit_ms:g} ms",
        met=at_most(value, limit_ms),
    )


def recovery_rows(results: Results) -> list[Row]:
    recovery = results.recovery
    restart = recovery.restart_s if recovery else []
    reaper = recovery.reaper_s if recovery else []
    rows = [
        Row("recovery", "worker restarted at once, median", _median(restart), "s", 1),
        Row(
            "recovery",
            "worker restarted at once, max",
            max(restart) if restart else None,
            "s",
            1,
            target="<= 2 s",
            met=at_most(max(restart), 2.0) if restart else None,
        ),
    ]
    if recovery is not None:
        name = (
            f"worker left down, reaper path, median (lease {recovery.lease_timeout_s:g} s, "
            f"reaper every {recovery.reaper_loop_s:g} s)"
        )
    else:
        name = "worker left down, reaper path, median"
    rows.append(Row("recovery", name, _median(reaper), "s", 2))
    return rows


def enqueue_and_cli_rows(results: Results) -> list[Row]:
    bulk = results.bulk
    rows = [
        Row(
            "bulk enqueue",
            f"queuectl enqueue --file, {bulk.jobs:,} lines" if bulk else "queuectl enqueue --file",
            bulk.jobs_per_s if bulk else None,
            "jobs/s",
            target=">= 50,000 jobs/s",
            met=at_least(bulk.jobs_per_s, 50_000) if bulk else None,
        )
    ]
    cli = results.cli
    stored = f"{cli.stored:,} pending" if cli else "pending"
    limits = {"queuectl enqueue -- true": 150.0, "queuectl status": 250.0}
    commands = [
        "python3 -c pass",
        "queuectl enqueue -- true",
        "queuectl status",
        "queuectl list --state pending --limit 50",
    ]
    if cli is not None:
        commands += [name for name in cli.times_ms if name not in commands]
    for command in commands:
        value = cli.median_ms(command) if cli else None
        limit = limits.get(command.split(",")[0])
        name = command
        if command.startswith("python3"):
            name = command.replace("python3 -c pass", "python3 -c pass (floor: interpreter start)")
        rows.append(
            Row(
                "CLI wall time, median",
                f"{name}, {stored}",
                value,
                "ms",
                target=f"<= {limit:g} ms" if limit else "",
                met=at_most(value, limit) if limit else None,
            )
        )
    return rows


def footprint_rows(results: Results) -> list[Row]:
    samples = [entry for run in results.runs("queuectl", 2) for entry in run.worker_rss_kib]
    samples += [entry for run in results.runs("queuectl", 1) for entry in run.worker_rss_kib]
    idle = max((entry["idle"] for entry in samples), default=None)
    peak = max((entry["peak"] for entry in samples), default=None)
    idle_mib = idle / MIB if idle is not None else None
    peak_mib = peak / MIB if peak is not None else None
    per_job = results.cli.bytes_per_job if results.cli else None
    debian_kib = results.cli.debian_worker_rss_kib if results.cli else 0
    debian_mib = debian_kib / MIB if debian_kib else None
    stored = f", {results.cli.stored:,} pending" if results.cli else ""
    return [
        Row(
            "footprint",
            "worker RSS, idle",
            idle_mib,
            "MiB",
            target="<= 30 MiB",
            met=at_most(idle_mib, 30),
        ),
        Row(
            "footprint",
            "worker RSS, peak while running jobs",
            peak_mib,
            "MiB",
            target="<= 30 MiB",
            met=at_most(peak_mib, 30),
        ),
        Row(
            "footprint",
            "worker RSS, idle, Debian's python3-redis",
            debian_mib,
            "MiB",
            target="<= 30 MiB",
            met=at_most(debian_mib, 30),
        ),
        Row(
            "footprint",
            f"Redis memory per pending job{stored}",
            per_job,
            "B",
            target="<= 1,024 B",
            met=at_most(per_job, 1024),
        ),
    ]


def all_rows(results: Results, sections: Sequence[str]) -> list[Row]:
    """Return the rows of the sections that ran, in table order."""
    dispatch, lateness = latency_rows(results)[:3], latency_rows(results)[3:]
    bulk, cli = enqueue_and_cli_rows(results)[:1], enqueue_and_cli_rows(results)[1:]
    rss, memory = footprint_rows(results)[:2], footprint_rows(results)[2:]
    groups = [
        ("throughput", throughput_rows(results)),
        ("dispatch", dispatch),
        ("lateness", lateness),
        ("recovery", recovery_rows(results)),
        ("bulk", bulk),
        ("cli", cli),
        ("throughput", rss),
        ("cli", memory),
    ]
    return [row for section, rows in groups if section in sections for row in rows]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def cpu_table(results: Results) -> str:
    """Return a markdown table of CPU per job by process kind, from the throughput runs."""
    lines = [
        "| system | workers | jobs/s | worker processes | job processes | redis-server "
        "| total CPU/job | other load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summarize_throughput(results):
        lines.append(
            f"| {s.label} | {s.workers} | {s.jobs_per_s:,.0f} | {s.own_cpu_ms:.2f} ms "
            f"| {s.child_cpu_ms:.2f} ms | {s.redis_cpu_ms:.3f} ms | {s.cpu_ms:.2f} ms "
            f"| {s.other_cores:.2f} cores |"
        )
    return "\n".join(lines)
