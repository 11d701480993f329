"""The TOML config: defaults, drop-ins, the URL override, errors and `queuectl config`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import Env

CONFIG_ERROR = 6
NOT_FOUND = 3

# The defaults that operators rely on, with the names they type.
DOCUMENTED_DEFAULTS = {
    "redis.url": "redis://localhost:6379/0",
    "redis.namespace": "queuectl",
    "redis.password_file": None,
    "jobs.max_retries": 3,
    "jobs.timeout": 3600.0,
    "jobs.backoff_base": 2.0,
    "jobs.backoff_max": 3600.0,
    "jobs.output_limit": 65536,
    "jobs.retention_completed": 86400.0,
    "jobs.retention_dead": 30 * 86400.0,
    "worker.queues": ["default"],
    "worker.heartbeat_interval": 5.0,
    "worker.lease_timeout": 30.0,
    "worker.stop_timeout": 60.0,
    "worker.kill_grace": 5.0,
    "security.allowed_commands": [],
}


def show(env: Env, *args: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    result = env.cli(*args, "config", "show", "--json", env=environ, check=True)
    values: dict[str, Any] = json.loads(result.stdout)
    return values


def test_empty_file_gives_documented_defaults(env: Env, tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")

    values = show(env, "--config", str(empty))

    for key, expected in DOCUMENTED_DEFAULTS.items():
        assert values[key] == {"value": expected, "source": "default"}, key


def test_dropins_apply_in_name_order(env: Env) -> None:
    env.write_config(jobs={"timeout": 10, "max_retries": 1})
    folder = env.folder / "queuectl.toml.d"
    folder.mkdir()
    (folder / "20-late.toml").write_text("[jobs]\ntimeout = 30\n")
    (folder / "10-early.toml").write_text("[jobs]\ntimeout = 20\nmax_retries = 7\n")
    (folder / "30-notes.txt").write_text("this is not TOML and is ignored\n")

    values = show(env)

    assert values["jobs.timeout"] == {"value": 30.0, "source": str(folder / "20-late.toml")}
    assert values["jobs.max_retries"] == {"value": 7, "source": str(folder / "10-early.toml")}
    assert values["jobs.backoff_base"]["source"] == str(env.config_path)


def test_redis_url_variable_overrides_file(env: Env, tmp_path: Path) -> None:
    nowhere = f"unix://{tmp_path}/no-server.sock"
    environ = {"QUEUECTL_REDIS_URL": nowhere}

    values = show(env, environ=environ)
    status = env.cli("status", env=environ)

    assert values["redis.url"] == {"value": nowhere, "source": "environment QUEUECTL_REDIS_URL"}
    assert status.returncode == 5, status.stderr
    assert "no-server.sock" in status.stderr


def test_invalid_redis_url_variable_is_config_error(env: Env) -> None:
    result = env.cli("status", env={"QUEUECTL_REDIS_URL": "http://localhost"})

    assert result.returncode == CONFIG_ERROR
    assert "QUEUECTL_REDIS_URL" in result.stderr
    assert "redis.url" in result.stderr


def test_show_hides_password_in_url(env: Env) -> None:
    environ = {"QUEUECTL_REDIS_URL": "redis://app:s3cret@localhost:6379/0"}

    text = env.cli("config", "show", env=environ, check=True).stdout

    assert "s3cret" not in text
    assert 'redis.url = "redis://app:***@localhost:6379/0"' in text


def test_show_prints_every_key_with_source(env: Env) -> None:
    text = env.cli("config", "show", check=True).stdout
    lines = text.splitlines()

    assert f"worker.lease_timeout = 1.0    # {env.config_path}" in lines
    assert "jobs.max_retries = 3    # default" in lines
    assert len(lines) == len(show(env))


# Each case: the file's content, then the key the error must name.
BAD_FILES = {
    "unknown key": ("[jobs]\ncolour = 1\n", "jobs.colour"),
    "unknown section": ("[colours]\nred = 1\n", "colours.red"),
    "bare value": ("timeout = 5\n", "timeout"),
    "wrong type": ('[jobs]\ntimeout = "soon"\n', "jobs.timeout"),
    "boolean for number": ("[jobs]\ntimeout = true\n", "jobs.timeout"),
    "float for integer": ("[jobs]\nmax_retries = 1.5\n", "jobs.max_retries"),
    "negative retries": ("[jobs]\nmax_retries = -1\n", "jobs.max_retries"),
    "zero lease": ("[worker]\nlease_timeout = 0\n", "worker.lease_timeout"),
    "nan timeout": ("[jobs]\ntimeout = nan\n", "jobs.timeout"),
    "empty queue list": ("[worker]\nqueues = []\n", "worker.queues"),
    "bad queue name": ('[worker]\nqueues = ["a b"]\n', "worker.queues"),
    "relative cwd": ('[jobs]\ncwd = "tmp"\n', "jobs.cwd"),
    "bad url scheme": ('[redis]\nurl = "http://localhost"\n', "redis.url"),
    "bad log level": ('[log]\nlevel = "loud"\n', "log.level"),
    "heartbeat not below lease": (
        "[worker]\nheartbeat_interval = 2\nlease_timeout = 1\n",
        "worker.heartbeat_interval",
    ),
    "invalid toml": ("[jobs\n", "invalid TOML"),
}


@pytest.mark.parametrize("content, key", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_config_file_names_file_and_key(
    env: Env, tmp_path: Path, content: str, key: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)

    result = env.cli("--config", str(path), "status")

    assert result.returncode == CONFIG_ERROR, result.stderr
    assert str(path) in result.stderr
    assert key in result.stderr


def test_bad_dropin_is_named(env: Env) -> None:
    folder = env.folder / "queuectl.toml.d"
    folder.mkdir()
    (folder / "50-typo.toml").write_text("[jobs]\nmax_retry = 3\n")

    result = env.cli("status")

    assert result.returncode == CONFIG_ERROR
    assert str(folder / "50-typo.toml") in result.stderr
    assert "jobs.max_retry" in result.stderr


def test_missing_named_file_is_config_error(env: Env, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"

    by_option = env.cli("--config", str(missing), "status")
    by_variable = env.cli("status", env={"QUEUECTL_CONFIG": str(missing)})

    assert by_option.returncode == CONFIG_ERROR
    assert f"{missing}: config file not found" in by_option.stderr
    assert by_variable.returncode == CONFIG_ERROR
    assert f"{missing}: config file not found" in by_variable.stderr


@pytest.mark.parametrize("program", ["queuectl-worker", "queuectl-scheduler", "queuectl-reaper"])
def test_daemon_exits_6_on_bad_config(env: Env, program: str) -> None:
    env.write_config(jobs={"timeout": -1})

    result = env.run(program, timeout_s=30)

    assert result.returncode == CONFIG_ERROR, result.stderr
    assert "jobs.timeout" in result.stderr


def test_get_prints_one_value(env: Env) -> None:
    assert env.cli("config", "get", "worker.lease_timeout", check=True).stdout == "1.0\n"
    assert env.cli("config", "get", "max-retries", check=True).stdout == "3\n"
    assert env.cli("config", "get", "redis.namespace", check=True).stdout == env.namespace + "\n"
    queues = env.cli("config", "get", "worker.queues", "--json", check=True).stdout
    assert json.loads(queues) == ["default"]


def test_get_unknown_key_is_not_found(env: Env) -> None:
    result = env.cli("config", "get", "jobs.colour")

    assert result.returncode == NOT_FOUND, result.stderr
    assert "jobs.colour" in result.stderr
    assert "jobs.max_retries" in result.stderr, "the error lists the known keys"


def test_set_writes_dropin_not_main_file(env: Env) -> None:
    main_before = env.config_path.read_bytes()

    result = env.cli("config", "set", "max-retries", "3")

    dropin = env.folder / "queuectl.toml.d" / "90-queuectl-set.toml"
    assert result.returncode == 0, result.stderr
    assert str(dropin) in result.stdout
    assert env.config_path.read_bytes() == main_before
    assert "max_retries = 3" in dropin.read_text()
    assert show(env)["jobs.max_retries"] == {"value": 3, "source": str(dropin)}


SHORT_FORMS = {
    "max-retries": ("5", "jobs.max_retries", 5),
    "backoff-base": ("1.5", "jobs.backoff_base", 1.5),
    "timeout": ("60", "jobs.timeout", 60.0),
    "backoff-max": ("120", "jobs.backoff_max", 120.0),
}


@pytest.mark.parametrize("short, text, key, expected", [(k, *v) for k, v in SHORT_FORMS.items()])
def test_set_accepts_short_form(env: Env, short: str, text: str, key: str, expected: Any) -> None:
    env.cli("config", "set", short, text, check=True)

    assert show(env)[key]["value"] == expected
    assert env.config.get(key) == expected


def test_set_keeps_earlier_values(env: Env) -> None:
    env.cli("config", "set", "max-retries", "5", check=True)
    env.cli("config", "set", "worker.queues", '["mail", "default"]', check=True)
    env.cli("config", "set", "jobs.cwd", "/tmp", check=True)

    values = show(env)

    assert values["jobs.max_retries"]["value"] == 5
    assert values["worker.queues"]["value"] == ["mail", "default"]
    assert values["jobs.cwd"]["value"] == "/tmp"


def test_set_invalid_value_changes_nothing(env: Env) -> None:
    env.cli("config", "set", "max-retries", "5", check=True)
    dropin = env.folder / "queuectl.toml.d" / "90-queuectl-set.toml"
    before = dropin.read_bytes()

    out_of_range = env.cli("config", "set", "jobs.timeout", "-5")
    inconsistent = env.cli("config", "set", "worker.heartbeat_interval", "5")
    unknown = env.cli("config", "set", "jobs.colour", "red")

    assert out_of_range.returncode == CONFIG_ERROR
    assert "jobs.timeout" in out_of_range.stderr
    assert inconsistent.returncode == CONFIG_ERROR
    assert "worker.heartbeat_interval" in inconsistent.stderr
    assert unknown.returncode == NOT_FOUND
    assert dropin.read_bytes() == before
    assert sorted(p.name for p in dropin.parent.iterdir()) == ["90-queuectl-set.toml"]
