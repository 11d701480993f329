"""Loading the Lua transition scripts.

Each ``lua/<name>.lua`` file is one state transition.  The helpers in
``lua/common.lua`` are put in front of each body, so Redis receives one
self-contained script per transition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis

SCRIPT_NAMES = (
    "enqueue",
    "claim",
    "finish",
    "heartbeat",
    "requeue_lost",
    "move_due",
    "cancel",
    "retry",
    "remove_finished",
    "worker_beat",
    "worker_gone",
    "leader",
)


@cache
def source(name: str) -> str:
    """Return the full text sent to Redis for script ``name``."""
    folder = resources.files("queuectld") / "lua"
    common = (folder / "common.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return common + "\n" + body


class Scripts:
    """The scripts of one client, as attributes named as in SCRIPT_NAMES.

    Each is a redis-py ``Script``, registered on first use, and each call of
    it is one EVALSHA.  A CLI command uses one or two scripts, so registering
    all of them up front would read and hash files for nothing.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(client)

    def __getattr__(self, name: str) -> Any:
        # Python calls this only for attributes not set yet, so only on the
        # first use of each script.
        if name not in SCRIPT_NAMES:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        script = self._client.register_script(source(name))
        setattr(self, name, script)
        return script


def pack(parts: Iterable[bytes | str | int]) -> bytes:
    """Encode ``parts`` as consecutive RESP bulk strings."""
    chunks = []
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(chunks)


class DirectCall:
    """One script called with hand-packed ``EVALSHA`` on a connection of its own.

    ``Script.__call__`` costs about three times the CPU time of this path in
    redis-py, because it builds and packs every argument anew on each call.
    The worker's finish script and pipelined enqueue batches use this one:
    the connection is never shared, and ``send`` and ``receive`` let a
    caller keep several calls in flight.  Errors are redis-py's own, for the
    caller to translate.
    """

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.name = name
        self.sha = hashlib.sha1(source(name).encode()).hexdigest()
        self.connection = client.connection_pool.make_connection()
        self._head = pack(["EVALSHA", self.sha])

    def __call__(self, key_count: int, keys: bytes, args: Sequence[bytes | str | int]) -> Any:
        """Run the script on pre-packed ``keys`` (``key_count`` of them) and ``args``."""
        try:
            self.send(key_count, keys, args)
            return self.receive()
        except redis.exceptions.NoScriptError:
            # Redis restarted or flushed its script cache: send the source once.
            self.send(key_count, keys, args, head=pack(["EVAL", source(self.name)]))
            return self.receive()

    def send(
        self,
        key_count: int,
        keys: bytes,
        args: Sequence[bytes | str | int],
        *,
        head: bytes | None = None,
    ) -> None:
        """Send one call without reading its reply; ``receive`` reads replies in order."""
        count = b"*%d\r\n" % (3 + key_count + len(args))
        body = pack([key_count]) + keys + pack(args)
        try:
            self.connection.send_packed_command(
                [count + (head or self._head) + body], check_health=False
            )
        except BaseException:
            self.close()
            raise

    def receive(self) -> Any:
        """Read the reply of the oldest call sent."""
        try:
            return self.connection.read_response()
        except redis.exceptions.ResponseError:
            raise
        except BaseException:
            # A reply may be half read: start afresh on the next call.
            self.close()
            raise

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        self.connection.disconnect()
