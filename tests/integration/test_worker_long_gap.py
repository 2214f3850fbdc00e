"""A very long gap: more early chunks than the worker may hold (WORKER_MAX_HELD_CHUNKS) wait
for a predecessor. The worker stops receiving while its hand is full, so the extra messages
stay in the queue untouched - never bounced until SQS's maxReceiveCount dead-letters them
without a reason - and are applied once the gap closes. In-process: moto server, real
PostgreSQL, the session's SparkSession."""

from __future__ import annotations

import pytest

from chunk_contract.layout import CHUNK_PREFIX
from spark_detector import db
from spark_detector.ops.status import collect_status
from tests.support.workers import (
    AwsResources,
    applied_order,
    assert_applied_in_production_order,
    make_worker,
    run_until_idle,
    split_chunks,
)

pytestmark = pytest.mark.spark


def test_early_chunks_beyond_the_hold_limit_wait_in_the_queue_and_are_applied_after_the_gap(
        spark, weights, dataset, moto_endpoint, migrated_database_url):
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 500).items())[:8])
    keys = sorted(chunks)
    # A queue whose backstop dead-letters a message received three times.
    resources = AwsResources.create(moto_endpoint, visibility_timeout=30, max_receive_count=2)
    resources.upload({k: chunks[k] for k in keys[1:]})  # chunk 1 is not there (yet)
    resources.enqueue(keys[1:])
    worker = make_worker(resources, migrated_database_url, spark, weights, max_held_chunks=3,
                         max_batch_chunks=4, visibility_timeout_seconds=2,
                         heartbeat_after_seconds=1)

    # Long enough for a message put back for the 2 s visibility timeout to be received three
    # times over (the old behaviour, which ended in the DLQ).
    for _ in range(12):
        worker.run_batch()

    assert len(worker.chunks) == 3
    assert applied_order(migrated_database_url) == []
    assert resources.depth(resources.dlq_url) == 0
    assert resources.depth() == len(keys) - 1  # three held, four never received
    conn = db.connect(migrated_database_url)
    status = collect_status(conn, resources.sqs, worker.settings)
    conn.close()
    assert status.next_seq == 1 and status.waiting_since is not None

    # The predecessor turns up (its event lost): the worker finds it in S3, and the stream
    # drains.
    resources.upload({keys[0]: chunks[keys[0]]})
    run_until_idle(worker)

    assert_applied_in_production_order(migrated_database_url, chunks, importance)
    assert resources.depth() == 0 and resources.depth(resources.dlq_url) == 0
    assert all(k.startswith(CHUNK_PREFIX) for k in keys)
    worker.close()
