"""The RQ job of the throughput benchmark: run `true` as a child process."""

import subprocess


def run_true() -> None:
    subprocess.run(["true"])
