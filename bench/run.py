"""Run the benchmark and print one table: ``python -m bench [--quick]`` from the repository root.

``make bench`` and ``make bench-quick`` install what it needs and run it.
It uses queuectl from the interpreter running it, and RQ, Dramatiq and
Celery from the peers' virtualenv (``--peers-python``).  Every redis-server
it starts listens on 127.0.0.1, and every process it starts is stopped by
its process id when the run ends.  Results go to ``--out``: results.json,
table.txt, table.md, cpu.md, profile.txt with py-spy's raw samples and,
with ``--chart``, throughput.png.

The exit code is 1 when a measurement produced no number, 0 otherwise; no
timing is checked against its target by the exit code.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from . import admin, latency, profile_cli, profiling, throughput
from .context import BENCH, Context
from .procs import BenchError
from .report import markdown_table, missing, text_table
from .summary import Results, all_rows, cpu_table, summarize_throughput
from .systems import all_systems


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    name: str
    throughput_jobs: int
    rounds: int
    dispatch_jobs: int
    lateness_jobs: int
    lateness_spacing_s: float
    recovery_trials: int
    bulk_jobs: int
    stored_jobs: int
    cli_runs: int
    profile_jobs: int


FULL = Plan(
    name="full",
    throughput_jobs=5000,
    rounds=3,
    dispatch_jobs=1000,
    lateness_jobs=200,
    lateness_spacing_s=0.05,
    recovery_trials=5,
    bulk_jobs=100_000,
    stored_jobs=1_000_000,
    cli_runs=10,
    profile_jobs=20_000,
)
QUICK = Plan(
    name="quick",
    throughput_jobs=300,
    rounds=1,
    dispatch_jobs=100,
    lateness_jobs=40,
    lateness_spacing_s=0.05,
    recovery_trials=1,
    bulk_jobs=10_000,
    stored_jobs=20_000,
    cli_runs=3,
    profile_jobs=0,
)
# Pending jobs stored while the CLI is profiled.  The profiled commands read a
# count or a page of each sorted set, which takes no longer with more jobs.
PROFILE_STORED = 100_000
SECTIONS = ("throughput", "dispatch", "lateness", "recovery", "bulk", "cli", "profile")


@dataclass
class Profiles:
    workers: list[profiling.Profile]
    cli: profile_cli.CliProfile

    def render(self) -> str:
        parts = [profiling.render(profile) for profile in self.workers]
        return "\n".join([*parts, profile_cli.render(self.cli)])


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark queuectl against RQ, Dramatiq and Celery."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes; under two minutes")
    parser.add_argument(
        "--peers-python",
        type=Path,
        default=BENCH / ".venv-peers" / "bin" / "python",
        help="interpreter of the virtualenv holding rq, dramatiq, celery (and py-spy, matplotlib)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="folder for the results")
    parser.add_argument("--chart", action="store_true", help="draw throughput.png (matplotlib)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (overrides the plan)")
    parser.add_argument("--rounds", type=int, help="throughput rounds (overrides the plan)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and its logs")
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section {', '.join(sorted(unknown))}; choose from {SECTIONS}")
    return args


def compile_queuectld() -> None:
    """Byte-compile queuectld, as an installed package is.

    Without it, a process started with ``PYTHONDONTWRITEBYTECODE`` set would
    compile every module it imports from source, which no installed copy does.
    """
    package = Path(__file__).resolve().parent.parent / "queuectld"
    if not compileall.compile_dir(package, quiet=1):
        raise BenchError(f"byte-compiling {package} failed")


def build_stamp(folder: Path) -> Path:
    """Compile bench/stamp.c, statically if the C library allows it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BenchError("no C compiler found; install gcc (`make bench` does)")
    output = folder / "stamp"
    source = str(BENCH / "stamp.c")
    for extra in (["-static"], []):
        result = subprocess.run(
            [compiler, "-O2", *extra, "-o", str(output), source], capture_output=True, text=True
        )
        if result.returncode == 0:
            return output
    raise BenchError(f"cannot compile {source}: {result.stderr.strip()}")


def run_sections(
    ctx: Context, plan: Plan, sections: list[str], results: Results
) -> Profiles | None:
    """Run each section in turn; a failed one is recorded and the others still run."""
    steps: dict[str, Callable[[], Any]] = {
        "throughput": lambda: _throughput(ctx, plan, results),
        "dispatch": lambda: setattr(
            results, "dispatch", latency.measure_dispatch(ctx, plan.dispatch_jobs)
        ),
        "lateness": lambda: setattr(
            results,
            "lateness",
            latency.measure_lateness(ctx, plan.lateness_jobs, plan.lateness_spacing_s),
        ),
        "recovery": lambda: setattr(
            results, "recovery", latency.measure_recovery(ctx, plan.recovery_trials)
        ),
        "bulk": lambda: setattr(results, "bulk", admin.measure_bulk_enqueue(ctx, plan.bulk_jobs)),
        "cli": lambda: setattr(
            results, "cli", admin.measure_cli(ctx, plan.stored_jobs, plan.cli_runs)
        ),
    }
    profile: Profiles | None = None
    for section in sections:
        started = time.monotonic()
        _progress(f"{section}: started")
        try:
            if section == "profile":
                if plan.profile_jobs:
                    profile = Profiles(
                        profiling.measure_profile(ctx, plan.profile_jobs),
                        profile_cli.measure_cli_profile(ctx, PROFILE_STORED, plan.bulk_jobs),
                    )
            else:
                steps[section]()
        except (BenchError, redis.RedisError, subprocess.SubprocessError, OSError) as error:
            results.errors[section] = f"{type(error).__name__}: {error}"
            _progress(f"{section}: FAILED: {error}")
            continue
        _progress(f"{section}: done in {time.monotonic() - started:.0f} s")
    return profile


def _throughput(ctx: Context, plan: Plan, results: Results) -> None:
    # Rounds interleave the systems, so a slow spell of the machine hits all of them.
    for round_number in range(1, plan.rounds + 1):
        for variant in ("plain", "worker"):
            for workers in (1, 2):
                run = throughput.measure_bare(ctx, workers, plan.throughput_jobs, variant)
                _record(results, run, round_number)
        for system in all_systems():
            for workers in (1, 2):
                run = throughput.measure_system(ctx, system, workers, plan.throughput_jobs)
                _record(results, run, round_number)


def _record(results: Results, run: throughput.Throughput, round_number: int) -> None:
    results.throughput.append(run)
    _progress(
        f"  round {round_number}: {run.label}, {run.workers} workers: "
        f"{run.jobs_per_s:,.0f} jobs/s, {run.cpu_ms_per_job:.2f} ms CPU per job, "
        f"other processes {run.other_cores:.2f} cores"
    )


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- the machine ---------------------------------------------------------------


def machine_info(ctx: Context) -> dict[str, str]:
    """Describe the machine and the versions in use."""
    info = {
        "cores": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "memory": _memory_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis-py (queuectl)": _version("redis"),
        "hiredis (queuectl)": _version("hiredis"),
    }
    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    info["redis-server"] = next((w[2:] for w in server if w.startswith("v=")), "unknown")
    info["queuectl commit"] = _commit()
    info.update(_peer_versions(ctx))
    return info


def _commit() -> str:
    """Return the commit of the queuectl tree under test, marked if queuectld/ has changes."""
    root = BENCH.parent
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    changes = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--", "queuectld"],
        capture_output=True,
        text=True,
    )
    dirty = " with uncommitted changes in queuectld/" if changes.stdout.strip() else ""
    return head.stdout.strip() + dirty


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as stream:
        for line in stream:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _memory_total() -> str:
    with open("/proc/meminfo") as stream:
        for line in stream:
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _peer_versions(ctx: Context) -> dict[str, str]:
    packages = ["rq", "dramatiq", "celery", "kombu", "redis", "hiredis"]
    script = (
        "import json, sys\nfrom importlib import metadata\n"
        "def v(p):\n    try:\n        return metadata.version(p)\n"
        "    except metadata.PackageNotFoundError:\n        return 'not installed'\n"
        "print(json.dumps({p: v(p) for p in sys.argv[1:]}))"
    )
    result = subprocess.run(
        [str(ctx.peers_python), "-c", script, *packages], capture_output=True, text=True
    )
    if result.returncode != 0:
        return {"peers": f"cannot run {ctx.peers_python}: {result.stderr.strip()}"}
    versions = json.loads(result.stdout)
    return {
        (f"{name} (peers)" if name in ("redis", "hiredis") else name): value
        for name, value in versions.items()
    }


# --- output --------------------------------------------------------------------


def write_outputs(
    out: Path,
    plan: Plan,
    machine: dict[str, str],
    results: Results,
    sections: list[str],
    profile: Profiles | None,
    table: str,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = all_rows(results, sections)
    document = {
        "plan": asdict(plan),
        "machine": machine,
        "rows": [asdict(row) for row in rows],
        "throughput_summary": [asdict(s) for s in summarize_throughput(results)],
        "throughput_runs": [
            {
                **asdict(run),
                "jobs_per_s": run.jobs_per_s,
                "cpu_ms_per_job": run.cpu_ms_per_job,
                "other_cores": run.other_cores,
            }
            for run in results.throughput
        ],
        "dispatch": asdict(results.dispatch) if results.dispatch else None,
        "lateness": asdict(results.lateness) if results.lateness else None,
        "recovery": asdict(results.recovery) if results.recovery else None,
        "bulk": asdict(results.bulk) if results.bulk else None,
        "cli": asdict(results.cli) if results.cli else None,
        "errors": results.errors,
    }
    if profile is not None and profile.workers[0].throughput is not None:
        document["profiled_run"] = asdict(profile.workers[0].throughput)
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "table.txt").write_text(table + "\n")
    (out / "table.md").write_text(markdown_table(rows) + "\n")
    if results.throughput:
        (out / "cpu.md").write_text(cpu_table(results) + "\n")
    if profile is not None:
        (out / "profile.txt").write_text(profile.render())
        for worker in profile.workers:
            if worker.raw_path is not None:
                shutil.copy(worker.raw_path, out / f"py-spy-{worker.mode}.raw.txt")


def draw_chart(ctx: Context, out: Path) -> None:
    result = subprocess.run(
        [
            str(ctx.peers_python),
            str(BENCH / "chart.py"),
            str(out / "results.json"),
            str(out / "throughput.png"),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BenchError(f"chart.py failed: {result.stderr.strip()[-2000:]}")


def header(plan: Plan, machine: dict[str, str], results: Results) -> str:
    facts = ", ".join(f"{name} {value}" for name, value in machine.items())
    text = (
        f"queuectl benchmark, {plan.name} run: {plan.throughput_jobs:,} jobs per throughput run, "
        f"median of {plan.rounds} round(s)\n{facts}\n"
    )
    if results.throughput:
        others = statistics.median(run.other_cores for run in results.throughput)
        text += (
            f"Other processes on the machine kept {others:.2f} cores busy during a median "
            "throughput run.\n"
        )
    return text


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; on SIGINT or SIGTERM stop what it started and return 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    args = parse_arguments(argv)
    plan = QUICK if args.quick else FULL
    if args.jobs or args.rounds:
        plan = Plan(
            **{
                **asdict(plan),
                "throughput_jobs": args.jobs or plan.throughput_jobs,
                "rounds": args.rounds or plan.rounds,
            }
        )
    if not args.peers_python.exists():
        print(f"bench: {args.peers_python} not found; run `make bench`", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_signal)

    folder = Path(tempfile.mkdtemp(prefix="queuectl-bench-"))
    sections = args.sections.split(",")
    results = Results()
    try:
        ctx = Context(folder, args.peers_python.absolute(), build_stamp(folder))
        try:
            compile_queuectld()
            machine = machine_info(ctx)
            profile = run_sections(ctx, plan, sections, results)
        finally:
            ctx.processes.stop_all()
        rows = all_rows(results, sections)
        table = header(plan, machine, results) + text_table(rows)
        print(table)
        if results.throughput:
            print("\nCPU per job by process (medians):\n" + cpu_table(results))
        write_outputs(args.out, plan, machine, results, sections, profile, table)
        if profile is not None:
            print("\n" + profile.render())
        if args.chart:
            draw_chart(ctx, args.out)
    finally:
        if args.keep or results.errors:
            print(f"bench: logs kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)

    for section, error in results.errors.items():
        print(f"bench: {section} failed: {error}", file=sys.stderr)
    empty = missing(rows)
    if empty:
        names = "; ".join(f"{row.section}: {row.name}" for row in empty)
        print(f"bench: {len(empty)} rows produced no number: {names}", file=sys.stderr)
        return 1
    print(f"\nresults in {args.out}", file=sys.stderr)
    return 0
