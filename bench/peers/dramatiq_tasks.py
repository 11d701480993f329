"""The Dramatiq actor of the throughput benchmark, on the Redis broker.

The broker address comes from BENCH_REDIS_URL.
"""

import os
import subprocess

import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["BENCH_REDIS_URL"]))


@dramatiq.actor(queue_name="bench")
def run_true() -> None:
    subprocess.run(["true"])
