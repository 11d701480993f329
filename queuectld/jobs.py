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
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring_ascii
from types import MappingProxyType
from typing import Any, NamedTuple

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
SPEC_FIELD_SET = frozenset(SPEC_FIELDS)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_NO_ENV: Mapping[str, str] = MappingProxyType({})
# Maps each byte to the base32 digit of its low 5 bits.  Every digit gets 8
# of the 256 byte values, so random bytes give uniformly random digits.
_BYTE_TO_DIGIT = bytes.maketrans(bytes(range(256)), _CROCKFORD.encode("ascii") * 8)
# The milliseconds and the 10 timestamp digits of the last generated id.
_last_time_part = (-1, "")


def new_id() -> str:
    """Return a fresh 26-character id that sorts by creation time (a ULID).

    The first 10 digits are the milliseconds since the epoch (48 bits), and
    the last 16 digits are 80 random bits from ``os.urandom``.
    """
    global _last_time_part
    now_ms = time.time_ns() // 1_000_000
    if _last_time_part[0] != now_ms:
        digits = []
        value = now_ms
        for _ in range(10):
            digits.append(_CROCKFORD[value & 31])
            value >>= 5
        _last_time_part = (now_ms, "".join(reversed(digits)))
    return _last_time_part[1] + os.urandom(16).translate(_BYTE_TO_DIGIT).decode("ascii")


class Spec(NamedTuple):
    """A validated job spec, ready to be stored.

    A NamedTuple rather than a frozen dataclass, because creating a frozen
    dataclass of these fields took about twice as long on CPython 3.11
    (timeit), and a bulk enqueue creates one per line.
    """

    id: str
    command: tuple[str, ...]
    queue: str
    priority: int
    max_retries: int
    timeout_s: float
    env: Mapping[str, str] = _NO_ENV
    cwd: str | None = None
    run_at_ms: int | None = None
    delay_ms: int | None = None
    # True when new_id made the id, so no stored job can have it yet.
    id_generated: bool = False

    def record_json(self) -> str:
        """Return the initial record as JSON, without the fields the enqueue script adds.

        Built from pieces, with the text that ``json.dumps(record,
        separators=(",", ":"))`` returns.  ``json.dumps`` sets up a new encoder
        on every call, which made it take about 2.5 times as long per record
        (CPython 3.11, timeit).
        """
        quote = encode_basestring_ascii
        text = (
            f'{{"id":{quote(self.id)},"command":[{",".join(map(quote, self.command))}],'
            f'"queue":{quote(self.queue)},"priority":{self.priority:d},'
            f'"max_retries":{self.max_retries:d},"timeout":{self.timeout_s!r}'
        )
        if self.env:
            pairs = ",".join(f"{quote(name)}:{quote(value)}" for name, value in self.env.items())
            text += ',"env":{' + pairs + "}"
        if self.cwd is not None:
            text += ',"cwd":' + quote(self.cwd)
        return text + "}"

    def due(self) -> str:
        """Return the due argument of the enqueue script."""
        if self.run_at_ms is not None:
            return f"at:{self.run_at_ms}"
        if self.delay_ms is not None:
            return f"in:{self.delay_ms}"
        return ""


class _RepeatedField(Exception):
    """A key that appears twice in one JSON object."""


class _InvalidConstant(Exception):
    """NaN, Infinity or -Infinity, which JSON does not allow."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedField(key)
            seen.add(key)
    return result


def _reject_constant(name: str) -> Any:
    raise _InvalidConstant(name)


# One decoder for every spec, because ``json.loads`` with hooks builds one per call.
_SPEC_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_object)


def parse_json_spec(text: str, *, line: int | None = None) -> dict[str, Any]:
    """Parse one JSON object; reject duplicate keys, NaN and Infinity."""
    try:
        if text.startswith("\ufeff"):
            # json.loads rejects a byte order mark with this message too.
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        # Without its line break, an unfinished line's error points into the line.
        value = _SPEC_DECODER.decode(text.rstrip("\r\n"))
    except json.JSONDecodeError as error:
        raise JobSpecError(
            "json",
            f"malformed JSON at column {error.colno}: {error.msg}; "
            'a spec looks like {"command": ["echo", "hi"]}',
            line=line,
        ) from None
    except _RepeatedField as error:
        raise JobSpecError(
            str(error.args[0]), "appears twice; give each field once", line=line
        ) from None
    except _InvalidConstant as error:
        raise JobSpecError(
            "json", f"{error.args[0]} is not valid JSON; use a finite number", line=line
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
    if not raw.keys() <= SPEC_FIELD_SET:
        unknown = sorted(raw.keys() - SPEC_FIELD_SET)
        raise JobSpecError(
            unknown[0], f"unknown field; allowed fields: {', '.join(SPEC_FIELDS)}", line=line
        )
    if "command" not in raw:
        raise JobSpecError("command", "missing; give the program and its arguments", line=line)
    if "run_at" in raw and "delay" in raw:
        raise JobSpecError("run_at", "give either run_at or delay, not both", line=line)

    id_generated = "id" not in raw
    return Spec(
        id=new_id() if id_generated else _check(raw, "id", line, _job_id),
        command=_check(raw, "command", line, _command),
        queue=_check(raw, "queue", line, _queue_name) if "queue" in raw else "default",
        priority=(
            _check(raw, "priority", line, _integer, *PRIORITY_RANGE) if "priority" in raw else 0
        ),
        max_retries=(
            _check(raw, "max_retries", line, _integer, 0, MAX_RETRIES)
            if "max_retries" in raw
            else defaults.max_retries
        ),
        timeout_s=(
            _check(raw, "timeout", line, _timeout) if "timeout" in raw else defaults.timeout_s
        ),
        env=_check(raw, "env", line, _environment) if "env" in raw else {},
        cwd=_check(raw, "cwd", line, _cwd) if "cwd" in raw else None,
        run_at_ms=_check(raw, "run_at", line, _run_at) if "run_at" in raw else None,
        delay_ms=_check(raw, "delay", line, _delay) if "delay" in raw else None,
        id_generated=id_generated,
    )


def _check(raw: Mapping[str, Any], name: str, line: int | None, checker: Any, *args: Any) -> Any:
    """Return ``checker(raw[name], *args)``, with its ValueError raised as ``JobSpecError``."""
    try:
        return checker(raw[name], *args)
    except ValueError as error:
        raise JobSpecError(name, str(error), line=line) from None


def _job_id(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_type_name(value)}")
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"{_shown(value)} is not a valid id; use 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )
    return value


def _queue_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_type_name(value)}")
    if not QUEUE_PATTERN.fullmatch(value):
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
        if not ENV_NAME_PATTERN.fullmatch(name):
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
