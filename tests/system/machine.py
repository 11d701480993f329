"""A booted Debian 12 container for the system tests, driven from the host.

Each ``Machine`` boots an overlay of the cached root (built by
``tests/system/build-root``) with ``systemd-nspawn --boot --private-network``,
so nothing a test does reaches the cached root or any network.  Commands
run inside with ``nsenter -t PID -a``, where PID is the container's init,
so they see the container's files, processes, systemd and loopback Redis.
Stopping the machine powers the container off through its init, unmounts
the overlay and deletes its upper layer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

# Environment of every command run inside the container.
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "DEBIAN_FRONTEND": "noninteractive",
}
# Where the folder of built packages is bind-mounted, read-only.
DEBS_INSIDE = "/srv/debs"
BOOT_TIMEOUT_S = 60.0
POWEROFF_TIMEOUT_S = 60.0

T = TypeVar("T")


class MachineError(AssertionError):
    """A command inside the container failed, or the container misbehaved."""


class Machine:
    """One booted container; every method runs its command inside it."""

    def __init__(self, base_root: Path, folder: Path, name: str, debs: Path) -> None:
        self.name = name
        self.folder = folder
        self.debs = debs
        self.root = folder / "root"
        self.console_log = folder / "console-1.log"
        self._mounted = False
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._boots = 0
        self.init_pid = 0

        upper, work = folder / "upper", folder / "work"
        for path in (self.root, upper, work):
            path.mkdir(parents=True)
        options = f"lowerdir={base_root},upperdir={upper},workdir={work}"
        _host("mount", "-t", "overlay", "overlay", "-o", options, str(self.root))
        self._mounted = True
        try:
            self._boot()
        except BaseException:
            self.stop()
            raise

    # --- life cycle ----------------------------------------------------------

    def _boot(self) -> None:
        self._boots += 1
        self.console_log = self.folder / f"console-{self._boots}.log"
        with open(self.console_log, "wb") as console:
            self._nspawn = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    "--console=read-only",
                    f"--machine={self.name}",
                    f"--bind-ro={self.debs}:{DEBS_INSIDE}",
                    "-D",
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        self.init_pid = self._find_init()
        self._wait_booted()

    def _find_init(self) -> int:
        """Return the pid of the container's init: the nspawn child that is
        pid 1 of its own pid namespace."""
        assert self._nspawn is not None
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise MachineError(
                    f"systemd-nspawn exited with {self._nspawn.returncode} before the "
                    f"container booted; see {self.console_log}"
                )
            for child in _children(self._nspawn.pid):
                if _namespace_pids(child)[-1:] == [1]:
                    return child
            time.sleep(0.05)
        raise MachineError(f"no container init appeared within {BOOT_TIMEOUT_S:g} s")

    def _wait_booted(self) -> None:
        # "offline" means systemd does not accept connections yet.
        def probe() -> str | None:
            result = self.run("systemctl", "is-system-running", "--wait", check=False)
            state = result.stdout.strip()
            return None if state in ("offline", "") else state

        state, _ = self.wait_for(probe, "the container to boot", BOOT_TIMEOUT_S)
        if state not in ("running", "degraded"):
            raise MachineError(f"container did not finish booting: state {state!r}")
        if state == "degraded":
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
            raise MachineError(f"container booted degraded; failed units:\n{failed}")

    def _power_off(self) -> None:
        """Halt the container through its init and wait for nspawn to exit."""
        nspawn = self._nspawn
        if nspawn is None or nspawn.poll() is not None:
            return
        try:
            if self.init_pid <= 0:
                raise ProcessLookupError
            os.kill(self.init_pid, signal.SIGRTMIN + 3)
            nspawn.wait(timeout=POWEROFF_TIMEOUT_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            # Killing pid 1 of the namespace kills every process in it.
            if self.init_pid > 0:
                _kill_quietly(self.init_pid)
            nspawn.terminate()
            nspawn.wait(timeout=30)
        self.init_pid = 0

    def reboot(self) -> None:
        """Power the container off cleanly and boot it again from the same files."""
        self._power_off()
        self._boot()

    def stop(self) -> None:
        """Power the container off, then remove the overlay."""
        self._power_off()
        if self._mounted:
            _host("umount", str(self.root))
            self._mounted = False
        _host(
            "rm", "-rf", "--one-file-system", str(self.folder / "upper"), str(self.folder / "work")
        )

    # --- commands ------------------------------------------------------------

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container as root; raise unless it exits 0 (with check)."""
        environment = [f"{k}={v}" for k, v in {**INSIDE_ENV, **(env or {})}.items()]
        command = ["nsenter", "-t", str(self.init_pid), "-a", "--", "env", "-i", *environment]
        result = subprocess.run(
            [*command, *argv],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise MachineError(
                f"`{' '.join(argv)}` exited {result.returncode} inside {self.name}\n"
                f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
            )
        return result

    def sh(self, script: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, **options)

    def write_file(self, path: str, text: str, mode: str = "0644") -> None:
        self.run("install", "-D", "-m", mode, "/dev/stdin", path, input=text)

    def queuectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("queuectl", *args, check=check)

    def queuectl_json(self, *args: str) -> Any:
        return json.loads(self.queuectl(*args, "--json").stdout)

    def job(self, job_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.queuectl_json("show", job_id)
        return record

    def enqueue(self, *args: str) -> str:
        """Enqueue one job with ``queuectl enqueue ARGS``; return its id."""
        return self.queuectl("enqueue", *args).stdout.strip()

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """Return the named properties of ``unit`` from ``systemctl show``."""
        arguments = [f"--property={name}" for name in properties]
        output = self.systemctl("show", unit, *arguments).stdout
        values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
        return {name: values.get(name, "") for name in properties}

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "--quiet", *args).stdout

    def install_package(self, deb: str) -> subprocess.CompletedProcess[str]:
        """``apt-get install`` a package from the bind-mounted folder of built packages."""
        return self.run("apt-get", "install", "--yes", f"{DEBS_INSIDE}/{deb}", timeout=300)

    # --- waiting -------------------------------------------------------------

    def wait_for(
        self, probe: Callable[[], T | None], what: str, timeout_s: float = 60.0
    ) -> tuple[T, float]:
        """Call ``probe`` until it returns something other than None or False.

        Returns that value and the seconds it took, from a monotonic clock.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        last: T | None = None
        while True:
            last = probe()
            if last is not None and last is not False:
                return last, time.monotonic() - started
            if time.monotonic() >= deadline:
                raise MachineError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(0.1)

    def wait_job(
        self, job_id: str, states: tuple[str, ...], timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Wait until job ``job_id`` is in one of ``states``; return its record."""

        def probe() -> dict[str, Any] | None:
            record = self.job(job_id)
            return record if record.get("state") in states else None

        try:
            record, _ = self.wait_for(probe, f"job {job_id} to be {'/'.join(states)}", timeout_s)
        except MachineError as error:
            raise MachineError(f"{error}; last record: {self.job(job_id)}") from None
        return record

    def wait_active(self, unit: str, timeout_s: float = 60.0) -> dict[str, str]:
        """Wait until ``unit`` is active; return its state, main pid and status text."""

        def probe() -> dict[str, str] | None:
            state = self.show(unit, "ActiveState", "SubState", "MainPID", "StatusText")
            return state if state["ActiveState"] == "active" else None

        state, _ = self.wait_for(probe, f"{unit} to be active", timeout_s)
        return state


def _host(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MachineError(
            f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()}"
        )


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return children


def _namespace_pids(pid: int) -> list[int]:
    """Return the pid of ``pid`` in each nested pid namespace, outermost first."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return []
    match = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
    return [int(n) for n in match.group(1).split()] if match else []


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
