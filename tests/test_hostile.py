"""Jobs that behave badly, and ids that are already taken."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

from harness import Env, process_state, vm_peak_kib, wait_until

CONFLICT = 4
GIB = 1 << 30


def test_gigabyte_of_output_keeps_memory_flat(env: Env) -> None:
    env.write_config(jobs={"output_limit": 4096})
    worker = env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["true"], id="warm-up")
    env.wait_for_state("warm-up", "completed")
    before_kib = vm_peak_kib(worker.pid)

    env.enqueue(["head", "-c", str(GIB), "/dev/urandom"], id="flood", timeout=120)
    record = env.wait_for_state("flood", "completed", timeout_s=120)
    after_kib = vm_peak_kib(worker.pid)
    stdout = env.store().get_output("flood")["stdout"]

    print(f"worker peak memory: {before_kib} KiB before, {after_kib} KiB after 1 GiB of output")
    assert record["exit_code"] == 0
    assert stdout.startswith(f"[{GIB - 4096} earlier bytes omitted]\n")
    assert after_kib - before_kib < 10_000, "the worker's memory grew with the output"


def test_unicode_arguments_arrive_byte_for_byte(env: Env, tmp_path: Path) -> None:
    words = ["héllo", "日本語", "😀", "tab\there", "new\nline", "quote'\"", "$HOME", "*"]
    target = tmp_path / "args.bin"
    env.spawn("queuectl-worker", "--instance", "1")
    script = 'for a in "$@"; do printf "%s\\0" "$a"; done > "$0"'
    env.enqueue(["sh", "-c", script, str(target), *words], id="unicode")

    env.wait_for_state("unicode", "completed")

    assert target.read_bytes() == b"".join(w.encode() + b"\0" for w in words)


def test_closed_stdout_job_is_awaited(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["sh", "-c", "exec >&- 2>&-; sleep 1.5; exit 3"], id="quiet", max_retries=0)
    started = time.monotonic()

    record = env.wait_for_state("quiet", "dead")

    assert time.monotonic() - started >= 1.4, "the job was judged before it exited"
    assert record["exit_code"] == 3


def test_job_ignoring_sigterm_is_killed(env: Env) -> None:
    env.write_config(worker={"kill_grace": 0.3})
    env.spawn("queuectl-worker", "--instance", "1")
    command = [
        "sh",
        "-c",
        f'trap "" TERM; echo $$ > "{env.pid_dir}/stubborn"; while :; do sleep 0.1; done',
    ]
    env.enqueue(command, id="stubborn", timeout=0.5, max_retries=0)
    pid = env.job_pid("stubborn")

    record = env.wait_for_state("stubborn", "dead")

    assert record["signal"] == 9, record
    assert "timed out after 0.5 s" in record["error"]
    assert process_state(pid) is None, "the job survived SIGKILL"


def test_job_that_daemonizes_does_not_hold_worker(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    pid_file = env.pid_dir / "daemon"
    # The daemon leaves the job's session and keeps its stdout open; the job
    # exits once the daemon has written its pid, so the daemon has left.
    script = (
        f"setsid sh -c 'echo $$ > \"{pid_file}\"; exec sleep 2' & "
        f'while [ ! -s "{pid_file}" ]; do sleep 0.01; done; echo started'
    )
    env.enqueue(["sh", "-c", script], id="forker")
    env.enqueue(["true"], id="next")

    record = env.wait_for_state("forker", "completed")
    env.wait_for_state("next", "completed")
    daemon = env.job_pid("daemon")

    assert env.store().get_output("forker")["stdout"] == "started\n"
    assert record["duration_ms"] < 1500, "the worker waited for the daemon's output"
    assert process_state(daemon) is not None, "the daemon should outlive its job"
    wait_until(lambda: process_state(daemon) is None, lambda: f"daemon {daemon} was never reaped")


def test_ids_in_use_conflict_in_every_state(env: Env) -> None:
    env.spawn("queuectl-worker", "--instance", "1")
    env.enqueue(["true"], id="finished")
    env.enqueue(env.pid_job("running", 30), id="running")
    env.enqueue(["true"], id="later", delay=3600)
    env.wait_for_state("finished", "completed")
    env.wait_for_state("running", "processing")
    # Heartbeats change these keys on their own while the check runs.
    moving = {f"{{{env.namespace}}}:{name}" for name in ("workers", "worker_info", "processing")}
    before = {key: value for key, value in env.dump().items() if key not in moving}

    results = {
        job_id: env.cli("enqueue", f'{{"id": "{job_id}", "command": ["true"]}}')
        for job_id in ("finished", "running", "later")
    }

    for job_id, result in results.items():
        assert result.returncode == CONFLICT, (job_id, result.stderr)
        assert f"job id '{job_id}' is already in use" in result.stderr
    assert {key: value for key, value in env.dump().items() if key not in moving} == before


def test_concurrent_enqueues_of_one_id_create_one_job(env: Env) -> None:
    spec = '{"id": "race", "command": ["echo", "one"]}'
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: env.cli("enqueue", spec), range(8)))

    codes = sorted(result.returncode for result in results)
    assert codes == [0] + [CONFLICT] * 7, [r.stderr for r in results]
    assert env.store().counts()["states"]["pending"] == 1
    assert os.path.exists(env.config_path)
