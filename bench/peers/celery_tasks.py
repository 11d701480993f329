"""The Celery task of the throughput benchmark, on the Redis broker.

The broker address comes from BENCH_REDIS_URL.  Results are not stored.
Tasks are acknowledged after they return (task_acks_late), which gives the
same at-least-once delivery as queuectl, RQ and Dramatiq.  It also makes the
queue and the broker's unacked hash empty exactly when every task has
finished, so the benchmark can tell when a run is over.
"""

import os
import subprocess

from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.task_default_queue = "bench"
app.conf.task_acks_late = True
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True


@app.task
def run_true() -> None:
    subprocess.run(["true"])
