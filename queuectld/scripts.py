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
    A worker calls the finish script once per job, so it uses this one:
    the keys come packed by the caller, and the connection is never shared.
    Errors are redis-py's own, for the caller to translate.
    """

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.name = name
        self.sha = hashlib.sha1(source(name).encode()).hexdigest()
        self.connection = client.connection_pool.make_connection()
        self._head = pack(["EVALSHA", self.sha])

    def __call__(self, key_count: int, keys: bytes, args: Sequence[bytes | str | int]) -> Any:
        """Run the script on pre-packed ``keys`` (``key_count`` of them) and ``args``."""
        count = b"*%d\r\n" % (3 + key_count + len(args))
        body = pack([key_count]) + keys + pack(args)
        try:
            return self._send(count + self._head + body)
        except redis.exceptions.NoScriptError:
            # Redis restarted or flushed its script cache: send the source once.
            return self._send(count + pack(["EVAL", source(self.name)]) + body)

    def _send(self, payload: bytes) -> Any:
        try:
            self.connection.send_packed_command([payload], check_health=False)
            return self.connection.read_response()
        except redis.exceptions.ResponseError:
            raise
        except BaseException:
            # A reply may be half read: start afresh on the next call.
            self.connection.disconnect()
            raise

    def close(self) -> None:
        self.connection.disconnect()
