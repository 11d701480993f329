"""One chaos run, phase by phase, and its report.

The phases, in order:

1. Start Redis and the daemons.
2. Run one warm-up job per queue and record the idle keyspace as the baseline.
3. Enqueue the workload while the faults are injected.
4. Wait for every job to reach a final state.
5. Check runs, processes and keys.
6. Wait for retention to bring the keyspace back to the baseline.
7. Stop everything gracefully.

After a failed check, an exception, SIGTERM or Ctrl-C, ``cleanup`` still
stops every process the run started, by pid, and removes the run's folder.
Only a SIGKILL of the harness itself skips it.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from .checks import (
    describe_proc,
    living_job_processes,
)
from .cluster import BIN, Cluster, SetupError, check_programs
from .faults import Injector, expected_length_s, plan_faults
from .keyspace import Snapshot, key_sizes
from .monitor import Watcher
from .procs import ProcessTable, become_subreaper, send_group, wait_gone
from .settings import Settings
from .verdict import Verdict
from .workload import MARKER_NAME, Enqueuer, JobPlan, plan_jobs

# Exit code of a daemon whose config is invalid (queuectld.errors.ExitCode.CONFIG).
CONFIG_ERROR = 6


class RunTimeout(Exception):
    """A phase did not finish within its bound."""


class ChaosRun(Verdict):
    def __init__(
        self, settings: Settings, seed: int, *, keep: bool = False, kill_orphans: bool = True
    ) -> None:
        self.settings = settings
        self.seed = seed
        self.rng = random.Random(seed)
        self.keep = keep
        self.kill_orphans = kill_orphans
        self.started = time.monotonic()
        self.deadline = self.started + settings.run_timeout_s
        self.marker = f"{MARKER_NAME}=chaos-{seed}-{int(time.time())}"
        self.folder = Path(tempfile.mkdtemp(prefix="queuectl-chaos-", dir="/tmp"))
        self.table = ProcessTable()
        self.cluster = Cluster(settings, self.folder, self.table)
        self.report: dict[str, Any] = {
            "profile": settings.name,
            "seed": seed,
            "jobs": settings.jobs,
            "problems": [],
            "warnings": [],
        }
        self.problems: list[str] = self.report["problems"]
        self.warnings: list[str] = self.report["warnings"]
        self.stop_threads = threading.Event()
        self.watcher: Watcher | None = None
        self.enqueuer: Enqueuer | None = None
        self.injector: Injector | None = None
        self.plans: list[JobPlan] = []
        self.snapshot: Snapshot | None = None

    # --- output ---------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {text}", flush=True)
        with (self.cluster.logs / "chaos.log").open("a") as stream:
            stream.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.say(f"PROBLEM: {text}")

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.say(f"WARNING: {text}")

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise RunTimeout(f"the run exceeded its bound of {self.settings.run_timeout_s:g} s")

    # --- the run --------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        """Run every phase and return the report; its ``passed`` is True if every check held."""
        try:
            self.set_up()
            self.warm_up()
            self.inject_faults()
            self.settle()
            self.check_processes()
            self.check_keyspace()
            self.check_runs()
            self.wait_for_retention()
            self.stop_everything()
        except (SetupError, RunTimeout) as error:
            self.problem(str(error))
        finally:
            self.cleanup()
        self.report["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.report["passed"] = not self.problems
        return self.report

    def set_up(self) -> None:
        check_programs()
        if not become_subreaper():
            self.say("could not become a child subreaper; orphaned jobs go to PID 1")
        self.say(f"run folder {self.folder}, seed {self.seed}, profile {self.settings.name}")
        self.cluster.write_config()
        self.cluster.start_redis()
        self.cluster.start_daemons()
        reaper = threading.Thread(target=self._reap_adopted_loop, name="reaper", daemon=True)
        reaper.start()

        keys = self.cluster.keys
        self.wait_for(
            lambda: (
                self.cluster.client().zcard(keys.workers) == self.settings.workers
                and self.cluster.client().exists(keys.scheduler)
            ),
            "every worker to register and a scheduler to take the lock",
            30.0,
        )
        self.say(
            f"redis-server pid {self.cluster.redis.pid if self.cluster.redis else '?'} "
            f"(appendonly yes, appendfsync always), {self.settings.workers} workers, "
            f"2 schedulers, reaper every {self.settings.reaper_loop_s:g} s"
        )

    def _reap_adopted_loop(self) -> None:
        while not self.stop_threads.wait(0.5):
            self.table.reap_adopted()

    def wait_for(self, condition: Any, what: str, timeout_s: float) -> None:
        """Poll ``condition`` until true; raise ``RunTimeout`` naming ``what``."""
        limit = time.monotonic() + timeout_s
        while True:
            try:
                if condition():
                    return
            except redis.RedisError:
                # Redis may be loading or restarting; poll again.
                self.cluster.close_client()
            if time.monotonic() >= limit:
                raise RunTimeout(f"timed out after {timeout_s:g} s waiting for {what}")
            self.check_deadline()
            time.sleep(0.1)

    def cli(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
        return self.table.run(argv, env=self.cluster.environ(), timeout_s=timeout_s)

    def warm_up(self) -> None:
        """Run one job per queue and wait until retention removed it; then take the baseline."""
        for queue in self.settings.queues:
            spec = f'{{"id": "warmup-{queue}", "queue": "{queue}", "command": ["true"]}}'
            code, _, stderr = self.cli([str(BIN / "queuectl"), "enqueue", spec], 30.0)
            if code != 0:
                raise SetupError(f"warm-up enqueue failed with exit {code}: {stderr.strip()}")
        self.wait_for(
            lambda: self.cluster.client().hlen(self.cluster.keys.jobs) == 0,
            "the warm-up jobs to complete and expire",
            self.settings.retention_s + 20.0,
        )
        self.report["baseline"] = key_sizes(self.cluster.client())
        self.say(f"baseline keyspace: {_sizes_text(self.report['baseline'])}")

    def inject_faults(self) -> None:
        """Enqueue the workload while the two fault lanes run; wait for both lanes."""
        settings = self.settings
        lanes = plan_faults(settings, self.rng)
        length_s = max(expected_length_s(settings, plan) for plan in lanes.values())
        self.plans = plan_jobs(settings, self.rng, self.folder, self.marker.split("=", 1)[1])
        count = sum(len(plan) for plan in lanes.values())
        self.say(
            f"{len(self.plans)} jobs to enqueue over {length_s:.0f} s; "
            f"{count} faults planned in {len(lanes)} lanes over about {length_s:.0f} s"
        )

        self.watcher = Watcher(
            self.cluster.new_client,
            self.cluster.keys,
            settings.queues,
            settings.poll_s,
            settings.sample_every_s,
            self.started,
        )
        self.watcher.start()
        self.enqueuer = Enqueuer(
            self.plans, settings, self.rng, self.folder, self.cli, length_s, self.stop_threads
        )
        self.enqueuer.start()
        injector = Injector(
            self.cluster, settings, self.rng, self.started, self.say,
            kill_orphans=self.kill_orphans,
        )  # fmt: skip
        self.injector = injector
        threads = [
            threading.Thread(
                target=injector.run_lane, args=(plan, self.stop_threads), name=lane, daemon=True
            )
            for lane, plan in lanes.items()
        ]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            self.restart_crashed()
            self.progress()
            self.check_deadline()
            time.sleep(0.2)
        self.problems.extend(injector.problems)

    def restart_crashed(self) -> None:
        """Restart a daemon that exited by itself, as systemd's ``Restart=`` would."""
        cluster = self.cluster
        for role, process in cluster.daemons():
            if process.poll() is None:
                continue
            with cluster.lock:
                # A fault lane may have killed it and be about to restart it.
                if process.pid in cluster.expected_exit or not cluster.owns(process):
                    continue
                cluster.reaped(role, process)
            self.problem(
                f"{role} pid {process.pid} exited by itself with code {process.returncode}; "
                f"last log lines:\n{_tail(cluster.logs, process.pid)}"
            )
            if process.returncode == CONFIG_ERROR:
                # The units' RestartPreventExitStatus=: a restart cannot fix the config.
                raise SetupError(f"{role} rejected the config; see the problem above")
            if role.startswith("worker-"):
                cluster.start_worker(role.removeprefix("worker-"))
            elif role == "scheduler":
                cluster.start_scheduler()
            else:
                cluster.start_reaper()

    _last_progress = 0.0

    def progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress < 10.0 or self.enqueuer is None or self.watcher is None:
            return
        self._last_progress = now
        faults = len(self.injector.faults) if self.injector else 0
        self.say(
            f"progress: {len(self.enqueuer.stats.acknowledged)}/{len(self.plans)} enqueued, "
            f"{self.watcher.final_count()} final, {faults} faults injected"
        )

    def settle(self) -> None:
        """Wait for the enqueuer, then for every acknowledged job to reach a final state."""
        assert self.enqueuer is not None and self.watcher is not None
        self.say("faults done; waiting for every job to reach a final state")
        self.enqueuer.join(timeout=self.settings.settle_timeout_s)
        limit = time.monotonic() + self.settings.settle_timeout_s
        acknowledged = self.enqueuer.stats.acknowledged
        while time.monotonic() < limit:
            self.restart_crashed()
            self.progress()
            with self.watcher.lock:
                waiting = [
                    job_id for job_id in acknowledged if job_id not in self.watcher.result.finals
                ]
            if not waiting and not self.enqueuer.is_alive():
                break
            self.check_deadline()
            time.sleep(0.2)
        self.say(f"{self.watcher.final_count()} jobs final")

    def wait_for_retention(self) -> None:
        """Wait until retention has removed every job, then compare with the baseline."""
        baseline = self.report["baseline"]
        limit_s = self.settings.retention_s + 4 * self.settings.reaper_loop_s + 15.0
        self.say(f"waiting up to {limit_s:g} s for retention to empty the keyspace")
        sizes: dict[str, tuple[str, int]] = {}

        def back_to_baseline() -> bool:
            nonlocal sizes
            sizes = key_sizes(self.cluster.client())
            return bool(sizes == baseline)

        with contextlib.suppress(RunTimeout):
            self.wait_for(back_to_baseline, "the keyspace to return to its baseline", limit_s)
        self.report["after_retention"] = sizes
        self.report["keyspace_matches_baseline"] = sizes == baseline
        if sizes != baseline:
            self.problem(
                f"keyspace after retention: {_sizes_text(sizes)}; baseline: {_sizes_text(baseline)}"
            )

    def stop_everything(self) -> None:
        """Stop the daemons gracefully and Redis; each must exit 0 and leave nothing running."""
        exits = self.cluster.stop_daemons()
        self.report["daemon_exits"] = [f"{role} pid {pid}: {code}" for role, pid, code in exits]
        for role, pid, code in exits:
            if code != 0:
                self.problem(f"{role} pid {pid} exited with code {code} on SIGTERM")
        code = self.cluster.stop_redis()
        if code != 0:
            self.problem(f"redis-server exited with code {code} on SIGTERM")
        left = living_job_processes(self.marker.encode())
        for info in left:
            self.problem(
                f"job process still running after every daemon stopped: {describe_proc(info)}"
            )

    # --- cleanup ----------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop every process this run started, by pid, and remove its folder."""
        self.stop_threads.set()
        if self.watcher is not None:
            self.watcher.stop.set()
            self.watcher.join(timeout=10)
        if self.enqueuer is not None:
            self.enqueuer.join(timeout=70)
        try:
            self.cluster.stop_daemons()
            self.cluster.stop_redis()
        finally:
            for text in self.table.stop_all(10.0):
                self.problem(f"process still running at cleanup, stopped now: {text}")
            leftovers = living_job_processes(self.marker.encode())
            for pgid in {info.pgid for info in leftovers}:
                send_group(pgid, signal.SIGKILL)
            wait_gone([info.pid for info in leftovers], 5.0)
            self.table.reap_adopted()
            if self.keep:
                print(f"run folder kept: {self.folder}", flush=True)
            else:
                shutil.rmtree(self.folder, ignore_errors=True)


def _sizes_text(sizes: dict[str, tuple[str, int]]) -> str:
    total = sum(size for _, size in sizes.values())
    names = ", ".join(f"{key.split(':', 1)[1]}={size}" for key, (_, size) in sorted(sizes.items()))
    return f"{len(sizes)} keys, {total} entries ({names})"


def _tail(folder: Path, pid: int, lines: int = 15) -> str:
    """Return the last log lines of the daemon with ``pid`` (each line names its pid)."""
    found = []
    for path in sorted(folder.glob("*.log")):
        found += [
            line for line in path.read_text(errors="replace").splitlines() if f"[{pid}]" in line
        ]
    return "\n".join(found[-lines:]) or "(no log lines)"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so ``cleanup`` runs on either."""
    signal.signal(signal.SIGTERM, _interrupt)
