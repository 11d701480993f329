#!/usr/bin/env python3
"""Run queuectl end to end on real input, then check every outcome.

The demo starts a private redis-server on a unix socket, the scheduler,
three detached workers (`queuectl worker start --count 3`) and a reaper
loop.  It generates log files, enqueues the batch in batch.jsonl.in
(compressions, a checksum at high priority, a job that fails once, one that
always fails, one that times out, one whose program is missing, a delayed
one), then SIGKILLs the worker running a long job and shows the job
recovered.  It prints `queuectl status` and `queuectl dlq list`, stops
everything it started, and exits 1 if any outcome differs from the
expected one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LOG_FILES = 12
LOG_LINES = 120_000


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


class Demo:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.config = folder / "queuectl.toml"
        self.socket = folder / "redis.sock"
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
        self.env["QUEUECTL_CONFIG"] = str(self.config)

    # --- setting up --------------------------------------------------------

    def start_redis(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            sys.exit("demo: redis-server is not installed; run `make demo`, which installs it")
        process = subprocess.Popen(
            [
                server,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        self.daemons.append(process)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline:
                sys.exit("demo: redis-server did not start within 10 s")
            time.sleep(0.05)
        print(f"redis-server pid {process.pid} on {self.socket} (appendonly yes)")

    def write_config(self) -> None:
        self.config.write_text(
            "[redis]\n"
            f'url = "unix://{self.socket}"\n'
            'namespace = "demo"\n'
            "[jobs]\n"
            "backoff_base = 2\n"
            "backoff_max = 4\n"
            "[worker]\n"
            "heartbeat_interval = 1\n"
            "lease_timeout = 3\n"
            "stop_timeout = 10\n"
            f'run_dir = "{self.folder / "run"}"\n'
            # `make demo` runs as root on a fresh machine.
            "allow_root = true\n"
        )
        print(f"config {self.config}: lease timeout 3 s, heartbeat 1 s")

    def generate_logs(self) -> None:
        self.data.mkdir()
        rng = random.Random(7)
        paths = ["/", "/login", "/api/orders", "/api/items", "/static/app.js"]
        for number in range(1, LOG_FILES + 1):
            lines = []
            for i in range(LOG_LINES):
                stamp = f"2026-12-04T10:{i // 6000 % 60:02d}:{i // 100 % 60:02d}Z"
                client = f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"
                status = rng.choice((200, 200, 304, 404, 500))
                size = rng.randrange(100, 90000)
                lines.append(f"{stamp} {client} GET {rng.choice(paths)} {status} {size}\n")
            (self.data / f"app-{number:02d}.log").write_text("".join(lines))
        size = sum(p.stat().st_size for p in self.data.iterdir()) / 1e6
        print(f"generated {LOG_FILES} log files, {size:.0f} MB, in {self.data}")

    def start_daemons(self) -> None:
        for program, args in (("queuectl-scheduler", []), ("queuectl-reaper", ["--loop", "1"])):
            log = (self.folder / f"{program}.log").open("wb")
            process = subprocess.Popen(
                [str(BIN / program), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            self.daemons.append(process)
            print(f"{program} pid {process.pid}")
        self.cli("worker", "start", "--count", "3", show=True)

    # --- running ------------------------------------------------------------

    def cli(self, *args: str, show: bool = False, check: bool = True) -> str:
        result = subprocess.run(
            [str(BIN / "queuectl"), *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if show:
            print(f"$ queuectl {' '.join(args)}")
            print(result.stdout + result.stderr, end="")
        if check and result.returncode != 0:
            sys.exit(f"demo: queuectl {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result.stdout

    def job(self, job_id: str) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.cli("show", job_id, "--json"))
        return record

    def enqueue_batch(self) -> list[str]:
        template = (EXAMPLES / "batch.jsonl.in").read_text()
        batch = self.folder / "batch.jsonl"
        batch.write_text(
            template.replace("@DATA@", str(self.data)).replace("@EXAMPLES@", str(EXAMPLES))
        )
        ids = self.cli("enqueue", "--file", str(batch)).split()
        print(f"$ queuectl enqueue --file {batch.name}\n{len(ids)} jobs enqueued")
        return ids

    def kill_worker_mid_job(self) -> float:
        """Start a long job, SIGKILL the worker running it, restart workers."""
        self.cli(
            "enqueue",
            "--id",
            "slow-archive",
            "--priority",
            "20",
            "--",
            "sh",
            "-c",
            'sleep 3 && tar -czf "$1" -C "$2" app-01.log',
            "sh",
            str(self.folder / "archive.tar.gz"),
            str(self.data),
        )
        record = self.wait(lambda: self.job("slow-archive"), lambda r: r["state"] == "processing")
        workers = json.loads(self.cli("worker", "list", "--json"))
        pid = next(w["pid"] for w in workers if w["name"] == record["worker"])
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        print(f"slow-archive runs on worker {record['worker']}; sent SIGKILL to its pid {pid}")
        self.cli("worker", "start", "--count", "3", show=True)
        return killed_at

    def wait(
        self, read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = 90
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = read()
            if done(value):
                return value
            if time.monotonic() > deadline:
                sys.exit(f"demo: gave up waiting after {timeout_s:.0f} s; last value: {value}")
            time.sleep(0.1)

    def wait_until_settled(self, ids: list[str]) -> None:
        final = {"completed", "dead", "cancelled"}

        def unsettled() -> list[str]:
            return [i for i in ids if self.job(i)["state"] not in final]

        self.wait(unsettled, lambda left: not left)

    # --- stopping -----------------------------------------------------------

    def stop(self) -> None:
        if (self.folder / "run").exists():
            self.cli("worker", "stop", show=True, check=False)
        for process in reversed(self.daemons):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def check_outcomes(
    demo: Demo, killed_at: float, archive_done_at: float
) -> list[tuple[str, str, bool]]:
    """Compare every job with what the demo expects; return (job, finding, ok) rows."""
    rows: list[tuple[str, str, bool]] = []

    def expect(job_id: str, finding: str, ok: bool) -> None:
        rows.append((job_id, finding, ok))

    compress = [demo.job(f"compress-{n:02d}") for n in range(1, LOG_FILES + 1)]
    for record in compress:
        gz = demo.data / f"{record['command'][-1].rsplit('/', 1)[1]}.gz"
        expect(
            record["id"],
            f"{record['state']}, {gz.name} exists: {gz.exists()}",
            record["state"] == "completed" and gz.exists(),
        )

    checksum = demo.job("checksum-all")
    lines = checksum["output"].get("stdout", "").splitlines()
    later = [r["id"] for r in compress if r["started_ms"] > checksum["started_ms"]]
    expect(
        "checksum-all",
        f"{checksum['state']}, {len(lines)} checksums, priority 10 started "
        f"before {len(later)} earlier priority-0 jobs",
        checksum["state"] == "completed" and len(lines) == 4 and len(later) > 0,
    )

    flaky = demo.job("flaky-mount")
    expect(
        "flaky-mount",
        f"{flaky['state']} after {flaky['attempts']} attempts",
        flaky["state"] == "completed" and flaky["attempts"] == 2,
    )

    broken = demo.job("broken-report")
    expect(
        "broken-report",
        f"{broken['state']} after {broken['attempts']} attempts: {broken.get('error')}",
        broken["state"] == "dead" and broken["attempts"] == 2,
    )

    hung = demo.job("hung-export")
    expect(
        "hung-export",
        f"{hung['state']}: {hung.get('error')}",
        hung["state"] == "dead" and "timed out" in str(hung.get("error")),
    )

    missing = demo.job("missing-tool")
    expect(
        "missing-tool",
        f"{missing['state']} after {missing['attempts']} attempt: {missing.get('error')}",
        missing["state"] == "dead"
        and missing["attempts"] == 1
        and "command not found" in str(missing.get("error")),
    )

    delayed = demo.job("nightly-rotate")
    waited = (delayed["started_ms"] - delayed["created_ms"]) / 1000
    expect(
        "nightly-rotate",
        f"{delayed['state']}, started {waited:.2f} s after enqueue (delay 3 s)",
        delayed["state"] == "completed" and waited >= 3,
    )

    archive = demo.job("slow-archive")
    outcomes = [entry["outcome"] for entry in archive.get("history", [])]
    expect(
        "slow-archive",
        f"{archive['state']}, attempts {outcomes}, completed "
        f"{archive_done_at - killed_at:.1f} s after the SIGKILL",
        archive["state"] == "completed"
        and outcomes[:1] == ["lost"]
        and outcomes[-1] == "completed",
    )
    return rows


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="queuectl-demo-"))
    demo = Demo(folder)
    try:
        say("starting Redis, the scheduler, a reaper loop and three workers")
        demo.start_redis()
        demo.write_config()
        demo.generate_logs()
        demo.start_daemons()

        say("enqueueing the batch")
        ids = demo.enqueue_batch()

        say("killing a worker in the middle of a job")
        killed_at = demo.kill_worker_mid_job()
        demo.wait(lambda: demo.job("slow-archive"), lambda r: r["state"] == "completed")
        archive_done_at = time.monotonic()
        print(f"slow-archive completed {archive_done_at - killed_at:.1f} s after the SIGKILL")
        demo.cli("show", "slow-archive", show=True)

        say("waiting for every job to settle")
        demo.wait_until_settled([*ids, "slow-archive"])
        demo.cli("status", show=True)
        demo.cli("dlq", "list", show=True)

        say("checking each outcome")
        rows = check_outcomes(demo, killed_at, archive_done_at)
        for job_id, finding, ok in rows:
            print(f"{'ok  ' if ok else 'FAIL'}  {job_id:15} {finding}")
        failures = [row for row in rows if not row[2]]
    finally:
        say("stopping everything the demo started")
        demo.stop()
        shutil.rmtree(folder, ignore_errors=True)

    if failures:
        print(
            f"\ndemo FAILED: {len(failures)} of {len(rows)} outcomes differ from the expected ones"
        )
        return 1
    print(f"\ndemo passed: all {len(rows)} outcomes are as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
