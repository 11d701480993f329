"""Config commands: show every effective value, get one, set one.

``set`` never edits the packaged file: it writes the drop-in
``<config>.d/90-queuectl-set.toml``, checks that the whole config still
loads, and signals running daemons to reload.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import KEYS, Config, canonical_key, dropin_dir, load, parse_value
from ..errors import ConfigError
from .output import print_json

SET_DROPIN = "90-queuectl-set.toml"
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


def _add_config_parser(commands: Any) -> None:
    config = commands.add_parser("config", help="show, get and set config values")
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    show = config_commands.add_parser("show", help="print every effective value and its source")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=show_command)
    get = config_commands.add_parser("get", help="print one value")
    get.add_argument("key", help="dotted key such as jobs.timeout, or max-retries")
    get.add_argument("--json", action="store_true", help="print JSON")
    get.set_defaults(handler=get_command)
    setter = config_commands.add_parser("set", help="set a value in a drop-in and reload daemons")
    setter.add_argument("key", help="dotted key such as jobs.timeout, or max-retries")
    setter.add_argument("value", help="the value, in TOML syntax for lists and tables")
    setter.set_defaults(handler=set_command)


# Command name -> the function that adds its parser, as COMMANDS in main.py expects.
PARSERS: dict[str, Callable[[Any], None]] = {"config": _add_config_parser}


def toml_value(value: Any) -> str:
    """Format a config value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if value is None:
        return '""'
    raise TypeError(f"cannot format {type(value).__name__} as TOML")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def show_command(args: argparse.Namespace, config: Config) -> int:
    if args.json:
        print_json(
            {
                key: {"value": _jsonable(config.get(key)), "source": config.source(key)}
                for key in KEYS
            }
        )
        return 0
    for key in KEYS:
        value = config.get(key)
        shown = "(none)" if value is None else toml_value(value)
        if key == "redis.url":
            from ..connection import display_url

            shown = toml_value(display_url(str(value)))
        print(f"{key} = {shown}    # {config.source(key)}")
    return 0


def get_command(args: argparse.Namespace, config: Config) -> int:
    value = config.get(args.key)
    if args.json:
        print_json(_jsonable(value))
    elif value is not None:
        print(value if isinstance(value, str) else toml_value(value))
    return 0


def set_command(args: argparse.Namespace, config: Config) -> int:
    key = canonical_key(args.key)
    value = parse_value(key, args.value)
    path = dropin_dir(config.path) / SET_DROPIN
    previous = path.read_bytes() if path.exists() else None
    document = _read_dropin(path)
    section, name = key.split(".", 1)
    document.setdefault(section, {})[name] = value
    _write_dropin(path, document)
    try:
        load(str(config.path) if config.path.exists() else None)
    except ConfigError:
        if previous is None:
            path.unlink()
        else:
            path.write_bytes(previous)
        raise
    print(f"{key} = {toml_value(value)}    # written to {path}")
    _reload_daemons(config)
    return 0


def _read_dropin(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as stream:
            document: dict[str, dict[str, Any]] = tomllib.load(stream)
            return document
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it ({error}); fix or remove the file") from None


def _write_dropin(path: Path, document: Mapping[str, Mapping[str, Any]]) -> None:
    lines = ["# Written by `queuectl config set`; edit with that command or by hand.", ""]
    for section in sorted(document):
        lines.append(f"[{section}]")
        for name in sorted(document[section]):
            lines.append(f"{name} = {toml_value(document[section][name])}")
        lines.append("")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text("\n".join(lines), encoding="utf-8")
        os.chmod(temporary, 0o640)
        temporary.replace(path)
    except PermissionError:
        raise ConfigError(f"{path}: permission denied; run `queuectl config set` as root") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot write: {error.strerror}") from None


def _reload_daemons(config: Config) -> None:
    # Imported here because only `config set` signals daemons.
    import subprocess

    from .workers import _alive, _read_pid, systemd_manages_workers

    if systemd_manages_workers():
        result = subprocess.run(
            ["systemctl", "reload", "queuectl-scheduler.service", "queuectl-worker@*.service"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0:
            print("asked running daemons to reload")
        else:
            print(f"could not reload daemons: {result.stderr.strip()}", file=sys.stderr)
        return
    run_dir = Path(config.worker.run_dir)
    count = 0
    for pidfile in sorted(run_dir.glob("worker-*.pid")) if run_dir.is_dir() else []:
        pid = _read_pid(pidfile)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGHUP)
            count += 1
    if count:
        print(f"asked {count} detached workers to reload")
