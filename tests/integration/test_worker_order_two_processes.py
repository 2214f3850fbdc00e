"""Two worker processes, one with micro-batches of 1 and one of 5, on one queue fed in a
shuffled order with duplicates: the result is the single-worker result in production order
(the reference model applied in sequence order), key for key and chunk for chunk."""

from __future__ import annotations

import random
import signal

import pytest

from infra.local.stack import poll_until
from tests.integration.test_worker_crash import applied_count, start_worker, worker_env
from tests.integration.worker_support import (
    AwsResources,
    applied_order,
    committed_detections,
    expected_detections,
    split_chunks,
)

pytestmark = pytest.mark.spark


def test_two_workers_with_batches_of_1_and_5_give_the_production_order_result(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 500).items())[:30])
    keys = sorted(chunks)
    resources = AwsResources.create(moto_endpoint, visibility_timeout=30, max_receive_count=50)
    resources.upload(chunks)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    shuffled = random.Random(11).sample(keys, len(keys))
    resources.enqueue(shuffled + shuffled[:6])  # six events delivered twice
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-5.log"]
    workers = [
        start_worker(worker_env(resources, migrated_database_url, SPARK_MASTER="local[1]",
                                WORKER_MAX_BATCH_CHUNKS=str(size),
                                WORKER_VISIBILITY_TIMEOUT_SECONDS="30",
                                WORKER_HEARTBEAT_AFTER_SECONDS="5"), log)
        for size, log in zip((1, 5), logs, strict=True)
    ]
    try:
        poll_until(lambda: applied_count(migrated_database_url) == len(keys)
                   and resources.depth() == 0, 400, "every chunk applied by the two workers",
                   process=workers[0], log=logs[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=120) for worker in workers]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]

    assert applied_order(migrated_database_url) == keys
    assert committed_detections(migrated_database_url) == expected_detections(
        chunks, importance, keys)
    assert resources.depth(resources.dlq_url) == 0
    both_worked = [log.read_text().count('"chunk applied"') for log in logs]
    print(f"chunks applied per worker (batches of 1, of 5): {both_worked}")
