"""``queuectl``: the admin CLI.  It talks to Redis and never runs jobs.

Exit codes: 0 success, 1 internal error, 2 usage error or invalid job spec,
3 not found, 4 conflict, 5 Redis unreachable, 6 invalid config, 7 Redis
returned an error, 8 a `queuectl doctor` check failed
(warnings alone exit 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__, logs
from ..config import load
from ..errors import ExitCode, QueueError
from . import config_cmd, doctor, jobs, workers


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors name the fix and exit with USAGE."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"queuectl: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="queuectl",
        description="Admin CLI of the queuectl job queue.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help="config file (default: $QUEUECTL_CONFIG or /etc/queuectl/queuectl.toml)"
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )
    jobs.add_parsers(commands)
    workers.add_parsers(commands)
    config_cmd.add_parsers(commands)
    doctor.add_parsers(commands)
    return parser


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """Split ``enqueue ... -- COMMAND ARGS`` into options and the job's argv."""
    args = list(argv)
    if "enqueue" in args and "--" in args and args.index("enqueue") < args.index("--"):
        cut = args.index("--")
        return args[:cut], args[cut + 1 :]
    return args, None


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(argv: Sequence[str]) -> int:
    options, job_argv = split_argv(argv)
    args = build_parser().parse_args(options)
    args.argv = job_argv
    logs.setup("warning", program="queuectl")
    try:
        config = load(args.config)
        return int(args.handler(args, config))
    except QueueError as error:
        print(f"queuectl: {error}", file=sys.stderr)
        return int(error.exit_code)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
