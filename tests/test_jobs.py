"""Job specs through `queuectl enqueue`: parsing, validation and bad input.

Every rejected input must exit with its documented code, name the field at
fault, and leave the namespace exactly as it was.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from harness import Env

USAGE, CONFLICT = 2, 4


@pytest.fixture
def seeded(env: Env) -> Env:
    """An env whose namespace already contains the job ``existing``."""
    env.enqueue(["true"], id="existing", queue="other")
    return env


def test_first_users_example_enqueues(env: Env) -> None:
    result = env.cli("enqueue", '{"id":"job1","command":"sleep 2"}')

    assert result.returncode == 0, result.stderr
    assert result.stdout == "job1\n"
    record = env.store().get_job("job1")
    assert record["command"] == ["sleep", "2"]
    assert record["state"] == "pending"
    assert record["queue"] == "default"
    assert record["priority"] == 0
    assert record["attempts"] == 0


def test_string_command_split_without_shell(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    marker = env.folder / "x"
    marker.write_text("keep me")

    env.cli("enqueue", json.dumps({"id": "lit", "command": "echo $HOME; rm x"}), check=True)
    record = env.wait_for_state("lit", "completed")

    assert record["command"] == ["echo", "$HOME;", "rm", "x"]
    assert env.store().get_output("lit")["stdout"] == "$HOME; rm x\n"
    assert marker.read_text() == "keep me", "the command string ran in a shell"


def test_string_command_keeps_quoted_words(env: Env) -> None:
    env.cli(
        "enqueue",
        json.dumps({"id": "quoted", "command": "printf '%s|' 'a b' \"c  d\" e\\ f"}),
        check=True,
    )

    record = env.store().get_job("quoted")

    assert record["command"] == ["printf", "%s|", "a b", "c  d", "e f"]


def test_argv_after_dashes_is_kept(env: Env) -> None:
    result = env.cli(
        "enqueue",
        "--id",
        "argv",
        "--queue",
        "mail",
        "--priority",
        "5",
        "--max-retries",
        "7",
        "--timeout",
        "12.5",
        "--env",
        "GREETING=hello world",
        "--cwd",
        "/tmp",
        "--",
        "printf",
        "%s",
        "$X; --id",
    )

    assert result.returncode == 0, result.stderr
    record = env.store().get_job("argv")
    assert record["command"] == ["printf", "%s", "$X; --id"]
    assert record["queue"] == "mail"
    assert record["priority"] == 5
    assert record["max_retries"] == 7
    assert record["timeout"] == 12.5
    assert record["env"] == {"GREETING": "hello world"}
    assert record["cwd"] == "/tmp"


def test_defaults_come_from_config(env: Env) -> None:
    env.write_config(jobs={"max_retries": 9, "timeout": 42})

    env.cli("enqueue", '{"id": "d", "command": ["true"]}', check=True)
    record = env.store().get_job("d")

    assert record["max_retries"] == 9
    assert record["timeout"] == 42


def test_generated_id_is_a_ulid(env: Env) -> None:
    first = env.cli("enqueue", "--", "true", check=True).stdout.strip()
    second = env.cli("enqueue", "--", "true", check=True).stdout.strip()

    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", first), first
    assert first[:10] < second[:10], "ids must sort by creation time"
    assert env.store().get_job(first)["state"] == "pending"


def test_delay_and_run_at_schedule_job(env: Env) -> None:
    store = env.store()
    now_ms = store.now_ms()

    env.cli("enqueue", "--id", "later", "--delay", "60", "--", "true", check=True)
    env.cli(
        "enqueue",
        '{"id": "at", "command": ["true"], "run_at": "2999-01-01T00:00:00+01:00"}',
        check=True,
    )
    env.cli("enqueue", '{"id": "past", "command": ["true"], "run_at": "2001-01-01T00:00:00Z"}')

    later = store.get_job("later")
    assert later["state"] == "scheduled"
    assert later["created_ms"] >= now_ms
    assert later["run_at_ms"] == later["created_ms"] + 60_000
    expected_ms = datetime(2998, 12, 31, 23, tzinfo=timezone.utc).timestamp() * 1000
    assert store.get_job("at")["run_at_ms"] == expected_ms
    assert store.get_job("at")["state"] == "scheduled"
    assert store.get_job("past")["state"] == "pending", "a past run_at means run now"


def test_duplicate_id_conflicts_and_changes_nothing(seeded: Env) -> None:
    before = seeded.dump()

    result = seeded.cli("enqueue", '{"id": "existing", "command": ["false"]}')

    assert result.returncode == CONFLICT
    assert "existing" in result.stderr
    assert "--if-absent" in result.stderr
    assert seeded.dump() == before


def test_if_absent_keeps_existing_job(seeded: Env) -> None:
    before = seeded.dump()

    result = seeded.cli("enqueue", "--if-absent", '{"id": "existing", "command": ["false"]}')

    assert result.returncode == 0, result.stderr
    assert "existing already exists" in result.stderr
    assert seeded.dump() == before


def test_batch_file_enqueues_every_line(env: Env, tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        '{"id": "b1", "command": ["true"]}\n'
        "\n"
        '{"id": "b2", "command": "echo two", "queue": "mail", "priority": 3}\n'
        '{"id": "b3", "command": ["true"], "delay": 30}\n'
    )

    result = env.cli("enqueue", "--file", str(batch), "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"id": "b1", "created": True},
        {"id": "b2", "created": True},
        {"id": "b3", "created": True},
    ]
    store = env.store()
    assert store.get_job("b1")["state"] == "pending"
    assert store.get_job("b2")["queue"] == "mail"
    assert store.get_job("b3")["state"] == "scheduled"


def test_batch_from_stdin_with_overrides(env: Env) -> None:
    lines = '{"id": "s1", "command": ["true"]}\n{"id": "s2", "command": ["true"]}\n'

    result = env.cli("enqueue", "--file", "-", "--queue", "bulk", input=lines)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "s1\ns2\n"
    assert env.store().get_job("s2")["queue"] == "bulk"


def test_batch_if_absent_reports_existing(seeded: Env, tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        '{"id": "existing", "command": ["false"], "queue": "other"}\n'
        '{"id": "fresh", "command": ["true"], "queue": "other"}\n'
    )

    result = seeded.cli("enqueue", "--if-absent", "--file", str(batch), "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"id": "existing", "created": False},
        {"id": "fresh", "created": True},
    ]
    assert seeded.store().get_job("existing")["command"] == ["true"]


def test_conflict_in_second_queue_writes_nothing(seeded: Env, tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        '{"id": "new1", "command": ["true"], "queue": "first"}\n'
        '{"id": "existing", "command": ["true"], "queue": "second"}\n'
    )
    before = seeded.dump()

    result = seeded.cli("enqueue", "--file", str(batch))

    assert result.returncode == CONFLICT, result.stderr
    assert "existing" in result.stderr
    assert seeded.dump() == before


def test_batch_error_names_line(seeded: Env, tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        '{"id": "ok1", "command": ["true"]}\n'
        '{"id": "ok2", "command": ["true"]}\n'
        '{"id": "bad", "command": ["true"], "timeout": -1}\n'
    )
    before = seeded.dump()

    result = seeded.cli("enqueue", "--file", str(batch))

    assert result.returncode == USAGE
    assert "line 3" in result.stderr
    assert "timeout" in result.stderr
    assert seeded.dump() == before


def _spec(**fields: object) -> str:
    return json.dumps({"command": ["true"], **fields})


BAD_FILES = {
    "malformed": ('{"command": ["true"]}\n{"command": \n', ["line 2", "malformed JSON"]),
    "unclosed object": (
        '{"command": ["true"]}\n{"command": ["echo", "x"], "queue": "mail"\n',
        ["line 2", "malformed JSON at column 43: Expecting ',' delimiter"],
    ),
    "repeated id": (
        '{"id": "r", "command": ["true"]}\n{"id": "r", "command": ["true"]}\n',
        ["line 2", "id", "line 1"],
    ),
    "empty": ("\n\n", ["no job specs"]),
    # Longer than one command-line argument may be, so it comes from a file.
    "oversized command": (_spec(command=["echo", "a" * 140_000]) + "\n", ["command", "bytes"]),
    "not utf-8": (b'{"command": ["echo", "\xff"]}\n', ["line 1", "UTF-8"]),
    "lone surrogate": (
        _spec(command=["true"]) + "\n" + _spec(command=["echo", "\udc80"]) + "\n",
        ["line 2", "surrogate"],
    ),
    "repeated field": (
        '{"command": ["true"]}\n{"command": ["a"], "command": ["b"]}\n',
        ["line 2", "command", "twice"],
    ),
    "NaN constant": (
        '{"command": ["true"]}\n{"command": ["true"], "timeout": NaN}\n',
        ["line 2", "NaN"],
    ),
    "byte order mark": ('\ufeff{"command": ["true"]}\n', ["line 1", "BOM"]),
}


@pytest.mark.parametrize("content, fragments", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_batch_file_is_rejected(
    seeded: Env, tmp_path: Path, content: str | bytes, fragments: list[str]
) -> None:
    batch = tmp_path / "batch.jsonl"
    if isinstance(content, bytes):
        batch.write_bytes(content)
    else:
        batch.write_text(content)
    before = seeded.dump()

    result = seeded.cli("enqueue", "--file", str(batch))

    assert result.returncode == USAGE, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert seeded.dump() == before


# Each case: the arguments after `queuectl enqueue`, then text the error must contain.
BAD_SPECS: dict[str, tuple[list[str], list[str]]] = {
    "malformed json": (['{"command": ["true"'], ["malformed JSON"]),
    "trailing data": (['{"command": ["true"]} x'], ["malformed JSON"]),
    "not an object": (['["true"]'], ["JSON object"]),
    "deep nesting": (["[" * 100_000], ["json"]),
    "NaN constant": (['{"command": ["true"], "timeout": NaN}'], ["NaN"]),
    "repeated field": (['{"command": ["a"], "command": ["b"]}'], ["command", "twice"]),
    "unknown field": ([_spec(colour="red")], ["colour", "unknown field"]),
    "missing command": (['{"id": "x"}'], ["command", "missing"]),
    "command number": ([_spec(command=5)], ["command", "an integer"]),
    "command item number": ([_spec(command=["echo", 1])], ["command", "argument 1"]),
    "empty command list": ([_spec(command=[])], ["command", "empty"]),
    "empty command string": ([_spec(command="   ")], ["command", "empty"]),
    "empty program": ([_spec(command=["", "x"])], ["command", "argument 0"]),
    "unbalanced quote": ([_spec(command="echo 'oops")], ["command", "split"]),
    "too many arguments": ([_spec(command=["echo"] * 5000)], ["command", "arguments"]),
    "NUL in command": ([_spec(command=["echo", "a\0b"])], ["command", "NUL"]),
    "NUL in command string": ([_spec(command="echo a\0b")], ["command", "NUL"]),
    "lone surrogate": (['{"command": ["echo", "\\udc80"]}'], ["command", "surrogate"]),
    "lone surrogate in env": ([_spec(env={"A": "\udc80"})], ["env", "surrogate"]),
    "lone surrogate in cwd": ([_spec(cwd="/tmp/\udc80")], ["cwd", "surrogate"]),
    "empty id": ([_spec(id="")], ["id", "1 to 128"]),
    "oversized id": ([_spec(id="i" * 129)], ["id", "1 to 128"]),
    "id with space": ([_spec(id="a b")], ["id"]),
    "id number": ([_spec(id=5)], ["id", "a string"]),
    "NUL in id": ([_spec(id="a\0b")], ["id"]),
    "id ending in newline": ([_spec(id="a\n")], ["id", "1 to 128"]),
    "queue ending in newline": ([_spec(queue="mail\n")], ["queue", "1 to 64"]),
    "env name ending in newline": ([_spec(env={"A\n": "x"})], ["env", "variable name"]),
    "bad queue": ([_spec(queue="a/b")], ["queue"]),
    "priority string": ([_spec(priority="high")], ["priority", "integer"]),
    "priority boolean": ([_spec(priority=True)], ["priority", "boolean"]),
    "priority too high": ([_spec(priority=5000)], ["priority", "-1000 to 1000"]),
    "priority float": ([_spec(priority=1.5)], ["priority"]),
    "negative retries": ([_spec(max_retries=-1)], ["max_retries"]),
    "negative timeout": ([_spec(timeout=-1)], ["timeout", "-1"]),
    "zero timeout": ([_spec(timeout=0)], ["timeout"]),
    "timeout string": ([_spec(timeout="10")], ["timeout", "a string"]),
    "huge timeout": (['{"command": ["true"], "timeout": 1e400}'], ["timeout", "finite"]),
    "NaN timeout option": (["--timeout", "nan", "--", "true"], ["timeout", "finite"]),
    "negative delay": ([_spec(delay=-5)], ["delay"]),
    "run_at without offset": ([_spec(run_at="2030-01-01T00:00:00")], ["run_at", "offset"]),
    "run_at not a time": ([_spec(run_at="tomorrow")], ["run_at", "RFC 3339"]),
    "run_at number": ([_spec(run_at=1700000000)], ["run_at"]),
    "run_at and delay": ([_spec(run_at="2030-01-01T00:00:00Z", delay=5)], ["run_at", "delay"]),
    "env list": ([_spec(env=["A=1"])], ["env", "object"]),
    "env bad name": ([_spec(env={"1A": "x"})], ["env", "1A"]),
    "env number value": ([_spec(env={"A": 1})], ["env", "A"]),
    "NUL in env": ([_spec(env={"A": "x\0y"})], ["env", "NUL"]),
    "relative cwd": ([_spec(cwd="tmp")], ["cwd", "absolute"]),
    "env option without =": (["--env", "NOVALUE", "--", "true"], ["--env", "NAME=VALUE"]),
    "no spec": ([], ["exactly one"]),
    "spec and argv": ([_spec(), "--", "true"], ["exactly one"]),
    "missing file": (["--file", "/nonexistent/jobs.jsonl"], ["/nonexistent/jobs.jsonl"]),
    "id with file": (["--id", "x", "--file", "-"], ["--id", "--file"]),
}


@pytest.mark.parametrize("args, fragments", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_spec_is_rejected(seeded: Env, args: list[str], fragments: list[str]) -> None:
    before = seeded.dump()

    result = seeded.cli("enqueue", *args)

    assert result.returncode == USAGE, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert seeded.dump() == before


def test_spec_error_names_field_and_fix(env: Env) -> None:
    result = env.cli("enqueue", _spec(timeout=-3))

    assert result.stderr == (
        "queuectl: invalid job spec: timeout: must be more than 0 and at most "
        "31622400 seconds, not -3\n"
    )


def test_large_batch_is_checked_before_writing(seeded: Env, tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    ids = [f"bulk-{n}" for n in range(2500)]
    lines = [json.dumps({"id": job_id, "command": ["true"], "queue": "other"}) for job_id in ids]
    # One id in use, in the third script call of 1000 jobs.
    lines[2400] = json.dumps({"id": "existing", "command": ["true"], "queue": "other"})
    batch.write_text("\n".join(lines) + "\n")
    before = seeded.dump()

    conflict = seeded.cli("enqueue", "--file", str(batch))
    unchanged = seeded.dump()
    lines[2400] = json.dumps({"id": "bulk-2400", "command": ["true"], "queue": "other"})
    batch.write_text("\n".join(lines) + "\n")
    created = seeded.cli("enqueue", "--file", str(batch))

    assert conflict.returncode == CONFLICT
    assert unchanged == before
    assert created.returncode == 0, created.stderr
    assert created.stdout.split() == ids
    assert seeded.store().counts()["pending_by_queue"] == {"other": 2501}


def test_late_bad_line_writes_nothing(seeded: Env, tmp_path: Path) -> None:
    lines = ['{"command": ["true"]}'] * 100_000
    lines[99_998] = '{"command": ["true"], "priority": "high"}'
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    before = seeded.dump()

    result = seeded.cli("enqueue", "--file", str(batch))

    assert result.returncode == USAGE, result.stderr
    assert "line 99999" in result.stderr
    assert "priority" in result.stderr
    assert result.stdout == ""
    assert seeded.dump() == before
