"""State shared by the sections of one benchmark run: folders, programs, processes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from queuectld.config import Config, load
from queuectld.store import Store

from .procs import Processes, RedisServer, start_redis

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
# queuectl's console scripts sit next to the interpreter running the benchmark.
QUEUECTL_BIN = Path(sys.executable).parent


@dataclass
class Context:
    """One benchmark run: its scratch folder, the programs it uses, what it started."""

    folder: Path
    peers_python: Path
    stamp: Path
    processes: Processes = field(default_factory=Processes)
    servers: int = 0

    @property
    def peers_bin(self) -> Path:
        return self.peers_python.parent

    def subfolder(self, name: str) -> Path:
        path = self.folder / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def redis(self, name: str) -> RedisServer:
        """Start a fresh redis-server for one measurement."""
        self.servers += 1
        return start_redis(self.processes, self.subfolder(f"redis-{self.servers:02d}-{name}"))

    def peers_env(self, server: RedisServer) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUECTL_", "PYTHON"))}
        env["BENCH_REDIS_URL"] = server.url
        env["PYTHONPATH"] = str(PEERS)
        return env

    def queuectl_config(
        self, server: RedisServer, name: str, *, log_level: str = "info", **sections: str
    ) -> Path:
        """Write a queuectl config for ``server``; ``sections`` adds TOML lines per table."""
        run_dir = self.subfolder(f"run-{name}")
        tables = {
            "redis": f'url = "{server.url}"\nnamespace = "bench"\n',
            # The benchmark runs as root, like CI.
            "worker": f'run_dir = "{run_dir}"\nallow_root = true\n',
            "log": f'level = "{log_level}"\n',
        }
        for table, lines in sections.items():
            tables[table] = tables.get(table, "") + lines
        path = self.folder / f"queuectl-{name}.toml"
        path.write_text("".join(f"[{table}]\n{lines}" for table, lines in tables.items()))
        return path

    def queuectl_env(self, config_path: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
        env["QUEUECTL_CONFIG"] = str(config_path)
        return env


def open_store(config_path: Path) -> tuple[Config, Store]:
    config = load(str(config_path))
    return config, Store(config)
