"""Plumbing shared by the three daemons: signals, sd_notify, the watchdog,
waiting for Redis, and the exit codes of ``main``.

Signal handlers only set flags.  ``signal.set_wakeup_fd`` writes to a pipe
that the worker includes in its ``select`` while a job runs, so a SIGTERM is
noticed at once rather than at the next timeout.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from types import FrameType

import sdnotify

from . import __version__, logs
from .config import Config, load
from .errors import ExitCode, QueueError, RedisFailure

log = logging.getLogger(__name__)

# Maximum sleep between attempts to reach Redis.
RECONNECT_MAX_S = 5.0


class Signals:
    """Flags set by signal handlers, read by the main loop."""

    def __init__(self) -> None:
        self.stop_count = 0
        self.reload = False
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_count += 1

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True

    @property
    def stopping(self) -> bool:
        return self.stop_count > 0

    def drain(self) -> None:
        """Empty the wake-up pipe after a select reported it readable."""
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass


class Notifier:
    """sd_notify messages and watchdog pings; silent without NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier()
        self._status = ""
        self.watchdog_interval_s = _watchdog_interval()
        self._next_ping = 0.0

    def send(self, message: str) -> None:
        self._notifier.notify(message)

    def status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self._notifier.notify(f"STATUS={text}")

    def ready(self, text: str) -> None:
        self._status = text
        self._notifier.notify(f"READY=1\nSTATUS={text}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask systemd to wait ``seconds`` more (plus a margin) for a start or stop."""
        margin_s = 10
        self._notifier.notify(f"EXTEND_TIMEOUT_USEC={round((seconds + margin_s) * 1e6)}")

    def watchdog(self) -> None:
        """Ping the watchdog if half its interval passed since the last ping."""
        if self.watchdog_interval_s is None:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self._notifier.notify("WATCHDOG=1")
            self._next_ping = now + self.watchdog_interval_s

    def max_sleep_s(self, default: float) -> float:
        """Return how long the main loop may block without missing a ping."""
        if self.watchdog_interval_s is None:
            return default
        return min(default, self.watchdog_interval_s)


def _watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def daemon_arguments(description: str, argv: Sequence[str] | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config", help="config file (default: $QUEUECTL_CONFIG or /etc/queuectl/queuectl.toml)"
    )
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def wait_for_redis(
    attempt: Callable[[], None],
    signals: Signals,
    notifier: Notifier,
    *,
    what: str,
    deadline: float | None = None,
) -> bool:
    """Call ``attempt`` until Redis responds; return False if asked to stop first.

    With a monotonic ``deadline``, a stop request no longer ends the wait: only
    the deadline or a second stop request does.
    """
    delay = 0.1
    last_logged = ""

    def keep_waiting() -> bool:
        if deadline is None:
            return not signals.stopping
        return signals.stop_count < 2 and time.monotonic() < deadline

    while keep_waiting():
        try:
            attempt()
            if last_logged:
                log.info("Redis answers again; %s resumes", what)
            return True
        except RedisFailure as error:
            notifier.status(f"waiting for Redis: {error}")
            # Waiting for Redis is not a failed start: keep systemd from timing it out.
            notifier.extend_timeout(RECONNECT_MAX_S)
            # Each distinct error is logged once, not on every retry.
            if str(error) != last_logged:
                log.warning("%s; retrying every %.0f s at most", error, RECONNECT_MAX_S)
                last_logged = str(error)
        notifier.watchdog()
        time.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_S)
    return False


def run_daemon(
    program: str, body: Callable[[Config, Signals, Notifier], None], config_arg: str | None
) -> int:
    """Load the config, set up logging and signals, and run ``body``.

    Returns the exit code: 0 after a clean stop, ``ExitCode.CONFIG`` when the
    config is invalid (systemd must not restart that), or the code of any
    other ``QueueError``.
    """
    faulthandler.enable()
    logs.setup(program=program)
    notifier = Notifier()
    try:
        config = load(config_arg)
    except QueueError as error:
        log.error("%s", error)
        notifier.status(f"invalid config: {error}")
        return int(error.exit_code)
    logs.set_level(config.log.level)
    signals = Signals()
    signals.install()
    try:
        body(config, signals, notifier)
    except QueueError as error:
        log.error("%s", error)
        return int(error.exit_code)
    finally:
        notifier.send("STOPPING=1")
    return int(ExitCode.OK)


def reload_config(config_arg: str | None, config: Config, notifier: Notifier) -> Config:
    """Reload the config after SIGHUP; keep the old one if the new one is invalid."""
    notifier.send(
        f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    )
    try:
        fresh = load(config_arg)
    except QueueError as error:
        log.error("reload failed, keeping the running config: %s", error)
        notifier.send("READY=1")
        return config
    logs.set_level(fresh.log.level)
    log.info("config reloaded from %s", fresh.path)
    notifier.send("READY=1")
    return fresh
