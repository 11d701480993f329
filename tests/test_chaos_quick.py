"""The short chaos run (`python -m chaos --quick`): one fault of each kind.

The run starts its own redis-server and daemons, so it runs once per module
as a subprocess, and each test checks one of its invariants in the JSON
report.  A failure message carries the run's printed summary, which names
the failing jobs with their history and log lines.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 170
CLEANUP_TIMEOUT_S = 60
FAULT_KINDS = (
    "kill_worker",
    "kill_scheduler",
    "stop_worker",
    "restart_redis",
    "pause_redis",
    "term_worker",
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + CLEANUP_TIMEOUT_S + 30)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("chaos") / "report.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "chaos", "--quick", "--report", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the harness stop its daemons and Redis; SIGKILL would leak them.
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=CLEANUP_TIMEOUT_S)
        pytest.fail(f"the chaos run took over {RUN_TIMEOUT_S} s and was stopped\n{output}")
    if not path.exists():
        pytest.fail(f"the chaos run wrote no report; exit {process.returncode}\n{output}")
    data: dict[str, Any] = json.loads(path.read_text())
    data["output"] = output
    data["exit_code"] = process.returncode
    return data


def test_chaos_no_job_lost(report: dict[str, Any]) -> None:
    output = report["output"]
    assert report["acknowledged"] == report["jobs"], output
    assert report["lost"] == 0, output
    assert report["unfinished"] == 0, output
    assert report["final"] == report["acknowledged"], output


def test_chaos_runs_match_history(report: dict[str, Any]) -> None:
    output = report["output"]
    assert report["unexplained_runs"] == 0, output
    assert report["job_problems"] == [], output
    assert report["runs"] >= report["jobs"], output


def test_chaos_every_fault_injected(report: dict[str, Any]) -> None:
    for kind in FAULT_KINDS:
        assert report["faults"][kind] >= 1, f"{kind} was not injected\n{report['output']}"


def test_chaos_no_process_left(report: dict[str, Any]) -> None:
    output = report["output"]
    assert report["leftover_processes"] == [], output
    assert report["zombies"] == [], output
    assert all(line.endswith(": 0") for line in report["daemon_exits"]), output


def test_chaos_keyspace_clean(report: dict[str, Any]) -> None:
    output = report["output"]
    assert report["orphan_keys"] == [], output
    assert report["inconsistencies"] == [], output
    assert report["samples"] > 0, output
    assert report["keyspace_matches_baseline"], output


def test_chaos_run_passes(report: dict[str, Any]) -> None:
    assert report["problems"] == [], report["output"]
    assert report["passed"], report["output"]
    assert report["exit_code"] == 0, report["output"]
