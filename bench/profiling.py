"""Where queuectl workers' time goes under load: py-spy profiles and Redis's command stats.

During a two-worker throughput run, py-spy samples each worker ``RATE_HZ``
times a second.  Worker 1 is sampled with idle samples kept (``--idle``), so
its samples measure wall time: time blocked in ``select`` while its job
runs, or in a socket read while Redis replies, counts as well as time
running Python code.  Worker 2 is sampled without them, so its samples
measure CPU time.  ``--nonblocking`` reads the stacks without pausing the
workers, which keeps the profiler from slowing the run much.

Each sample is put in one phase of the job cycle, by the innermost queuectl
function on its stack (``PHASES``).  A phase's share of the samples, times
the run's measured wall time or CPU time per job, gives its microseconds per
job.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from queuectld.keys import Keys

from .context import Context
from .procs import BenchError, RedisServer
from .systems import Queuectl
from .throughput import WARMUP_PER_WORKER, Throughput, measure_system

RATE_HZ = 100
# (phase, functions): a sample belongs to the phase of the innermost queuectl
# function on its stack that this table names.  Names are py-spy's:
# "module-path:qualified name".
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("spawn the job (posix_spawn)", ("runner.py:spawn",)),
    ("set up pipes, pidfd and selector", ("runner.py:Running.__init__",)),
    ("wait for the job to exit (poll)", ("runner.py:Running.pump",)),
    (
        "reap the job, drain and close its pipes",
        ("runner.py:Running._on_exit", "runner.py:Running._drain", "runner.py:Running._close"),
    ),
    (
        "record outcomes and claim the next jobs: one Redis call per batch",
        ("store.py:Store.finish_many", "store.py:Store.release"),
    ),
    ("claim when idle: one Redis call", ("store.py:Store.claim",)),
    ("wait for work (BLPOP on notify list)", ("store.py:Store.wait_for_work",)),
    (
        "build the outcome and log lines",
        (
            "worker.py:Worker._outcome",
            "worker.py:Worker._log_outcome",
            "runner.py:Tail.text",
            "runner.py:Tail.last_line",
        ),
    ),
    (
        "environment and allowlist check",
        ("worker.py:Worker._environment", "allowlist.py:rejection"),
    ),
    (
        "sd_notify status and watchdog",
        ("service.py:Notifier.status", "service.py:Notifier.watchdog"),
    ),
    (
        "reap orphans, worker heartbeat",
        ("runner.py:reap_orphans", "worker.py:Worker._beat_if_due", "worker.py:Worker._beat"),
    ),
]
OTHER = "other queuectl code"
OUTSIDE = "outside queuectl frames"


@dataclass
class ScriptCosts:
    """Server time of one EVALSHA, in microseconds, for scripts that isolate fixed costs."""

    empty_us: float
    prelude_us: float
    record_json_us: float
    record_bytes: int


@dataclass
class Profile:
    """A summarised py-spy profile of one worker, and Redis's per-command costs."""

    rate_hz: int
    samples: int
    jobs: int
    throughput: Throughput | None = None
    phases: list[tuple[str, int]] = field(default_factory=list)
    inclusive: list[tuple[str, int]] = field(default_factory=list)
    leaves: list[tuple[str, int]] = field(default_factory=list)
    # command -> (calls per job, microseconds per call), from INFO commandstats.
    redis_commands: dict[str, tuple[float, float]] = field(default_factory=dict)
    raw_path: Path | None = None
    script_costs: ScriptCosts | None = None
    # "wall" (idle samples kept) or "cpu" (only samples of a running thread).
    mode: str = "wall"
    instance: str = "1"

    # Microseconds per job that all samples together stand for (see measure_profile).
    total_us_per_job: float = 0.0

    def us_per_job(self, samples: int) -> float:
        return samples / max(1, self.samples) * self.total_us_per_job


class PySpyProbe:
    """Records two workers with py-spy during the timed part of a throughput run.

    Worker 1 is sampled with idle samples (wall time), worker 2 without them
    (CPU time).  At the end the probe counts the jobs each worker ran.
    """

    def __init__(self, py_spy: Path, folder: Path) -> None:
        self.py_spy = py_spy
        self.folder = folder
        self.log = folder / "py-spy.log"
        self.outputs = {"wall": folder / "worker-1-wall.txt", "cpu": folder / "worker-2-cpu.txt"}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.server: RedisServer | None = None
        self.stats_before: dict[str, dict[str, float]] = {}
        self.stats_after: dict[str, dict[str, float]] = {}
        self.jobs_by_instance: Counter[str] = Counter()
        self.sample_record = ""

    def start(self, leaders: list[subprocess.Popen[bytes]], server: RedisServer) -> None:
        self.server = server
        self.stats_before = server.client().info("commandstats")
        for leader, (mode, output) in zip(leaders, self.outputs.items(), strict=True):
            command = [str(self.py_spy), "record", "--pid", str(leader.pid)]
            command += ["--rate", str(RATE_HZ), "--format", "raw", "--output", str(output)]
            command += ["--nonblocking"] + (["--idle"] if mode == "wall" else [])
            with self.log.open("ab") as stream:
                self.processes.append(
                    subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
                )

    def stop(self) -> None:
        assert self.server is not None
        self.stats_after = self.server.client().info("commandstats")
        # py-spy writes its output when interrupted, as after Ctrl-C.
        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise BenchError(f"py-spy did not stop; see {self.log}") from None
        for output in self.outputs.values():
            if not output.exists():
                raise BenchError(f"py-spy wrote no profile; see {self.log}")
        self._count_jobs()

    def _count_jobs(self) -> None:
        """Count the jobs each worker instance ran, from the job records' ``worker`` field."""
        assert self.server is not None
        client = self.server.client()
        for raw in client.hvals(Keys("bench").jobs):
            record = json.loads(raw)
            worker = str(record.get("worker", ""))
            self.jobs_by_instance[worker.rsplit(":", 1)[-1]] += 1
            if record.get("state") == "completed":
                self.sample_record = raw.decode()


def measure_profile(ctx: Context, jobs: int) -> list[Profile]:
    """Profile two queuectl workers running ``jobs`` jobs: wall time of one, CPU of the other."""
    probe = PySpyProbe(ctx.peers_bin / "py-spy", ctx.folder)
    result = measure_system(ctx, Queuectl(), 2, jobs, probe=probe)
    # py-spy starts sampling a little after the clock starts, so samples cover
    # part of the run.  Shares of samples are therefore scaled to totals
    # measured over the whole run: the worker's wall time per job, and the CPU
    # per job of the worker processes from /proc.
    cpu_us_per_job = result.own_cpu_s * 1e6 / result.jobs
    profiles = []
    for instance, (mode, output) in zip(("1", "2"), probe.outputs.items(), strict=True):
        # The warm-up jobs are in the records too; they ran before the clock started.
        ran = max(1, probe.jobs_by_instance[instance] - WARMUP_PER_WORKER)
        profile = summarize(output.read_text(), RATE_HZ, ran)
        profile.mode, profile.instance = mode, instance
        profile.throughput = result
        profile.raw_path = output
        wall_us_per_job = result.seconds * 1e6 / ran
        profile.total_us_per_job = wall_us_per_job if mode == "wall" else cpu_us_per_job
        profiles.append(profile)
    profiles[0].redis_commands = _command_costs(probe.stats_before, probe.stats_after, jobs)
    profiles[0].script_costs = measure_script_costs(ctx, probe.sample_record)
    return profiles


def measure_script_costs(ctx: Context, record: str, calls: int = 5000) -> ScriptCosts:
    """Time scripts that isolate the fixed costs of every queuectl transition script.

    queuectl sends common.lua in front of every script body, so Redis runs
    that prelude on every call.  Most transitions also decode and encode the
    job's JSON record with cjson.
    """
    prelude = (resources.files("queuectld") / "lua" / "common.lua").read_text(encoding="utf-8")
    bodies = {
        "empty": "return 1",
        "prelude": prelude + "\nreturn 1",
        "record": prelude + "\nreturn #cjson.encode(cjson.decode(ARGV[1]))",
    }
    server = ctx.redis("script-costs")
    try:
        client = server.client()
        costs = {}
        for name, body in bodies.items():
            script = client.register_script(body)
            script(args=[record])
            before = client.info("commandstats").get("cmdstat_evalsha", {})
            for _ in range(calls):
                script(args=[record])
            after = client.info("commandstats")["cmdstat_evalsha"]
            usec = after["usec"] - before.get("usec", 0)
            costs[name] = usec / (after["calls"] - before.get("calls", 0))
        return ScriptCosts(costs["empty"], costs["prelude"], costs["record"], len(record))
    finally:
        ctx.processes.stop(server.process)


def summarize(raw: str, rate_hz: int, jobs: int) -> Profile:
    """Sum py-spy's raw output (``frame;frame;... count`` lines) into phases."""
    profile = Profile(rate_hz, 0, jobs)
    phases: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        profile.samples += count
        phases[_phase(frames)] += count
        leaves[_short(frames[-1])] += count
        for name in {_function(frame) for frame in frames}:
            inclusive[name] += count
    profile.phases = phases.most_common()
    profile.inclusive = inclusive.most_common(25)
    profile.leaves = leaves.most_common(15)
    return profile


def _phase(frames: list[str]) -> str:
    names = [_queuectl_name(frame) for frame in frames]
    for name in reversed(names):
        for phase, functions in PHASES:
            if name in functions:
                return phase
    return OTHER if any(names) else OUTSIDE


def _queuectl_name(frame: str) -> str:
    """Return "file.py:function" for a frame in queuectld, else an empty string."""
    function, path = _split(frame)
    if "queuectld/" not in path:
        return ""
    return f"{path.rsplit('/', 1)[1]}:{function}"


def _split(frame: str) -> tuple[str, str]:
    """Split a py-spy frame "function (path:line)" into function and path."""
    function, _, where = frame.partition(" (")
    return function, where.rstrip(")").rsplit(":", 1)[0]


def _function(frame: str) -> str:
    function, path = _split(frame)
    return f"{function} ({path})"


def _short(frame: str) -> str:
    function, _, where = frame.partition(" (")
    return f"{function} ({where.rstrip(')')})"


def _command_costs(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], jobs: int
) -> dict[str, tuple[float, float]]:
    costs = {}
    for name, stats in after.items():
        calls = stats["calls"] - before.get(name, {}).get("calls", 0)
        usec = stats["usec"] - before.get(name, {}).get("usec", 0)
        if calls > 0:
            costs[name.removeprefix("cmdstat_")] = (calls / jobs, usec / calls)
    return dict(sorted(costs.items(), key=lambda item: -item[1][0] * item[1][1]))


def render(profile: Profile) -> str:
    """Return the profile as text: phases, then the heaviest functions, then Redis costs."""
    kind = "wall time" if profile.mode == "wall" else "CPU time"
    lines = []
    run = profile.throughput
    if run is not None:
        lines.append(
            f"{kind[0].upper()}{kind[1:]} profile of queuectl worker {profile.instance} of "
            f"{run.workers}: {run.jobs:,} jobs in {run.seconds:.2f} s ({run.jobs_per_s:,.0f} "
            f"jobs/s while profiled), py-spy at {profile.rate_hz} Hz, {profile.samples:,} "
            f"samples, {profile.jobs:,} jobs on this worker.  Each phase's us/job is its share "
            f"of the samples times {profile.total_us_per_job:,.0f} us, the "
            + (
                "worker's wall time per job."
                if profile.mode == "wall"
                else "CPU per job of the worker processes (/proc) over the run."
            )
        )

    tables = (
        ("phase of the job cycle", profile.phases, 45),
        ("function, inclusive", profile.inclusive, 75),
        ("innermost frame", profile.leaves, 75),
    )
    for title, entries, width in tables:
        lines.append("")
        lines.append(f"{title + ' (' + kind + ')':{width}} {'share':>7} {'us/job':>8}")
        for name, samples in entries:
            lines.append(_profile_line(profile, name, samples, width))

    lines += _render_redis(profile)
    return "\n".join(lines) + "\n"


def _render_redis(profile: Profile) -> list[str]:
    lines = []
    if profile.redis_commands:
        lines.append("")
        lines.append(
            "Redis commands during the run (INFO commandstats; a script's inner commands "
            "are counted twice, in evalsha and on their own; the benchmark's own polling "
            "sends the zcard calls)"
        )
        lines.append(f"{'command':12} {'calls/job':>10} {'us/call':>9} {'us/job':>8}")
        for command, (calls, usec) in profile.redis_commands.items():
            lines.append(f"{command:12} {calls:10.2f} {usec:9.1f} {calls * usec:8.1f}")

    costs = profile.script_costs
    if costs is not None:
        lines.append("")
        lines.append("Fixed server time of a queuectl script (EVALSHA, us per call):")
        lines.append(f"  {'`return 1`':75} {costs.empty_us:6.1f}")
        lines.append(f"  {'common.lua prelude, then `return 1`':75} {costs.prelude_us:6.1f}")
        record = f"prelude, then cjson decode and encode of a {costs.record_bytes}-byte record"
        lines.append(f"  {record:75} {costs.record_json_us:6.1f}")
    return lines


def _profile_line(profile: Profile, name: str, samples: int, width: int) -> str:
    share = samples / max(1, profile.samples) * 100
    return f"{name[:width]:{width}} {share:6.1f}% {profile.us_per_job(samples):8.0f}"
