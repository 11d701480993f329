"""Command line of the chaos run: ``python -m chaos [--quick] [--seed N] ...``.

Exits 0 when every check held, 1 when any failed, 2 on a usage error, and
130 when interrupted by SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from .report import format_report
from .run import ChaosRun, install_signal_handlers
from .settings import FULL, QUICK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Run queuectl under injected faults and check that no job is lost.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the short form: {QUICK.jobs} jobs, {QUICK.faults_per_kind} fault of each kind",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the workload and fault plan (default: random)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help=f"number of jobs (default: {FULL.jobs}, or {QUICK.jobs} with --quick)",
    )
    parser.add_argument(
        "--faults-per-kind",
        type=int,
        help=f"faults of each kind (default: {FULL.faults_per_kind}, "
        f"or {QUICK.faults_per_kind} with --quick)",
    )
    parser.add_argument("--report", type=Path, metavar="FILE", help="also write the report as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run folder (logs, runs file, AOF) afterwards"
    )
    parser.add_argument(
        "--keep-orphans",
        action="store_true",
        help="leave the job processes of a SIGKILLed worker running, as happens without "
        "systemd (default: kill them, as systemd does for the unit)",
    )
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else FULL
    if args.jobs is not None:
        if args.jobs < 10:
            parser.error(f"--jobs must be at least 10, not {args.jobs}")
        settings = dataclasses.replace(settings, jobs=args.jobs)
    if args.faults_per_kind is not None:
        if args.faults_per_kind < 0:
            parser.error(f"--faults-per-kind must be 0 or more, not {args.faults_per_kind}")
        settings = dataclasses.replace(settings, faults_per_kind=args.faults_per_kind)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)

    install_signal_handlers()
    run = ChaosRun(settings, seed, keep=args.keep, kill_orphans=not args.keep_orphans)
    try:
        report = run.execute()
    except KeyboardInterrupt:
        # ``execute`` has stopped every process it started before this point.
        print("chaos run interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    print(format_report(report), flush=True)
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
