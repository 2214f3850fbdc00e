"""The loop (``worker.loop.Worker.loop``) with an in-memory queue, a stand-in database server
and a fake aggregator: an outage after the messages are received gives every one back at once,
and the loop waits for the database without receiving anything."""

from __future__ import annotations

import threading

from spark_detector.config import WorkerSettings
from spark_detector.worker.loop import Worker
from tests.support.fakes import (
    BUCKET,
    QUEUE_URL,
    FakeAggregator,
    FakeServer,
    InMemoryQueue,
)


def key(seq: int) -> str:
    return f"stream_chunks/chunk-{seq:08d}-20261201T000000.000Z.csv"


def test_a_database_outage_after_a_receive_gives_every_message_back_at_once():
    queue, server, stop = InMemoryQueue(), FakeServer(), threading.Event()
    queue.send_chunk(key(1))
    queue.send_chunk(key(2))

    def outage() -> None:  # PostgreSQL goes away while the messages are in hand
        server.up = False
        stop.set()  # this turn is the test's last

    queue.on_receive = outage
    settings = WorkerSettings(bucket=BUCKET, queue_url=QUEUE_URL,
                              database_url="postgresql://x/y", db_retry_attempts=1,
                              wait_time_seconds=0)
    aggregator = FakeAggregator()
    worker = Worker(settings, s3=None, sqs=queue, connect=server.connect,
                    aggregate=aggregator, stop_event=stop)

    assert worker.loop() == 0
    assert sorted(queue.visible()) == ["h1", "h2"]  # visible again, not left to time out
    assert worker.db.down and worker.chunks == {} and aggregator.jobs == []
