"""Worker commands: start and stop workers, list live ones.

Under a booted systemd that has the ``queuectl-worker@.service`` unit,
``start`` and ``stop`` drive the unit instances.  Elsewhere (a container, a
laptop) ``start`` runs detached workers with python-daemon, each with a
pidfile and a log file in ``worker.run_dir``, and ``stop`` signals them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config, check_not_root
from ..errors import ConflictError, QueueError, UsageError
from .output import ago, print_json, print_table

UNIT_TEMPLATE = "queuectl-worker@.service"
MAX_COUNT = 256


class SystemctlError(QueueError):
    """systemctl failed; its own message is passed on."""


def _add_worker_parser(commands: Any) -> None:
    worker = commands.add_parser("worker", help="start, stop and list workers")
    worker_commands = worker.add_subparsers(dest="worker_command", metavar="COMMAND", required=True)
    start = worker_commands.add_parser("start", help="start N workers")
    start.add_argument("--count", type=int, default=1, help="number of workers (default: 1)")
    start.set_defaults(handler=start_command)
    stop = worker_commands.add_parser("stop", help="stop workers gracefully")
    stop.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="wait this long for them to exit (default: worker.stop_timeout + 10)",
    )
    stop.set_defaults(handler=stop_command)
    listing = worker_commands.add_parser("list", help="list live workers from their heartbeats")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=list_command)


# Command name -> the function that adds its parser, as COMMANDS in main.py expects.
PARSERS: dict[str, Callable[[Any], None]] = {"worker": _add_worker_parser}


def systemd_manages_workers() -> bool:
    """Return True under a booted systemd with the worker unit installed."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return False
    probe = subprocess.run(["systemctl", "cat", UNIT_TEMPLATE], capture_output=True, check=False)
    return probe.returncode == 0


def _systemctl(*arguments: str) -> None:
    result = subprocess.run(["systemctl", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemctlError(f"systemctl {' '.join(arguments)} failed: {result.stderr.strip()}")


def start_command(args: argparse.Namespace, config: Config) -> int:
    if not 1 <= args.count <= MAX_COUNT:
        raise UsageError(f"--count must be from 1 to {MAX_COUNT}, not {args.count}")
    instances = [str(n) for n in range(1, args.count + 1)]
    if systemd_manages_workers():
        _systemctl("start", *[f"queuectl-worker@{n}.service" for n in instances])
        print(f"started queuectl-worker@{{{','.join(instances)}}}.service")
        return 0

    check_not_root(config.worker, os.geteuid())
    run_dir = _run_dir(config)
    for instance in instances:
        pid = _read_pid(_pidfile(run_dir, instance))
        if pid is not None and _alive(pid):
            print(f"worker {instance} already runs as pid {pid}")
            continue
        pid = _start_detached(instance, config, run_dir)
        print(f"started worker {instance}, pid {pid}, log {_logfile(run_dir, instance)}")
    return 0


def stop_command(args: argparse.Namespace, config: Config) -> int:
    timeout_s = args.timeout if args.timeout is not None else config.worker.stop_timeout_s + 10
    if systemd_manages_workers():
        _systemctl("stop", "queuectl-worker@*.service")
        print("stopped queuectl-worker@*.service")
        return 0

    run_dir = Path(config.worker.run_dir)
    running: dict[str, int] = {}
    for pidfile in sorted(run_dir.glob("worker-*.pid")) if run_dir.is_dir() else []:
        pid = _read_pid(pidfile)
        instance = pidfile.stem.removeprefix("worker-")
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            running[instance] = pid
        else:
            pidfile.unlink(missing_ok=True)
    if not running:
        print("no detached workers are running")
        return 0

    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline:
        for instance, pid in list(running.items()):
            if not _alive(pid):
                print(f"worker {instance} (pid {pid}) stopped")
                del running[instance]
        time.sleep(0.05)
    if running:
        names = ", ".join(f"{i} (pid {p})" for i, p in running.items())
        raise ConflictError(
            f"workers still running after {timeout_s:g} s: {names}; "
            "run `queuectl worker stop` again to stop them at once"
        )
    return 0


def list_command(args: argparse.Namespace, config: Config) -> int:
    # Imported here because starting and stopping workers needs no Redis client.
    from ..store import Store

    store = Store(config)
    workers = store.workers()
    now_ms = store.now_ms()
    lease_ms = config.worker.lease_timeout_s * 1000
    for entry in workers:
        entry["alive"] = now_ms - entry["last_beat_ms"] <= lease_ms
    if args.json:
        print_json(workers)
        return 0
    rows = [
        [
            w["name"],
            w.get("host", "-"),
            w.get("pid", "-"),
            w.get("job") or "-",
            ago(w["last_beat_ms"], now_ms) + ("" if w["alive"] else " (silent)"),
        ]
        for w in workers
    ]
    print_table(["NAME", "HOST", "PID", "JOB", "LAST BEAT"], rows)
    return 0


# --- detached workers --------------------------------------------------------


def _run_dir(config: Config) -> Path:
    run_dir = Path(config.worker.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"worker.run_dir {run_dir}: cannot create it: {error.strerror}; "
            "set worker.run_dir to a writable folder"
        ) from None
    return run_dir


def _pidfile(run_dir: Path, instance: str) -> Path:
    return run_dir / f"worker-{instance}.pid"


def _logfile(run_dir: Path, instance: str) -> Path:
    return run_dir / f"worker-{instance}.log"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; it only waits for its parent.
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _start_detached(instance: str, config: Config, run_dir: Path) -> int:
    """Fork a detached worker through python-daemon; return its pid."""
    pidfile = _pidfile(run_dir, instance)
    pidfile.unlink(missing_ok=True)
    child = os.fork()
    if child == 0:
        _daemon_main(instance, config, run_dir)
    os.waitpid(child, 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = _read_pid(pidfile)
        if pid is not None:
            return pid
        time.sleep(0.02)
    raise ConflictError(f"worker {instance} did not start; see {_logfile(run_dir, instance)}")


def _daemon_main(instance: str, config: Config, run_dir: Path) -> None:
    """Become a detached worker; never returns."""
    code = 1
    try:
        import daemon
        from daemon.pidfile import TimeoutPIDLockFile

        from .. import worker

        log_file = open(_logfile(run_dir, instance), "a", buffering=1)  # noqa: SIM115
        context = daemon.DaemonContext(
            pidfile=TimeoutPIDLockFile(str(_pidfile(run_dir, instance)), 5),
            stdout=log_file,
            stderr=log_file,
            umask=0o027,
            signal_map={},
            working_directory="/",
        )
        with context:
            try:
                worker.main(
                    ["--instance", instance, "--config", str(config.path)]
                    if config.path.exists()
                    else ["--instance", instance]
                )
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
    except BaseException as error:
        with contextlib.suppress(Exception):
            print(f"queuectl: worker {instance} failed to start: {error}", file=sys.stderr)
    finally:
        os._exit(code)
