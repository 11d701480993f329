"""Loading the Lua transition scripts.

Each ``lua/<name>.lua`` file is one state transition.  The helpers in
``lua/common.lua`` are put in front of each body, so Redis receives one
self-contained script per transition.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Scripts:
    """The registered scripts of one client; each call is one EVALSHA."""

    enqueue: Any
    claim: Any
    finish: Any
    heartbeat: Any
    requeue_lost: Any
    move_due: Any
    cancel: Any
    retry: Any
    remove_finished: Any
    worker_beat: Any
    worker_gone: Any
    leader: Any

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(**{name: client.register_script(source(name)) for name in SCRIPT_NAMES})
