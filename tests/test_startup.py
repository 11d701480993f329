"""CLI start-up: each command imports and parses only what it needs.

A `queuectl` run builds the parser of the command it runs and imports only
that command's module.  These tests check that the narrow parser reads argv
as the full one does, and that the modules of other commands stay unloaded.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import Env

from queuectld.cli.main import COMMANDS, build_parser, requested_command, split_argv
from queuectld.config import RedisConfig, load
from queuectld.connection import connect
from queuectld.scripts import Scripts, source

# Prints the queuectld and redis modules that one CLI run imported, and
# whether the garbage collector is enabled when the run ends.
IMPORTS_PROBE = """
import gc, json, sys
from queuectld.cli.main import run
code = run(sys.argv[1:])
loaded = sorted(name for name in sys.modules if name.startswith(("queuectld", "redis")))
print(json.dumps({"code": code, "modules": loaded, "gc_enabled": gc.isenabled()}))
"""

# The command modules that neither `enqueue` nor `status` needs.
OTHER_COMMAND_MODULES = {
    "queuectld.cli.workers",
    "queuectld.cli.config_cmd",
    "queuectld.cli.doctor",
}


def probe_imports(env: Env, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, *args],
        capture_output=True,
        text=True,
        env=env.environ(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    probe: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return probe


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], "status"),
        (["--config", "/etc/q.toml", "status"], "status"),
        (["--config=/etc/q.toml", "list", "--state", "pending"], "list"),
        (["--conf", "enqueue", "status"], "status"),
        (["--c", "doctor", "show", "x"], "show"),
        (["--version"], None),
        (["--config", "status"], None),
        ([], None),
    ],
)
def test_requested_command_skips_global_options(argv: list[str], expected: str | None) -> None:
    assert requested_command(argv) == expected


def test_commands_table_matches_parsers() -> None:
    for module_name in set(COMMANDS.values()):
        module = importlib.import_module(f"queuectld.cli.{module_name}")
        listed = {name for name, owner in COMMANDS.items() if owner == module_name}

        assert set(module.PARSERS) == listed, module_name


def test_full_help_lists_every_command() -> None:
    help_text = build_parser().format_help()

    for name in COMMANDS:
        assert f"\n    {name} " in help_text, name


@pytest.mark.parametrize(
    "argv",
    [
        ["enqueue", "--queue", "mail", "--env", "A=1", "--", "gzip", "-k", "f"],
        ["enqueue", '{"command": ["true"]}', "--json"],
        ["--config", "/tmp/q.toml", "status", "--json"],
        ["list", "--state", "pending", "--limit", "5"],
        ["show", "job1"],
        ["dlq", "retry", "--all"],
        ["worker", "start", "--count", "3"],
        ["config", "set", "max-retries", "3"],
        ["doctor", "--json"],
    ],
)
def test_narrow_parser_matches_full_parser(argv: list[str]) -> None:
    options, _ = split_argv(argv)

    narrow = build_parser(requested_command(options)).parse_args(options)
    full = build_parser().parse_args(options)

    assert vars(narrow) == vars(full)


def test_narrow_parser_rejects_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser("status").parse_args(["status", "--bogus"])

    assert stop.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_enqueue_imports_no_other_command(env: Env) -> None:
    probe = probe_imports(env, "enqueue", "--", "true")

    assert probe["code"] == 0
    assert OTHER_COMMAND_MODULES.isdisjoint(probe["modules"])
    assert probe["gc_enabled"] is True


def test_status_imports_no_other_command(env: Env) -> None:
    probe = probe_imports(env, "status")

    assert probe["code"] == 0
    assert OTHER_COMMAND_MODULES.isdisjoint(probe["modules"])


def test_config_get_imports_no_redis(env: Env) -> None:
    probe = probe_imports(env, "config", "get", "jobs.timeout")
    modules = probe["modules"]

    assert probe["code"] == 0
    assert "redis" not in modules
    assert "queuectld.store" not in modules
    assert "queuectld.cli.workers" not in modules


def test_scripts_register_on_first_use() -> None:
    scripts = Scripts.register(redis.Redis(host="127.0.0.1", port=1))

    assert "enqueue" not in vars(scripts)
    enqueue = scripts.enqueue
    assert enqueue.sha == hashlib.sha1(source("enqueue").encode()).hexdigest()
    assert scripts.enqueue is enqueue
    assert "claim" not in vars(scripts)


def test_scripts_reject_unknown_name() -> None:
    scripts = Scripts.register(redis.Redis(host="127.0.0.1", port=1))

    with pytest.raises(AttributeError, match="no_such_script"):
        scripts.no_such_script  # noqa: B018


def test_connect_passes_driver_version() -> None:
    client = connect(RedisConfig(url="redis://127.0.0.1:1/0"))
    options = client.connection_pool.connection_kwargs

    if hasattr(redis, "DriverInfo"):
        assert options["driver_info"].lib_version == redis.__version__
        assert options["driver_info"].name == "redis-py"
    else:
        assert "driver_info" not in options


def test_config_sections_are_read_only(tmp_path: Path) -> None:
    config = load(str(_write(tmp_path / "q.toml", '[jobs]\nenvironment = { LANG = "C" }\n')))

    with pytest.raises(AttributeError):
        config.jobs.timeout_s = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.jobs = config.jobs  # type: ignore[misc]
    assert dict(config.jobs.environment) == {"LANG": "C"}
    assert dict(load(str(_write(tmp_path / "empty.toml", ""))).jobs.environment) == {}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
