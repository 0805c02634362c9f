"""The dramatiq actor for the task-queue baseline (``dramatiq bench.dq_tasks``).

One actor takes a batch of consecutive lines of one input (a batch of one is
the message-per-address variant), runs them through the same pipeline as
every other system and stores the result bytes in Redis, keyed by the batch's
first line so the benchmark can write them out in input order.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from bench.work import work_lines

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "ipspool-bench"

broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)
_results = redis.Redis.from_url(URL)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def process_batch(run: str, file_no: int, first_line: int, lines: list[str], stages: list[str],
                  config: str = "") -> None:
    data = work_lines(tuple(stages), first_line, [line.encode() for line in lines], config)
    pipe = _results.pipeline(transaction=False)
    pipe.hset(f"{run}:res:{file_no}", str(first_line), data)
    pipe.incrby(f"{run}:done", len(lines))
    pipe.execute()
