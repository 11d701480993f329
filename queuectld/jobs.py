"""Job specs: validation, generated ids and the stored record.

A spec is the JSON object a user enqueues.  Validation happens before
anything reaches Redis, and every error names the field and the fix.  The
record stored in Redis is the spec with defaults resolved (``max_retries``
and ``timeout`` from the enqueuing host's config) plus the fields the Lua
scripts maintain: ``state``, ``attempts``, ``seq``, ``lease``, times in ms,
the outcome of the latest attempt and a short ``history``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .config import JobsConfig
from .errors import JobSpecError

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SPEC_FIELDS = (
    "id",
    "command",
    "queue",
    "priority",
    "max_retries",
    "timeout",
    "run_at",
    "delay",
    "env",
    "cwd",
)
PRIORITY_RANGE = (-1000, 1000)
MAX_RETRIES = 1000
MAX_TIMEOUT_S = 366 * 86400.0
MAX_DELAY_S = 10 * 366 * 86400.0
MAX_ARGUMENTS = 4096
# The kernel's limit for one argument or environment string (MAX_ARG_STRLEN).
MAX_COMMAND_BYTES = 131072
MAX_ENV_BYTES = 131072
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """Return a fresh 26-character id that sorts by creation time (a ULID)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@dataclass(frozen=True)
class Spec:
    """A validated job spec, ready to be stored."""

    id: str
    command: tuple[str, ...]
    queue: str
    priority: int
    max_retries: int
    timeout_s: float
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    run_at_ms: int | None = None
    delay_ms: int | None = None

    def record_json(self) -> str:
        """Return the initial record; the enqueue script adds state and times."""
        record: dict[str, Any] = {
            "id": self.id,
            "command": list(self.command),
            "queue": self.queue,
            "priority": self.priority,
            "max_retries": self.max_retries,
            "timeout": self.timeout_s,
        }
        if self.env:
            record["env"] = dict(self.env)
        if self.cwd is not None:
            record["cwd"] = self.cwd
        return json.dumps(record, separators=(",", ":"))

    def due(self) -> str:
        """Return the due argument of the enqueue script."""
        if self.run_at_ms is not None:
            return f"at:{self.run_at_ms}"
        if self.delay_ms is not None:
            return f"in:{self.delay_ms}"
        return ""


def parse_json_spec(text: str, *, line: int | None = None) -> dict[str, Any]:
    """Parse one JSON object; reject duplicate keys, NaN and Infinity."""

    def reject_constant(name: str) -> Any:
        raise JobSpecError("json", f"{name} is not valid JSON; use a finite number", line=line)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise JobSpecError(key, "appears twice; give each field once", line=line)
            result[key] = value
        return result

    try:
        value = json.loads(text, parse_constant=reject_constant, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as error:
        raise JobSpecError(
            "json",
            f"malformed JSON at column {error.colno}: {error.msg}; "
            'a spec looks like {"command": ["echo", "hi"]}',
            line=line,
        ) from None
    except RecursionError:
        raise JobSpecError(
            "json", "nested too deeply to parse; a job spec is a flat object", line=line
        ) from None
    if not isinstance(value, dict):
        raise JobSpecError("json", "a job spec must be a JSON object", line=line)
    return value


def validate(raw: Mapping[str, Any], defaults: JobsConfig, *, line: int | None = None) -> Spec:
    """Check every field of a spec and resolve defaults; raise ``JobSpecError``."""
    unknown = sorted(set(raw) - set(SPEC_FIELDS))
    if unknown:
        raise JobSpecError(
            unknown[0], f"unknown field; allowed fields: {', '.join(SPEC_FIELDS)}", line=line
        )
    if "command" not in raw:
        raise JobSpecError("command", "missing; give the program and its arguments", line=line)
    if "run_at" in raw and "delay" in raw:
        raise JobSpecError("run_at", "give either run_at or delay, not both", line=line)

    def check(name: str, checker: Any, *args: Any) -> Any:
        try:
            return checker(raw[name], *args)
        except ValueError as error:
            raise JobSpecError(name, str(error), line=line) from None

    return Spec(
        id=check("id", _job_id) if "id" in raw else new_id(),
        command=check("command", _command),
        queue=check("queue", _queue_name) if "queue" in raw else "default",
        priority=check("priority", _integer, *PRIORITY_RANGE) if "priority" in raw else 0,
        max_retries=(
            check("max_retries", _integer, 0, MAX_RETRIES)
            if "max_retries" in raw
            else defaults.max_retries
        ),
        timeout_s=check("timeout", _timeout) if "timeout" in raw else defaults.timeout_s,
        env=check("env", _environment) if "env" in raw else {},
        cwd=check("cwd", _cwd) if "cwd" in raw else None,
        run_at_ms=check("run_at", _run_at) if "run_at" in raw else None,
        delay_ms=check("delay", _delay) if "delay" in raw else None,
    )


def _job_id(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_type_name(value)}")
    if not ID_PATTERN.match(value):
        raise ValueError(
            f"{_shown(value)} is not a valid id; use 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )
    return value


def _queue_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_type_name(value)}")
    if not QUEUE_PATTERN.match(value):
        raise ValueError(
            f"{_shown(value)} is not a valid queue name; use 1 to 64 characters "
            "of A-Z a-z 0-9 . _ : -"
        )
    return value


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError("contains a NUL byte, which no argument can hold")
        try:
            value = shlex.split(value)
        except ValueError as error:
            raise ValueError(
                f"cannot be split into arguments: {error}; close the quote, "
                "or give the command as a JSON list of strings"
            ) from None
    if not isinstance(value, list):
        raise ValueError(f"must be a list of strings or a string, not {_type_name(value)}")
    if not value:
        raise ValueError("is empty; give the program and its arguments")
    if len(value) > MAX_ARGUMENTS:
        raise ValueError(f"has {len(value)} arguments; at most {MAX_ARGUMENTS} are allowed")
    size = 0
    for index, argument in enumerate(value):
        if not isinstance(argument, str):
            raise ValueError(f"argument {index} must be a string, not {_type_name(argument)}")
        if "\0" in argument:
            raise ValueError(f"argument {index} contains a NUL byte, which no argument can hold")
        size += _utf8_size(argument, f"argument {index}") + 1
    if not value[0]:
        raise ValueError("the program name (argument 0) is empty")
    if size > MAX_COMMAND_BYTES:
        raise ValueError(f"is {size} bytes long; at most {MAX_COMMAND_BYTES} are allowed")
    return tuple(value)


def _integer(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer from {low} to {high}, not {_type_name(value)}")
    if not low <= value <= high:
        raise ValueError(f"must be an integer from {low} to {high}, not {value}")
    return value


def _seconds(value: Any, low: float, high: float, *, allow_low: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number of seconds, not {_type_name(value)}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError("must be a finite number of seconds")
    too_low = value < low if allow_low else value <= low
    if too_low or value > high:
        bound = "at least" if allow_low else "more than"
        raise ValueError(f"must be {bound} {low:g} and at most {high:.0f} seconds, not {value:g}")
    return float(value)


def _timeout(value: Any) -> float:
    return _seconds(value, 0, MAX_TIMEOUT_S, allow_low=False)


def _delay(value: Any) -> int:
    return round(_seconds(value, 0, MAX_DELAY_S, allow_low=True) * 1000)


def _run_at(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 time string, not {_type_name(value)}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{_shown(value)} is not an RFC 3339 time; use a form like 2026-01-31T09:30:00+01:00"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{_shown(value)} has no UTC offset; add one such as Z or +01:00")
    return round(moment.timestamp() * 1000)


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"must be an object of strings, not {_type_name(value)}")
    size = 0
    for name, item in value.items():
        if not ENV_NAME_PATTERN.match(name):
            raise ValueError(f"{_shown(name)} is not a valid variable name")
        if not isinstance(item, str):
            raise ValueError(f"{name} must be a string, not {_type_name(item)}")
        if "\0" in item:
            raise ValueError(f"{name} contains a NUL byte, which no variable can hold")
        size += len(name) + _utf8_size(item, name) + 2
    if size > MAX_ENV_BYTES:
        raise ValueError(f"is {size} bytes long; at most {MAX_ENV_BYTES} are allowed")
    return dict(value)


def _cwd(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be an absolute path, not {_shown(value)}")
    if "\0" in value:
        raise ValueError("contains a NUL byte, which no path can hold")
    _utf8_size(value, "the path")
    return value


def _utf8_size(text: str, what: str) -> int:
    """Return the UTF-8 size of ``text``; raise ValueError if it contains a lone surrogate."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains a lone surrogate, which is not valid Unicode") from None


def _type_name(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Claimed:
    """A job as a worker receives it from a claim."""

    id: str
    lease: str
    record: Mapping[str, Any]

    @property
    def command(self) -> list[str]:
        return list(self.record["command"])

    @property
    def queue(self) -> str:
        return str(self.record["queue"])

    @property
    def attempts(self) -> int:
        return int(self.record["attempts"])

    @property
    def timeout_s(self) -> float:
        return float(self.record["timeout"])

    @property
    def env(self) -> Mapping[str, str]:
        env = self.record.get("env")
        return env if isinstance(env, dict) else {}

    @property
    def cwd(self) -> str | None:
        cwd = self.record.get("cwd")
        return cwd if isinstance(cwd, str) else None
