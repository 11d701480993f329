"""Job commands: enqueue, status, list, show, cancel, retry and dlq."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

from ..allowlist import rejection
from ..config import Config
from ..errors import ConflictError, ExitCode, JobSpecError, NotFoundError, UsageError
from ..jobs import Spec, parse_json_spec, validate
from ..keys import JOB_STATES
from ..store import Store
from .output import ago, describe_exit, format_ms, print_json, print_table, short_command

MAX_LIMIT = 10000
# Option name -> spec field, for options that fill in spec fields.
FIELD_OPTIONS = {
    "id": "id",
    "queue": "queue",
    "priority": "priority",
    "max_retries": "max_retries",
    "timeout": "timeout",
    "run_at": "run_at",
    "delay": "delay",
    "cwd": "cwd",
}


def _add_enqueue_parser(commands: Any) -> None:
    enqueue = commands.add_parser(
        "enqueue",
        help="add jobs",
        description="Add a job from a JSON spec, a JSON-lines file, or an argv after --.",
        epilog='examples: queuectl enqueue \'{"command": ["gzip", "-k", "/srv/app.log"]}\'\n'
        "          queuectl enqueue --queue mail -- /usr/bin/send-report --daily",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enqueue.add_argument("spec", nargs="?", help="the job spec as a JSON object")
    enqueue.add_argument(
        "--file", metavar="FILE", help="JSON lines, one spec per line ('-' reads stdin)"
    )
    enqueue.add_argument("--id", help="job id (default: generated)")
    enqueue.add_argument("--queue", help="queue name (default: default)")
    enqueue.add_argument("--priority", type=int, help="higher runs first (default: 0)")
    enqueue.add_argument("--max-retries", type=int, help="retries after the first attempt")
    enqueue.add_argument("--timeout", type=float, help="seconds a run may take")
    enqueue.add_argument("--run-at", metavar="TIME", help="RFC 3339 time to run at")
    enqueue.add_argument(
        "--delay", type=float, metavar="SECONDS", help="run this many seconds from now"
    )
    enqueue.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment variable (repeatable)",
    )
    enqueue.add_argument("--cwd", help="working directory")
    enqueue.add_argument(
        "--if-absent", action="store_true", help="if the id is in use, keep that job and succeed"
    )
    enqueue.add_argument("--json", action="store_true", help="print the result as JSON")
    enqueue.set_defaults(handler=enqueue_command, wants_argv=True)


def _add_status_parser(commands: Any) -> None:
    status = commands.add_parser("status", help="count jobs by state and queue")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=status_command)


def _add_list_parser(commands: Any) -> None:
    listing = commands.add_parser("list", help="list jobs")
    listing.add_argument("--state", help=f"one of: {', '.join(JOB_STATES)}")
    listing.add_argument("--queue", help="only jobs of this queue")
    listing.add_argument(
        "--limit", type=int, default=50, help="maximum number of jobs to list (default: 50)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=list_command)


def _add_show_parser(commands: Any) -> None:
    show = commands.add_parser("show", help="show one job, its history and output")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=show_command)


def _add_cancel_parser(commands: Any) -> None:
    cancel = commands.add_parser("cancel", help="cancel a waiting or running job")
    cancel.add_argument("id")
    cancel.set_defaults(handler=cancel_command)


def _add_retry_parser(commands: Any) -> None:
    retry = commands.add_parser("retry", help="run a failed, dead or cancelled job again now")
    retry.add_argument("id")
    retry.set_defaults(handler=retry_command)


def _add_dlq_parser(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", metavar="COMMAND", required=True)
    dlq_list = dlq_commands.add_parser("list", help="list dead jobs")
    dlq_list.add_argument(
        "--limit", type=int, default=50, help="maximum number of jobs to list (default: 50)"
    )
    dlq_list.add_argument("--json", action="store_true", help="print JSON")
    dlq_list.set_defaults(handler=dlq_list_command)
    dlq_retry = dlq_commands.add_parser("retry", help="send dead jobs back to their queues")
    dlq_retry.add_argument("id", nargs="?")
    dlq_retry.add_argument("--all", action="store_true", help="retry every dead job")
    dlq_retry.set_defaults(handler=dlq_retry_command)
    dlq_purge = dlq_commands.add_parser("purge", help="delete every dead job")
    dlq_purge.set_defaults(handler=dlq_purge_command)


# Command name -> the function that adds its parser, as COMMANDS in main.py expects.
PARSERS: dict[str, Callable[[Any], None]] = {
    "enqueue": _add_enqueue_parser,
    "status": _add_status_parser,
    "list": _add_list_parser,
    "show": _add_show_parser,
    "cancel": _add_cancel_parser,
    "retry": _add_retry_parser,
    "dlq": _add_dlq_parser,
}


# --- enqueue -----------------------------------------------------------------


def enqueue_command(args: argparse.Namespace, config: Config) -> int:
    sources = [args.spec is not None, args.file is not None, args.argv is not None]
    if sum(sources) != 1:
        raise UsageError("give exactly one of: a JSON spec, --file FILE, or -- COMMAND ARGS...")
    overrides = _overrides(args)
    if args.file is not None:
        if "id" in overrides:
            raise UsageError("--id cannot be used with --file; put an id on each line instead")
        specs = list(_file_specs(args.file, overrides, config))
    else:
        raw = parse_json_spec(args.spec) if args.spec is not None else {"command": args.argv}
        raw.update(overrides)
        specs = [validate(raw, config.jobs)]
    _check_allowed(specs, config)

    store = Store(config)
    result = store.enqueue(specs, if_absent=args.if_absent)
    existing = set(result.existing)
    if args.json:
        print_json([{"id": spec.id, "created": spec.id not in existing} for spec in specs])
        return 0
    sys.stdout.write("".join(f"{spec.id}\n" for spec in specs))
    for job_id in result.existing:
        print(f"job {job_id} already exists; kept it unchanged", file=sys.stderr)
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option, field in FIELD_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            values[field] = value
    if args.env:
        env: dict[str, str] = {}
        for item in args.env:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise UsageError(f"--env {item!r} must have the form NAME=VALUE")
            env[name] = value
        values["env"] = env
    return values


def _file_specs(path: str, overrides: dict[str, Any], config: Config) -> Iterator[Spec]:
    seen: dict[str, int] = {}
    with _open_input(path) as stream:
        for number, data in enumerate(stream, start=1):
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise JobSpecError(
                    "json",
                    f"byte {error.start + 1} is not valid UTF-8; save the file as UTF-8",
                    line=number,
                ) from None
            if not line.strip():
                continue
            raw = parse_json_spec(line, line=number)
            raw.update(overrides)
            spec = validate(raw, config.jobs, line=number)
            if spec.id in seen:
                raise JobSpecError(
                    "id",
                    f"{spec.id!r} is also on line {seen[spec.id]}; ids must be unique",
                    line=number,
                )
            seen[spec.id] = number
            yield spec
    if not seen:
        raise UsageError(f"{path}: no job specs found; put one JSON object per line")


def _open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"--file {path}: no such file") from None
    except OSError as error:
        raise UsageError(f"--file {path}: cannot read: {error.strerror}") from None


def _check_allowed(specs: Sequence[Spec], config: Config) -> None:
    patterns = config.security.allowed_commands
    if not patterns:
        return
    for spec in specs:
        env_path = spec.env.get("PATH", config.jobs.path)
        refused = rejection(spec.command[0], patterns, env_path, spec.cwd or config.jobs.cwd)
        if refused:
            raise JobSpecError("command", refused)


# --- reading -----------------------------------------------------------------


def status_command(args: argparse.Namespace, config: Config) -> int:
    store = Store(config)
    counts = store.counts()
    workers = store.workers()
    now_ms = store.now_ms()
    alive = [
        w for w in workers if now_ms - w["last_beat_ms"] <= config.worker.lease_timeout_s * 1000
    ]
    if args.json:
        print_json({**counts, "workers": len(alive)})
        return 0
    print_table(["STATE", "JOBS"], list(counts["states"].items()))
    if counts["pending_by_queue"]:
        print()
        print_table(["QUEUE", "PENDING"], list(counts["pending_by_queue"].items()))
    print()
    print(f"workers alive: {len(alive)}")
    return 0


def _checked_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be from 1 to {MAX_LIMIT}, not {limit}")
    return limit


def list_command(args: argparse.Namespace, config: Config) -> int:
    limit = _checked_limit(args.limit)
    if args.state is not None and args.state not in JOB_STATES:
        raise UsageError(
            f"--state {args.state!r} is not a state; use one of: {', '.join(JOB_STATES)}"
        )
    store = Store(config)
    if args.queue is not None and args.queue not in store.queue_names():
        raise NotFoundError(
            f"--queue {args.queue!r}: no such queue; known queues: "
            f"{', '.join(store.queue_names()) or 'none yet'}"
        )
    records = store.list_jobs(args.state, args.queue, limit)
    _print_records(records, args.json)
    return 0


def _print_records(records: Sequence[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(records)
        return
    rows = [
        [
            r.get("id"),
            r.get("state"),
            r.get("queue"),
            r.get("priority", "-"),
            r.get("attempts", "-"),
            short_command(r.get("command"))
            if r.get("state") != "dead"
            else (r.get("error") or "-"),
        ]
        for r in records
    ]
    print_table(["ID", "STATE", "QUEUE", "PRI", "ATTEMPTS", "COMMAND / ERROR"], rows)


def show_command(args: argparse.Namespace, config: Config) -> int:
    store = Store(config)
    record = store.get_job(args.id)
    output = store.get_output(args.id)
    if args.json:
        print_json({**record, "output": output})
        return 0
    fields = [
        ("id", record.get("id")),
        ("state", record.get("state")),
        ("queue", record.get("queue")),
        ("priority", record.get("priority")),
        ("command", short_command(record.get("command"), 200)),
        ("attempts", f"{record.get('attempts')} (retries allowed: {record.get('max_retries')})"),
        ("timeout", f"{record.get('timeout')} s"),
        ("created", format_ms(record.get("created_ms"))),
        ("run at", format_ms(record.get("run_at_ms"))),
        ("started", format_ms(record.get("started_ms"))),
        ("finished", format_ms(record.get("finished_ms"))),
        ("next run", format_ms(record.get("next_run_ms"))),
        ("worker", record.get("worker") or "-"),
        ("exit", describe_exit(record)),
        ("duration", f"{record['duration_ms'] / 1000:.3f} s" if "duration_ms" in record else "-"),
        ("error", record.get("error") or "-"),
    ]
    for name, value in fields:
        print(f"{name + ':':10} {value}")
    history = record.get("history") or []
    if history:
        print("\nhistory:")
        for entry in history:
            exit_text = describe_exit(entry)
            details = [
                text for text in (exit_text if exit_text != "-" else "", entry.get("error")) if text
            ]
            print(
                f"  attempt {entry.get('attempt')}: {entry.get('outcome')} "
                f"on {entry.get('worker')} at {format_ms(entry.get('finished_ms'))}"
                f"{': ' + ', '.join(details) if details else ''}"
            )
    for stream in ("stdout", "stderr"):
        text = output.get(stream)
        if text:
            print(f"\n{stream} (last {len(text.encode())} bytes):")
            print(text, end="" if text.endswith("\n") else "\n")
    return 0


# --- changing jobs -----------------------------------------------------------


def cancel_command(args: argparse.Namespace, config: Config) -> int:
    result = Store(config).cancel(args.id)
    if result == "requested":
        print(
            f"job {args.id} is running; its worker stops it within "
            f"{config.worker.heartbeat_interval_s:g} s"
        )
    else:
        print(f"job {args.id} cancelled")
    return 0


def retry_command(args: argparse.Namespace, config: Config) -> int:
    Store(config).retry(args.id, ("failed", "dead", "cancelled"))
    print(f"job {args.id} is pending again")
    return 0


def dlq_list_command(args: argparse.Namespace, config: Config) -> int:
    records = Store(config).list_jobs("dead", None, _checked_limit(args.limit))
    if args.json:
        print_json(records)
        return 0
    rows = [
        [
            r.get("id"),
            r.get("queue"),
            r.get("attempts", "-"),
            ago(r.get("finished_ms")),
            r.get("error") or "-",
        ]
        for r in records
    ]
    print_table(["ID", "QUEUE", "ATTEMPTS", "DIED", "ERROR"], rows)
    return 0


def dlq_retry_command(args: argparse.Namespace, config: Config) -> int:
    if (args.id is None) == (not args.all):
        raise UsageError("give a job id or --all, not both")
    store = Store(config)
    if args.id is not None:
        store.retry(args.id, ("dead",))
        print(f"job {args.id} is pending again")
        return 0
    count = 0
    kept: list[str] = []
    while True:
        # Jobs that cannot be retried stay dead, so each page reaches past them.
        page = store.list_jobs("dead", None, 500 + len(kept))
        batch = [str(record["id"]) for record in page if record["id"] not in kept]
        if not batch:
            break
        for job_id in batch:
            try:
                store.retry(job_id, ("dead",))
                count += 1
            except ConflictError as error:
                print(f"queuectl: {error}", file=sys.stderr)
                kept.append(job_id)
    print(f"{count} dead jobs are pending again")
    if kept:
        print(f"queuectl: {len(kept)} dead jobs could not be retried", file=sys.stderr)
        return int(ExitCode.CONFLICT)
    return 0


def dlq_purge_command(args: argparse.Namespace, config: Config) -> int:
    store = Store(config)
    removed = 0
    while True:
        count = store.remove_finished("dead", 0, 1000)
        removed += count
        if count < 1000:
            break
    print(f"deleted {removed} dead jobs")
    return 0
