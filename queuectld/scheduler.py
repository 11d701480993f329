"""queuectl-scheduler: moves due delayed jobs and retry backoffs to their queues.

One scheduler per namespace is active: the holder of the leader lock.  Others
stand by and take over when the lock expires, ``scheduler.lock_timeout``
seconds after the leader stopped renewing it.  The leader sleeps until the
next due time or until an enqueue publishes a wake-up, so a delayed job
becomes pending within milliseconds of its time.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from .config import Config
from .connection import translated
from .errors import RedisFailure
from .service import Notifier, Signals, daemon_arguments, reload_config, run_daemon, wait_for_redis
from .store import Store

log = logging.getLogger(__name__)

# Maximum time the loop sleeps, so it notices signals and renews its lock.
MAX_SLEEP_S = 1.0


class Scheduler:
    def __init__(
        self, config: Config, signals: Signals, notifier: Notifier, config_arg: str | None
    ) -> None:
        self.config = config
        self.signals = signals
        self.notifier = notifier
        self.config_arg = config_arg
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self.store = Store(config)
        self.wake: Any = None
        self.leader = False
        self.next_renew = 0.0

    def run(self) -> None:
        if not wait_for_redis(self._connect, self.signals, self.notifier, what="scheduler"):
            return
        self.notifier.ready("standing by")
        log.info("scheduler started, pid %d", os.getpid())
        while not self.signals.stopping:
            if self.signals.reload:
                self._reload()
            try:
                self._step()
            except RedisFailure as error:
                log.warning("%s", error)
                self.leader = False
                self.next_renew = 0.0
                wait_for_redis(self._connect, self.signals, self.notifier, what="scheduler")
        self._stop()

    def _connect(self) -> None:
        self.store.ping()
        if self.wake is not None:
            self.wake.close()
        self.wake = self.store.subscribe_wake()

    def _reload(self) -> None:
        self.signals.reload = False
        fresh = reload_config(self.config_arg, self.config, self.notifier)
        if fresh is not self.config:
            self._release()
            self.config = fresh
            self.store = Store(fresh)
            self._connect()

    def _stop(self) -> None:
        self.notifier.status("stopping")
        self._release()
        log.info("scheduler stopped")

    def _release(self) -> None:
        if not self.leader:
            return
        try:
            self.store.release_leader(self.token)
        except RedisFailure as error:
            log.warning("could not release the leader lock: %s", error)
        self.leader = False

    def _step(self) -> None:
        now = time.monotonic()
        settings = self.config.scheduler
        if now >= self.next_renew:
            self._hold_lock(settings.lock_timeout_s)
            self.next_renew = now + settings.lock_timeout_s / 3
        self.notifier.watchdog()

        sleep_s = self.next_renew - now
        if self.leader:
            due = self.store.move_due(settings.batch_size)
            if due.moved:
                log.debug("moved %d due jobs to their queues", due.moved)
            if due.moved >= settings.batch_size:
                return
            if due.next_due_ms is not None:
                sleep_s = min(sleep_s, (due.next_due_ms - due.now_ms + 1) / 1000)
            self.notifier.status(
                "leader: moving due jobs" if due.next_due_ms else "leader: nothing scheduled"
            )
        self._sleep(min(sleep_s, self.notifier.max_sleep_s(MAX_SLEEP_S)))

    def _hold_lock(self, lock_timeout_s: float) -> None:
        was_leader = self.leader
        self.leader = self.store.hold_leader(self.token, round(lock_timeout_s * 1000))
        if self.leader and not was_leader:
            log.info("scheduler %s is now the leader", self.token)
        elif was_leader and not self.leader:
            log.warning("scheduler %s lost the leader lock; standing by", self.token)
        if not self.leader:
            self.notifier.status("standing by: another scheduler holds the lock")

    def _sleep(self, seconds: float) -> None:
        """Wait for a wake-up message, at most ``seconds``."""
        if seconds <= 0:
            return
        with translated(self.config.redis.url):
            message = self.wake.get_message(timeout=seconds)
            while message is not None:
                message = self.wake.get_message(timeout=0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = daemon_arguments("Move due delayed jobs and retries to their queues.", argv)
    args = parser.parse_args(argv)

    def body(config: Config, signals: Signals, notifier: Notifier) -> None:
        Scheduler(config, signals, notifier, args.config).run()

    sys.exit(run_daemon("queuectl-scheduler", body, args.config))
