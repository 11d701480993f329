"""Enqueue COUNT jobs of the benchmark's task into one peer's Redis queue.

Usage: enqueue.py rq|dramatiq|celery COUNT, with BENCH_REDIS_URL set.  Runs
in the peers' virtualenv, with this folder as the working directory.
"""

import os
import sys

# RQ's enqueue_many sends one pipeline per call; this bounds its size.
RQ_BATCH = 1000


def enqueue_rq(count: int) -> None:
    from redis import Redis
    from rq import Queue
    from rq_tasks import run_true

    queue = Queue("bench", connection=Redis.from_url(os.environ["BENCH_REDIS_URL"]))
    for start in range(0, count, RQ_BATCH):
        size = min(RQ_BATCH, count - start)
        queue.enqueue_many([Queue.prepare_data(run_true) for _ in range(size)])


def enqueue_dramatiq(count: int) -> None:
    from dramatiq_tasks import run_true

    for _ in range(count):
        run_true.send()


def enqueue_celery(count: int) -> None:
    from celery_tasks import app, run_true

    with app.producer_or_acquire() as producer:
        for _ in range(count):
            run_true.apply_async(producer=producer)


def main() -> None:
    system, count = sys.argv[1], int(sys.argv[2])
    enqueuers = {"rq": enqueue_rq, "dramatiq": enqueue_dramatiq, "celery": enqueue_celery}
    if system not in enqueuers:
        sys.exit(f"enqueue.py: unknown system {system!r}; use one of {', '.join(enqueuers)}")
    enqueuers[system](count)


if __name__ == "__main__":
    main()
