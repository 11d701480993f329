"""``queuectl``: the admin CLI.  It talks to Redis and never runs jobs.

Exit codes: 0 success, 1 internal error, 2 usage error or invalid job spec,
3 not found, 4 conflict, 5 Redis unreachable, 6 invalid config, 7 Redis
returned an error, 8 a `queuectl doctor` check failed
(warnings alone exit 0).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Iterator, Sequence

from .. import __version__, logs
from ..config import load
from ..errors import ExitCode, QueueError

# Each command, in the order of `queuectl --help`, and the module of
# queuectld.cli that defines it in its PARSERS table.  A run imports only the
# module of the command it runs and builds only that command's parser, since
# the other modules' imports and parsers cost start-up time.
COMMANDS = {
    "enqueue": "jobs",
    "status": "jobs",
    "list": "jobs",
    "show": "jobs",
    "cancel": "jobs",
    "retry": "jobs",
    "dlq": "jobs",
    "worker": "workers",
    "config": "config_cmd",
    "doctor": "doctor",
}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors name the fix and exit with USAGE."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"queuectl: error: {message}; see `{self.prog} --help`\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser of every command, or only of ``command`` if it names one."""
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
    names = [command] if command in COMMANDS else list(COMMANDS)
    for name in names:
        module = importlib.import_module(f".{COMMANDS[name]}", __package__)
        module.PARSERS[name](commands)
    return parser


def requested_command(options: Sequence[str]) -> str | None:
    """Return the first argument that is neither an option nor the value of ``--config``.

    argparse also accepts a prefix of ``--config`` such as ``--conf``, so any
    prefix of it takes the next argument as its value here too.
    """
    arguments: Iterator[str] = iter(options)
    for argument in arguments:
        if len(argument) > 2 and "--config".startswith(argument):
            next(arguments, None)
        elif not argument.startswith("-"):
            return argument
    return None


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
    # Building the parser imports the command's module and, with it,
    # redis-py, which creates tens of thousands of objects that live until the
    # process exits.  The garbage collector is off while they are created and
    # then ignores them (gc.freeze), so neither the collections during the
    # imports nor the final collection at interpreter exit traverse them.
    gc.disable()
    try:
        parser = build_parser(requested_command(options))
    finally:
        gc.freeze()
        gc.enable()
    args = parser.parse_args(options)
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
