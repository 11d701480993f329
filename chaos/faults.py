"""The faults a chaos run injects, one at a time, at random intervals.

``kill_worker``
    SIGKILL a worker, preferably one running a job.  Then, as systemd does
    for a unit with ``KillMode=mixed`` whose main process died, SIGKILL what
    is left of it: its job processes, found as its descendants while it was
    frozen with SIGSTOP.  After a restart delay, start the same ``--instance``
    again, which takes back the job its predecessor held.
``kill_scheduler``
    SIGKILL the scheduler that holds the leader lock and start a new one
    (as systemd's ``Restart=`` does).  The standby takes over once the lock
    expires.
``stop_worker``
    SIGSTOP a worker for longer than the lease timeout, then SIGCONT.  Its
    job keeps running meanwhile, since only the worker is stopped.
``restart_redis``
    SIGTERM redis-server, wait until it exits, then start it again on the
    same socket and data folder, so it reloads its append-only file.
``pause_redis``
    SIGSTOP redis-server for longer than every client's socket timeout, then
    SIGCONT.
``term_worker``
    SIGTERM a worker (a graceful stop, as ``systemctl restart`` does) and
    start it again.  A job that outlives ``worker.stop_timeout`` is put back
    with outcome ``requeue``.

Faults run in two lanes at once, each with its own random pauses: one for
the worker faults, one for the scheduler and Redis.  So faults also
overlap, for example a worker killed while Redis is down.

Each fault records the jobs it affected: the job the worker held, the jobs
running while Redis was down, or the delayed jobs due while the scheduler
was changing hands.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from .cluster import Cluster
from .procs import descendants, send, send_group
from .settings import Settings


@dataclass
class Fault:
    """One injected fault.  ``at_ms`` is wall-clock time, the clock Redis uses here."""

    kind: str
    at_s: float
    at_ms: int
    target: str = ""
    worker: str = ""
    lasted_s: float = 0.0
    affected: list[str] = field(default_factory=list)
    note: str = ""


WORKER_FAULTS = ("kill_worker", "stop_worker", "term_worker")
SYSTEM_FAULTS = ("kill_scheduler", "restart_redis", "pause_redis")
Plan = list[tuple[float, str]]


def plan_faults(settings: Settings, rng: random.Random) -> dict[str, Plan]:
    """Return, per lane, (pause before it, kind) of each fault in a random order."""
    lanes = {}
    for lane, kinds in (("workers", WORKER_FAULTS), ("system", SYSTEM_FAULTS)):
        planned = [kind for kind in kinds for _ in range(settings.faults_per_kind)]
        rng.shuffle(planned)
        lanes[lane] = [(rng.uniform(*settings.gap_s), kind) for kind in planned]
    return lanes


def expected_length_s(settings: Settings, plan: Plan) -> float:
    """Estimate how long injecting one lane's ``plan`` takes."""

    def mean(bounds: tuple[float, float]) -> float:
        return (bounds[0] + bounds[1]) / 2

    restart = mean(settings.restart_delay_s)
    lengths = {
        "kill_worker": restart + 0.2,
        "kill_scheduler": settings.lock_timeout_s,
        "stop_worker": mean(settings.stop_worker_s),
        "restart_redis": mean(settings.redis_down_s) + 0.5,
        "pause_redis": mean(settings.pause_redis_s),
        "term_worker": settings.stop_timeout_s + restart,
    }
    return sum(gap + lengths[kind] for gap, kind in plan)


def held_text(jobs: list[str]) -> str:
    """Describe the jobs a worker held, for a fault's note."""
    if not jobs:
        return "no job"
    if len(jobs) <= 3:
        return ", ".join(jobs)
    return f"{jobs[0]} and {len(jobs) - 1} more jobs"


def explains_loss(fault: Fault, instance: str, started_ms: int, ended_ms: int) -> bool:
    """Return True if ``fault`` can explain an attempt of worker ``instance`` ending lost.

    A kill or a stop of a worker explains the attempts it held.  A graceful
    stop (``term_worker``) explains none, because it must record the outcome
    or put the job back without counting the attempt.  A Redis fault
    explains any attempt that overlaps it, or began up to 10 s after it: a
    claim sent before a pause can run when Redis resumes, and its reply is
    then lost.  A scheduler fault explains none.
    """
    if fault.at_ms > ended_ms:
        return False
    if fault.kind in ("kill_worker", "stop_worker"):
        return fault.worker == instance and fault.at_ms >= started_ms - 1000
    if fault.kind in ("restart_redis", "pause_redis"):
        return fault.at_ms >= started_ms - 10_000 - int(fault.lasted_s * 1000)
    return False


class Injector:
    """Injects faults into a running cluster and records each one."""

    def __init__(
        self,
        cluster: Cluster,
        settings: Settings,
        rng: random.Random,
        started: float,
        say: Callable[[str], None],
        *,
        kill_orphans: bool = True,
    ) -> None:
        self.cluster = cluster
        self.settings = settings
        self.rng = rng
        self.started = started
        self.say = say
        self.kill_orphans = kill_orphans
        self.host = socket.gethostname()
        self.faults: list[Fault] = []
        self.problems: list[str] = []
        self.orphans_killed = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def run_lane(self, plan: Plan, stop: threading.Event) -> None:
        """Inject the faults of one lane in order; a harness error ends the lane."""
        try:
            for gap, kind in plan:
                if stop.wait(gap):
                    return
                self.inject(kind)
        except Exception as error:
            self._problem(f"fault injection failed: {type(error).__name__}: {error}")
            raise

    def inject(self, kind: str) -> Fault:
        handler = getattr(self, f"_{kind}")
        fault = Fault(kind, 0.0, 0)
        began = time.monotonic()
        handler(fault)
        fault.lasted_s = time.monotonic() - began
        with self._lock:
            self.faults.append(fault)
        affected = ", ".join(fault.affected[:3]) + (" ..." if len(fault.affected) > 3 else "")
        self.say(
            f"{kind:<14} {fault.target}: {fault.note}"
            + (f"; affected {len(fault.affected)}: {affected}" if fault.affected else "")
        )
        return fault

    def _mark(self, fault: Fault) -> None:
        fault.at_s = time.monotonic() - self.started
        fault.at_ms = int(time.time() * 1000)

    # --- reading Redis ---------------------------------------------------------

    def _read(self, read: Callable[[redis.Redis], Any], default: Any) -> Any:
        """Run a read on this lane's own client; retry once on a fresh connection."""
        for _ in range(2):
            client = getattr(self._local, "client", None)
            if client is None:
                client = self._local.client = self.cluster.new_client()
            try:
                return read(client)
            except redis.RedisError:
                client.close()
                client.connection_pool.disconnect()
                self._local.client = None
        return default

    def _problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def _held(self) -> dict[str, list[str]]:
        """Return instance -> ids of the jobs held by each worker of this host holding any."""
        held = self._read(lambda client: client.hgetall(self.cluster.keys.held), {})
        found = {}
        for name, entry in held.items():
            host, _, instance = name.rpartition(":")
            if host == self.host:
                found[instance] = entry.split()[0::2]
        return found

    def _running(self) -> list[str]:
        ids = self._read(lambda client: client.zrange(self.cluster.keys.processing, 0, -1), [])
        return list(ids)

    def _pick_worker(self, *, prefer_long: bool = False) -> str:
        """Pick a live worker, preferring one that runs a job.

        With ``prefer_long``, prefer one whose job outlives the lease timeout
        (a ``long`` job of the workload), so the fault hits a running command.
        """
        live = [
            name
            for name, process in self.cluster.workers.items()
            if process.poll() is None and process.pid not in self.cluster.stopped
        ]
        held = {name: jobs for name, jobs in self._held().items() if name in live}
        busy = list(held)
        if prefer_long:
            long_ones = [n for n, jobs in held.items() if any(j.endswith("-long") for j in jobs)]
            busy = long_ones or busy
        return self.rng.choice(busy or live)

    # --- worker faults -------------------------------------------------------

    def _kill_worker(self, fault: Fault) -> None:
        instance = self._pick_worker()
        process = self.cluster.workers[instance]
        fault.target = f"worker {instance} (pid {process.pid})"
        fault.worker = instance
        # Freeze it first, so it cannot start a job between the look and the kill.
        send(process.pid, signal.SIGSTOP)
        time.sleep(0.05)
        jobs = self._held().get(instance, [])
        fault.affected = jobs
        leftovers = descendants(process.pid)

        self._mark(fault)
        self.cluster.expected_exit.add(process.pid)
        send(process.pid, signal.SIGKILL)
        process.wait()
        self.cluster.reaped(f"worker-{instance}", process)
        killed = 0
        if self.kill_orphans:
            for pgid in sorted({info.pgid for info in leftovers}):
                killed += send_group(pgid, signal.SIGKILL)
        self.orphans_killed += killed

        delay = self.rng.uniform(*self.settings.restart_delay_s)
        time.sleep(delay)
        fresh = self.cluster.start_worker(instance)
        fault.note = (
            f"held {held_text(jobs)}; {killed} job process groups killed with it; "
            f"restarted after {delay:.1f} s as pid {fresh.pid}"
        )

    def _stop_worker(self, fault: Fault) -> None:
        instance = self._pick_worker(prefer_long=self.rng.random() < 0.5)
        process = self.cluster.workers[instance]
        fault.target = f"worker {instance} (pid {process.pid})"
        fault.worker = instance
        hold = self.rng.uniform(*self.settings.stop_worker_s)
        self._mark(fault)
        send(process.pid, signal.SIGSTOP)
        self.cluster.stopped.add(process.pid)
        time.sleep(0.05)
        jobs = self._held().get(instance, [])
        fault.affected = jobs
        time.sleep(hold)
        send(process.pid, signal.SIGCONT)
        self.cluster.stopped.discard(process.pid)
        fault.note = f"held {held_text(jobs)}; stopped for {hold:.1f} s"

    def _term_worker(self, fault: Fault) -> None:
        instance = self._pick_worker(prefer_long=True)
        process = self.cluster.workers[instance]
        fault.target = f"worker {instance} (pid {process.pid})"
        fault.worker = instance
        jobs = self._held().get(instance, [])
        fault.affected = jobs

        # systemd waits TimeoutStopSec= for a graceful stop; here a bound well above it.
        limit = self.settings.stop_timeout_s + self.settings.kill_grace_s + 10.0
        self._mark(fault)
        self.cluster.expected_exit.add(process.pid)
        send(process.pid, signal.SIGTERM)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            send(process.pid, signal.SIGKILL)
            code = process.wait()
            self._problem(
                f"worker {instance} (pid {process.pid}) did not stop within {limit:g} s "
                "of SIGTERM; killed it"
            )
        self.cluster.reaped(f"worker-{instance}", process)
        if code != 0:
            self._problem(
                f"worker {instance} (pid {process.pid}) exited with code {code} after SIGTERM"
            )

        stopped_s = time.monotonic() - self.started - fault.at_s
        delay = self.rng.uniform(*self.settings.restart_delay_s)
        time.sleep(delay)
        fresh = self.cluster.start_worker(instance)
        fault.note = (
            f"held {held_text(jobs)}; exited {code} after {stopped_s:.1f} s; "
            f"restarted after {delay:.1f} s as pid {fresh.pid}"
        )

    # --- scheduler -------------------------------------------------------------

    def _leader_token(self) -> str | None:
        token = self._read(lambda client: client.get(self.cluster.keys.scheduler), None)
        return str(token) if token else None

    def _kill_scheduler(self, fault: Fault) -> None:
        deadline = time.monotonic() + 2 * self.settings.lock_timeout_s + 5
        leader = None
        token = None
        while leader is None and time.monotonic() < deadline:
            token = self._leader_token()
            if token is not None:
                pid = int(token.split(":")[1])
                leader = next((p for p in self.cluster.schedulers if p.pid == pid), None)
            if leader is None:
                time.sleep(0.1)
        if leader is None:
            fault.target = "no scheduler"
            fault.note = "no running scheduler held the leader lock; nothing killed"
            self._problem(f"kill_scheduler: no leader found (lock token {token})")
            return
        fault.target = f"scheduler pid {leader.pid}"

        # Jobs due while the lock is still held by the dead leader wait for the takeover.
        now_ms = int(time.time() * 1000)
        window_ms = int(self.settings.lock_timeout_s * 1000) + 1000
        keys = self.cluster.keys

        def due_soon(client: redis.Redis) -> list[str]:
            return [
                job_id
                for key in (keys.scheduled, keys.failed)
                for job_id in client.zrangebyscore(key, now_ms, now_ms + window_ms)
            ]

        fault.affected = self._read(due_soon, [])

        self._mark(fault)
        self.cluster.expected_exit.add(leader.pid)
        send(leader.pid, signal.SIGKILL)
        leader.wait()
        self.cluster.reaped("scheduler", leader)
        fresh = self.cluster.start_scheduler()

        took_over = None
        limit = time.monotonic() + self.settings.lock_timeout_s + 10
        while time.monotonic() < limit:
            current = self._leader_token()
            if current is not None and current != token:
                took_over = time.monotonic() - self.started - fault.at_s
                break
            time.sleep(0.05)
        if took_over is None:
            self._problem(
                f"kill_scheduler at {fault.at_s:.1f} s: no scheduler took the lock "
                f"within {self.settings.lock_timeout_s + 10:g} s"
            )
            fault.note = f"new scheduler pid {fresh.pid}; no takeover seen"
        else:
            fault.note = f"new scheduler pid {fresh.pid}; lock taken over after {took_over:.1f} s"

    # --- Redis -------------------------------------------------------------------

    def _restart_redis(self, fault: Fault) -> None:
        assert self.cluster.redis is not None
        fault.target = f"redis-server pid {self.cluster.redis.pid}"
        fault.affected = self._running()
        self._mark(fault)
        code = self.cluster.stop_redis()
        if code != 0:
            self._problem(f"redis-server exited with code {code} after SIGTERM")
        down = self.rng.uniform(*self.settings.redis_down_s)
        time.sleep(down)
        load_s = self.cluster.start_redis()
        assert self.cluster.redis is not None
        fault.note = (
            f"exited {code}; down {down:.1f} s; restarted as pid {self.cluster.redis.pid}, "
            f"serving after {load_s:.1f} s"
        )

    def _pause_redis(self, fault: Fault) -> None:
        assert self.cluster.redis is not None
        pid = self.cluster.redis.pid
        fault.target = f"redis-server pid {pid}"
        fault.affected = self._running()
        hold = self.rng.uniform(*self.settings.pause_redis_s)
        self._mark(fault)
        send(pid, signal.SIGSTOP)
        self.cluster.stopped.add(pid)
        time.sleep(hold)
        send(pid, signal.SIGCONT)
        self.cluster.stopped.discard(pid)
        fault.note = f"stopped for {hold:.1f} s"
