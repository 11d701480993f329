"""Profiles of the CLI's wall time and of a worker's memory.

- Import times come from ``python -X importtime``.  Each module's own time
  is charged to the package that brought it in (see ``import_times``).
- ``cProfile`` runs each timed CLI command in-process against a Redis
  holding ``stored`` pending jobs, and ``queuectl enqueue --file`` on
  ``bulk_jobs`` lines into an empty Redis.  Redis's ``INFO commandstats``
  shows the server's side of the bulk enqueue.
- Worker memory is the resident set of a fresh interpreter after each import
  and set-up step that a worker goes through, read from /proc/self/status.
"""

from __future__ import annotations

import json
import pstats
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .admin import JOB_LINE, fill_pending
from .context import Context
from .procs import BenchError, RedisServer

TOP_FUNCTIONS = 18
MEMORY_STEPS = """
import json, sys

def rss_kib():
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

steps = [("interpreter started", rss_kib())]
import asyncio
steps.append(("import asyncio (redis-py imports it)", rss_kib()))
import hiredis
steps.append(("import hiredis", rss_kib()))
import redis
steps.append(("import redis", rss_kib()))
import queuectld.worker
steps.append(("import queuectld.worker (and all it imports)", rss_kib()))
from queuectld.config import load
from queuectld.store import Store
store = Store(load(sys.argv[1]), block_s=1.0)
store.ping()
steps.append(("config loaded, connected, scripts registered", rss_kib()))
print(json.dumps(steps))
"""


@dataclass
class CliProfile:
    """Profiles of the CLI commands and of a worker's memory."""

    stored: int
    bulk_jobs: int
    import_ms: list[tuple[str, float]] = field(default_factory=list)
    import_total_ms: float = 0.0
    commands: dict[str, CommandProfile] = field(default_factory=dict)
    bulk_redis: dict[str, tuple[float, float]] = field(default_factory=dict)
    memory_kib: list[tuple[str, int]] = field(default_factory=list)


def measure_cli_profile(ctx: Context, stored: int, bulk_jobs: int) -> CliProfile:
    result = CliProfile(stored, bulk_jobs)
    server = ctx.redis("cli-profile")
    try:
        config_path = ctx.queuectl_config(server, "cli-profile")
        env = ctx.queuectl_env(config_path)
        result.import_ms, result.import_total_ms = import_times(env)
        result.memory_kib = memory_steps(config_path, env)

        fill_pending(config_path, stored)
        for name, arguments in (
            ("queuectl enqueue -- true", ["enqueue", "--", "true"]),
            ("queuectl status", ["status"]),
            ("queuectl list --state pending --limit 50", ["list", "--state", "pending"]),
        ):
            result.commands[name] = cprofile_command(ctx, arguments, env, name)

        server.client().flushall()
        batch = ctx.folder / "profile-bulk.jsonl"
        batch.write_text(JOB_LINE * bulk_jobs)
        before = server.client().info("commandstats")
        name = f"queuectl enqueue --file ({bulk_jobs:,} lines)"
        result.commands[name] = cprofile_command(ctx, ["enqueue", "--file", str(batch)], env, name)
        result.bulk_redis = _command_costs(server, before, bulk_jobs)
        return result
    finally:
        ctx.processes.stop(server.process)


def import_times(env: dict[str, str]) -> tuple[list[tuple[str, float]], float]:
    """Return the import time of what ``queuectl enqueue`` loads, in ms, by who brought it in.

    That is ``queuectld.cli.main`` and the module of the enqueue command,
    which imports redis-py and the library.

    Each module's own import time is charged to the outermost package on its
    import chain that is not queuectld: asyncio, imported by redis, counts as
    redis.  queuectld's own modules count as queuectld.
    """
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import queuectld.cli.main, queuectld.cli.jobs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise BenchError(f"importing the CLI failed: {result.stderr[-2000:]}")
    entries: list[tuple[int, str, float]] = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        own_us, _, name = line.removeprefix("import time:").split("|")
        depth = len(name) - len(name.lstrip())
        entries.append((depth, name.strip(), int(own_us) / 1000))

    # -X importtime prints a module after the modules it imported, so reading
    # backwards meets each parent before its children.
    charged: dict[str, float] = {}
    chain: list[tuple[int, str]] = []
    for depth, name, own_ms in reversed(entries):
        while chain and chain[-1][0] >= depth:
            chain.pop()
        chain.append((depth, name))
        if chain[0][1] not in ("queuectld.cli.main", "queuectld.cli.jobs"):
            continue
        outside = [module for _, module in chain if not module.startswith("queuectld")]
        owner = outside[0].split(".")[0] if outside else "queuectld"
        charged[owner] = charged.get(owner, 0.0) + own_ms
    total = sum(charged.values())
    return sorted(charged.items(), key=lambda item: -item[1])[:12], total


def memory_steps(config_path: Path, env: dict[str, str]) -> list[tuple[str, int]]:
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_STEPS, str(config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise BenchError(f"the memory steps failed: {result.stderr[-2000:]}")
    return [(name, int(kib)) for name, kib in json.loads(result.stdout)]


@dataclass
class CommandProfile:
    """A cProfile run of one CLI command; times in ms, inflated by the profiler."""

    wall_ms: float
    imports_ms: float
    # (function, cumulative ms, own ms, calls) of what main() calls, heaviest first.
    functions: list[tuple[str, float, float, int]]


def cprofile_command(
    ctx: Context, arguments: list[str], env: dict[str, str], name: str
) -> CommandProfile:
    """Run ``queuectl ARGUMENTS`` under cProfile and collect its heaviest functions."""
    output = ctx.folder / f"cprofile-{len(list(ctx.folder.glob('cprofile-*')))}.out"
    script = ctx.folder / "queuectl_cli.py"
    script.write_text("from queuectld.cli.main import main\n\nmain()\n")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(output), str(script), *arguments],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    wall_ms = (time.monotonic() - started) * 1000
    if result.returncode != 0:
        raise BenchError(f"{name} under cProfile failed: {result.stderr[-2000:]}")

    stats = pstats.Stats(str(output))
    entries = stats.stats  # type: ignore[attr-defined]
    profile = CommandProfile(wall_ms, 0.0, [])
    for (path, _, function), values in entries.items():
        # cProfile counts a recursive function's cumulative time once, at its
        # outermost call, so this is the time of every import, lazy ones too.
        if function == "_find_and_load" and path.startswith("<frozen importlib"):
            profile.imports_ms = values[3] * 1000
    for key in _called_by_main(entries):
        path, line, function = key
        calls, _, own_s, cumulative_s, _ = entries[key]
        where = f"{function} ({_short_path(path)}:{line})"
        profile.functions.append((where, cumulative_s * 1000, own_s * 1000, calls))
    profile.functions.sort(key=lambda row: -row[1])
    del profile.functions[TOP_FUNCTIONS:]
    return profile


def _called_by_main(entries: dict[Any, Any]) -> set[Any]:
    """Return the functions that ``queuectld.cli.main.main`` calls, directly or not.

    The walk does not enter imports, which the import times cover: what only
    a module body or the import machinery calls is left out.
    """
    callees: dict[Any, set[Any]] = {}
    for function, values in entries.items():
        for caller in values[4]:
            callees.setdefault(caller, set()).add(function)
    roots = [key for key in entries if key[2] == "main" and key[0].endswith("cli/main.py")]
    reached: set[Any] = set()
    pending = list(roots)
    while pending:
        function = pending.pop()
        if function in reached or _is_import(function):
            continue
        reached.add(function)
        pending.extend(callees.get(function, ()))
    return reached


def _is_import(function: Any) -> bool:
    path, _, name = function
    return (
        path.startswith("<frozen importlib")
        or name in ("<module>", "<built-in method builtins.exec>")
        or name == "<built-in method builtins.__import__>"
    )


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _command_costs(
    server: RedisServer, before: dict[str, dict[str, float]], jobs: int
) -> dict[str, tuple[float, float]]:
    costs = {}
    for name, stats in server.client().info("commandstats").items():
        calls = stats["calls"] - before.get(name, {}).get("calls", 0)
        usec = stats["usec"] - before.get(name, {}).get("usec", 0)
        if calls > 0:
            costs[name.removeprefix("cmdstat_")] = (calls, usec / jobs)
    return dict(sorted(costs.items(), key=lambda item: -item[1][1]))


def render(profile: CliProfile) -> str:
    lines = [
        f"Imports of queuectld.cli.main and queuectld.cli.jobs: {profile.import_total_ms:.0f} ms "
        "in all (python -X importtime), by the package that brought each module in"
    ]
    lines += [f"  {name:45} {ms:8.1f} ms" for name, ms in profile.import_ms]
    for command, run in profile.commands.items():
        stored = "into an empty Redis" if "--file" in command else f"{profile.stored:,} pending"
        lines.append("")
        lines.append(
            f"cProfile of `{command}`, {stored}: {run.wall_ms:.0f} ms wall under the profiler, "
            f"of which imports {run.imports_ms:.0f} ms; below, what main() calls, imports left out"
        )
        lines.append(f"  {'function':70} {'cumul ms':>9} {'own ms':>8} {'calls':>8}")
        lines += [
            f"  {function[:70]:70} {cumulative:9.1f} {own:8.1f} {calls:8d}"
            for function, cumulative, own, calls in run.functions
        ]
    if profile.bulk_redis:
        lines.append("")
        lines.append(f"Redis side of `queuectl enqueue --file` ({profile.bulk_jobs:,} lines):")
        lines.append(f"  {'command':12} {'calls':>9} {'us/job':>8}")
        for command, (calls, usec_per_job) in profile.bulk_redis.items():
            lines.append(f"  {command:12} {calls:9.0f} {usec_per_job:8.2f}")
    if profile.memory_kib:
        lines.append("")
        lines.append("Resident memory of a fresh interpreter after each step a worker takes:")
        previous = 0
        for step, kib in profile.memory_kib:
            lines.append(f"  {step:50} {kib / 1024:6.1f} MiB  (+{(kib - previous) / 1024:.1f})")
            previous = kib
    return "\n".join(lines) + "\n"
