"""Loading and validating the TOML config.

The config is one file (``/etc/queuectl/queuectl.toml`` unless ``--config``
or ``QUEUECTL_CONFIG`` names another) plus every ``*.toml`` drop-in in the
folder ``<file>.d/``, applied in name order.  Each value is checked once,
here, and errors name the file, the key and what is allowed.  Durations are
seconds in the file and carry an ``_s`` suffix in Python; sizes are bytes.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from .errors import ConfigError, NotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/queuectl/queuectl.toml")
CONFIG_ENV = "QUEUECTL_CONFIG"
REDIS_URL_ENV = "QUEUECTL_REDIS_URL"
DEFAULT_SOURCE = "default"
DEFAULT_JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
DAY_S = 86400.0

# Aliases that queuectl's first users typed; they map to dotted keys.
SHORT_KEYS = {
    "max-retries": "jobs.max_retries",
    "backoff-base": "jobs.backoff_base",
    "backoff-max": "jobs.backoff_max",
    "timeout": "jobs.timeout",
}

# A read-only empty mapping, which every config can share as a default.
_EMPTY: Mapping[str, str] = MappingProxyType({})


# The config classes are NamedTuples rather than frozen dataclasses because
# they are much cheaper to create.  CPython 3.11 compiles each method that it
# generates for a dataclass, and every queuectl program imports this module
# when it starts.
class RedisConfig(NamedTuple):
    url: str = "redis://localhost:6379/0"
    namespace: str = "queuectl"
    username: str | None = None
    password_file: str | None = None
    password_credential: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    socket_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0


class JobsConfig(NamedTuple):
    max_retries: int = 3
    timeout_s: float = 3600.0
    backoff_base: float = 2.0
    backoff_max_s: float = 3600.0
    output_limit: int = 65536
    retention_completed_s: float = DAY_S
    retention_dead_s: float = 30 * DAY_S
    cwd: str = "/"
    path: str = DEFAULT_JOB_PATH
    environment: Mapping[str, str] = _EMPTY
    history_limit: int = 20


class WorkerConfig(NamedTuple):
    queues: tuple[str, ...] = ("default",)
    heartbeat_interval_s: float = 5.0
    lease_timeout_s: float = 30.0
    stop_timeout_s: float = 60.0
    kill_grace_s: float = 5.0
    run_dir: str = "/run/queuectl"
    allow_root: bool = False


class SchedulerConfig(NamedTuple):
    batch_size: int = 500
    lock_timeout_s: float = 10.0


class ReaperConfig(NamedTuple):
    batch_size: int = 500


class SecurityConfig(NamedTuple):
    allowed_commands: tuple[str, ...] = ()


class LogConfig(NamedTuple):
    level: str = "info"


class Config(NamedTuple):
    """The effective config, and where each value came from."""

    redis: RedisConfig = RedisConfig()
    jobs: JobsConfig = JobsConfig()
    worker: WorkerConfig = WorkerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    reaper: ReaperConfig = ReaperConfig()
    security: SecurityConfig = SecurityConfig()
    log: LogConfig = LogConfig()
    path: Path = DEFAULT_PATH
    sources: Mapping[str, str] = _EMPTY

    def get(self, key: str) -> Any:
        """Return the value of a dotted key such as ``jobs.timeout``."""
        spec = KEYS[canonical_key(key)]
        section, _ = spec.key.split(".", 1)
        return getattr(getattr(self, section), spec.attribute)

    def source(self, key: str) -> str:
        return self.sources.get(canonical_key(key), DEFAULT_SOURCE)


# --- value checks ------------------------------------------------------------

Check = Callable[[Any], Any]


def _number(low: float, high: float, *, integer: bool = False) -> Check:
    kind = "an integer" if integer else "a number"

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be {kind} from {low:g} to {high:g}, not {value!r}")
        if integer and not isinstance(value, int):
            raise ValueError(f"must be {kind} from {low:g} to {high:g}, not {value!r}")
        if math.isnan(value) or not low <= value <= high:
            raise ValueError(f"must be {kind} from {low:g} to {high:g}, not {value!r}")
        return int(value) if integer else float(value)

    return check


def _string(pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = ()) -> Check:
    def check(value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise ValueError("must be a non-empty string")
        if "\0" in value:
            raise ValueError("must not contain a NUL byte")
        if choices and value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        if pattern is not None and not pattern.match(value):
            raise ValueError(f"must match {pattern.pattern}, not {value!r}")
        return value

    return check


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def _optional_path(value: Any) -> Any:
    if value == "":
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be an absolute path, not {value!r}")
    return value


def _absolute_path(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError(f"must be an absolute path, not {value!r}")
    return value


def _redis_url(value: Any) -> Any:
    _string()(value)
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must start with redis://, rediss:// or unix://, not {value!r}")
    return value


def _string_list(pattern: re.Pattern[str] | None, *, allow_empty: bool) -> Check:
    def check(value: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError("must be a list of strings")
        if not value and not allow_empty:
            raise ValueError("must name at least one entry")
        for item in value:
            _string(pattern)(item)
        if len(set(value)) != len(value):
            raise ValueError("must not repeat an entry")
        return tuple(value)

    return check


def _environment(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError('must be a table of strings, such as { LANG = "C.UTF-8" }')
    for name, item in value.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ValueError(f"variable name {name!r} is not a valid name")
        if not isinstance(item, str) or "\0" in item:
            raise ValueError(f"variable {name} must be a string without NUL bytes")
    return dict(value)


class KeySpec(NamedTuple):
    key: str
    attribute: str
    check: Check
    help: str


def _spec(key: str, attribute: str, check: Check, help: str) -> tuple[str, KeySpec]:
    return key, KeySpec(key, attribute, check, help)


_YEAR_S = 366 * DAY_S
KEYS: dict[str, KeySpec] = dict(
    [
        _spec("redis.url", "url", _redis_url, "Redis address; QUEUECTL_REDIS_URL overrides it"),
        _spec("redis.namespace", "namespace", _string(NAME_PATTERN), "prefix of every key"),
        _spec("redis.username", "username", _string(), "ACL user name"),
        _spec("redis.password_file", "password_file", _optional_path, "file with the password"),
        _spec(
            "redis.password_credential",
            "password_credential",
            _string(re.compile(r"^[A-Za-z0-9._-]{1,64}$")),
            "systemd credential with the password",
        ),
        _spec("redis.tls_ca_file", "tls_ca_file", _optional_path, "CA bundle for rediss://"),
        _spec("redis.tls_cert_file", "tls_cert_file", _optional_path, "client certificate"),
        _spec("redis.tls_key_file", "tls_key_file", _optional_path, "client certificate's key"),
        _spec("redis.socket_timeout", "socket_timeout_s", _number(0.1, 300), "seconds"),
        _spec("redis.connect_timeout", "connect_timeout_s", _number(0.1, 300), "seconds"),
        _spec("jobs.max_retries", "max_retries", _number(0, 1000, integer=True), "retries"),
        _spec("jobs.timeout", "timeout_s", _number(0.001, _YEAR_S), "seconds a run may take"),
        _spec("jobs.backoff_base", "backoff_base", _number(1, 1000), "retry delay base"),
        _spec("jobs.backoff_max", "backoff_max_s", _number(0, _YEAR_S), "seconds"),
        _spec("jobs.output_limit", "output_limit", _number(0, 16 << 20, integer=True), "bytes"),
        _spec("jobs.retention_completed", "retention_completed_s", _number(0, 10 * _YEAR_S), "s"),
        _spec("jobs.retention_dead", "retention_dead_s", _number(0, 10 * _YEAR_S), "seconds"),
        _spec("jobs.cwd", "cwd", _absolute_path, "working directory of jobs"),
        _spec("jobs.path", "path", _string(), "PATH of jobs"),
        _spec("jobs.environment", "environment", _environment, "environment of every job"),
        _spec("jobs.history_limit", "history_limit", _number(1, 1000, integer=True), "attempts"),
        _spec("worker.queues", "queues", _string_list(NAME_PATTERN, allow_empty=False), "queues"),
        _spec("worker.heartbeat_interval", "heartbeat_interval_s", _number(0.05, 3600), "s"),
        _spec("worker.lease_timeout", "lease_timeout_s", _number(0.2, 86400), "seconds"),
        _spec("worker.stop_timeout", "stop_timeout_s", _number(0, 86400), "seconds"),
        _spec("worker.kill_grace", "kill_grace_s", _number(0, 3600), "seconds"),
        _spec("worker.run_dir", "run_dir", _absolute_path, "pidfiles of detached workers"),
        _spec("worker.allow_root", "allow_root", _boolean, "let a worker run jobs as root"),
        _spec("scheduler.batch_size", "batch_size", _number(1, 10000, integer=True), "jobs"),
        _spec("scheduler.lock_timeout", "lock_timeout_s", _number(0.5, 3600), "seconds"),
        _spec("reaper.batch_size", "batch_size", _number(1, 10000, integer=True), "jobs"),
        _spec(
            "security.allowed_commands",
            "allowed_commands",
            _string_list(None, allow_empty=True),
            "absolute paths or globs",
        ),
        _spec(
            "log.level",
            "level",
            _string(choices=("debug", "info", "warning", "error")),
            "log level",
        ),
    ]
)


def canonical_key(key: str) -> str:
    """Return the dotted key for ``key`` or one of its short forms."""
    name = SHORT_KEYS.get(key, key)
    if name not in KEYS:
        known = ", ".join(sorted(KEYS))
        raise NotFoundError(f"unknown config key {key!r}; known keys: {known}")
    return name


def config_path(explicit: str | None = None) -> tuple[Path, bool]:
    """Return the config file to read and whether the user named it."""
    if explicit:
        return Path(explicit), True
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env), True
    return DEFAULT_PATH, False


def dropin_dir(path: Path) -> Path:
    return path.with_name(path.name + ".d")


def load(explicit: str | None = None) -> Config:
    """Load and validate the config; raise ``ConfigError`` naming file and key.

    A file named by ``--config`` or ``QUEUECTL_CONFIG`` must exist.  The
    default file may be absent, in which case built-in defaults apply.
    """
    path, named = config_path(explicit)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    if path.exists() or named:
        _read_into(path, values, sources)
    folder = dropin_dir(path)
    if folder.is_dir():
        for dropin in sorted(folder.glob("*.toml")):
            _read_into(dropin, values, sources)

    url_override = os.environ.get(REDIS_URL_ENV)
    if url_override:
        values["redis.url"] = _checked("redis.url", url_override, f"${REDIS_URL_ENV}")
        sources["redis.url"] = f"environment {REDIS_URL_ENV}"

    config = _build(values, path, sources)
    _check_together(config)
    return config


def _read_into(path: Path, values: dict[str, Any], sources: dict[str, str]) -> None:
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; create it, or name another with --config"
        ) from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied; run as a member of its group") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None

    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{path}: {section}: expected a [{section}] table, not a bare value; "
                f"known keys: {', '.join(sorted(KEYS))}"
            )
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in KEYS:
                raise ConfigError(
                    f"{path}: unknown key {key}; known keys: {', '.join(sorted(KEYS))}"
                )
            values[key] = _checked(key, value, str(path))
            sources[key] = str(path)


def _checked(key: str, value: Any, origin: str) -> Any:
    try:
        return KEYS[key].check(value)
    except ValueError as error:
        raise ConfigError(f"{origin}: {key} {error}") from None


def parse_value(key: str, text: str) -> Any:
    """Parse a command-line value for ``key`` as a TOML value, else as a string."""
    key = canonical_key(key)
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text
    return _checked(key, value, "value")


def _build(values: Mapping[str, Any], path: Path, sources: dict[str, str]) -> Config:
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _ = key.split(".", 1)
        sections.setdefault(section, {})[KEYS[key].attribute] = value
    return Config(
        redis=RedisConfig(**sections.get("redis", {})),
        jobs=JobsConfig(**sections.get("jobs", {})),
        worker=WorkerConfig(**sections.get("worker", {})),
        scheduler=SchedulerConfig(**sections.get("scheduler", {})),
        reaper=ReaperConfig(**sections.get("reaper", {})),
        security=SecurityConfig(**sections.get("security", {})),
        log=LogConfig(**sections.get("log", {})),
        path=path,
        sources=sources,
    )


def _check_together(config: Config) -> None:
    worker = config.worker
    if worker.heartbeat_interval_s >= worker.lease_timeout_s:
        source = config.source("worker.heartbeat_interval")
        raise ConfigError(
            f"{source}: worker.heartbeat_interval ({worker.heartbeat_interval_s:g} s) must be "
            f"shorter than worker.lease_timeout ({worker.lease_timeout_s:g} s); "
            "a third of the lease timeout or less is a good choice"
        )


def check_not_root(worker: WorkerConfig, euid: int) -> None:
    """Raise ``ConfigError`` if a worker would run jobs as root without consent."""
    if euid == 0 and not worker.allow_root:
        raise ConfigError(
            "a worker running as root would run every job as root; run it as an "
            "unprivileged user (the queuectl-worker@ units use the queuectl user), "
            "or set worker.allow_root = true"
        )
