"""``queuectl doctor``: checks that Redis and the config suit queuectl."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..config import Config
from ..connection import display_url, translated
from ..errors import ExitCode, QueueError, RedisCommandError
from ..store import Store
from .output import print_json

MIN_REDIS = (6, 2)
# Clock skew above this between host and Redis is reported.
SKEW_WARN_S = 1.0


@dataclass
class Check:
    level: str  # ok, warning or failed
    name: str
    detail: str


def _add_doctor_parser(commands: Any) -> None:
    doctor = commands.add_parser("doctor", help="check Redis, persistence, clocks and the config")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(handler=doctor_command)


# Command name -> the function that adds its parser, as COMMANDS in main.py expects.
PARSERS: dict[str, Callable[[Any], None]] = {"doctor": _add_doctor_parser}


def run_checks(config: Config) -> list[Check]:
    checks = [Check("ok", "config", f"{config.path} and its drop-ins are valid")]
    try:
        store = Store(config)
        store.ping()
    except QueueError as error:
        checks.append(Check("failed", "redis", str(error)))
        return checks
    with_info = store.client
    server = with_info.info("server")
    memory = with_info.info("memory")
    persistence = with_info.info("persistence")
    checks.append(_version(server))
    checks.append(_eviction(memory))
    checks.append(_persistence(persistence, _save_rules(store)))
    checks.append(_clock(store))
    return checks


def _version(server: dict[str, Any]) -> Check:
    text = str(server.get("redis_version", "0"))
    parts = tuple(int(p) for p in text.split(".")[:2] if p.isdigit())
    if parts < MIN_REDIS:
        return Check("failed", "redis version", f"{text}; queuectl needs 6.2 or newer")
    return Check("ok", "redis version", text)


def _eviction(memory: dict[str, Any]) -> Check:
    policy = str(memory.get("maxmemory_policy", "unknown"))
    if policy != "noeviction":
        return Check(
            "warning",
            "maxmemory-policy",
            f"{policy}: Redis may evict job records when memory is full; "
            "set maxmemory-policy noeviction",
        )
    return Check("ok", "maxmemory-policy", policy)


def _save_rules(store: Store) -> str | None:
    """Return the server's ``save`` setting, or None where CONFIG GET is not allowed."""
    try:
        with translated(store.config.redis.url):
            reply = store.client.config_get("save")
    except RedisCommandError:
        return None
    return str(reply.get("save", ""))


def _persistence(persistence: dict[str, Any], save_rules: str | None) -> Check:
    if int(persistence.get("aof_enabled", 0)):
        return Check("ok", "persistence", "append-only file enabled")
    # INFO shows a last-save time even when snapshots are off, so only an
    # empty `save` setting proves that nothing is ever written to disk.
    if save_rules != "":
        return Check(
            "warning",
            "persistence",
            "RDB snapshots only: jobs enqueued since the last snapshot are lost if Redis "
            "crashes; set appendonly yes",
        )
    return Check("warning", "persistence", "no persistence: a Redis restart loses every job")


def _clock(store: Store) -> Check:
    before = time.time()
    redis_ms = store.now_ms()
    after = time.time()
    skew_s = redis_ms / 1000 - (before + after) / 2
    detail = f"host clock is {abs(skew_s):.3f} s {'behind' if skew_s > 0 else 'ahead of'} Redis"
    if abs(skew_s) > SKEW_WARN_S:
        return Check(
            "warning", "clock skew", detail + "; queuectl uses Redis time, but logs will disagree"
        )
    return Check("ok", "clock skew", detail)


def doctor_command(args: argparse.Namespace, config: Config) -> int:
    checks = run_checks(config)
    if args.json:
        print_json({"redis": display_url(config.redis.url), "checks": [asdict(c) for c in checks]})
    else:
        print(f"redis: {display_url(config.redis.url)}")
        for check in checks:
            print(f"{check.level:8} {check.name}: {check.detail}")
    failed = any(check.level == "failed" for check in checks)
    return int(ExitCode.CHECK_FAILED) if failed else 0
