"""Two worker processes, one with micro-batches of 1 and one of 5, on one queue fed in a
shuffled order with duplicates once both are ready: the result is the single-worker result in
production order (the reference model applied in sequence order), key for key and chunk for
chunk, with both workers applying chunks and chunks waiting for predecessors.

Left alone, one worker keeps the stream's head and the other applies nothing: the workers
take turns (``share_the_stream``), so that each really applies chunks of the one stream."""

from __future__ import annotations

import random
import signal

import pytest

from infra.local.stack import poll_until
from tests.support.workers import (
    AwsResources,
    applied_count,
    assert_applied_in_production_order,
    assert_each_worker_applied_and_one_chunk_waited,
    log_lines,
    share_the_stream,
    split_chunks,
    start_worker,
    worker_env,
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
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-5.log"]
    workers = [
        start_worker(worker_env(resources, migrated_database_url, SPARK_MASTER="local[1]",
                                WORKER_MAX_BATCH_CHUNKS=str(size),
                                WORKER_VISIBILITY_TIMEOUT_SECONDS="30",
                                WORKER_HEARTBEAT_AFTER_SECONDS="5"), log)
        for size, log in zip((1, 5), logs, strict=True)
    ]
    try:
        for worker, log in zip(workers, logs, strict=True):  # both ready before any chunk
            poll_until(lambda log=log: log_lines(log, "worker started"), 180, "worker ready",
                       process=worker, log=log, tail=3000)
        share_the_stream(
            migrated_database_url, len(keys),
            lambda: resources.enqueue(shuffled + shuffled[:6]),  # six events delivered twice
            (workers[0], logs[0]), (workers[1], logs[1]),
            stop_first=lambda: workers[0].send_signal(signal.SIGTERM) or workers[0].wait(120))
        poll_until(lambda: applied_count(migrated_database_url) == len(keys)
                   and resources.depth() == 0, 400, "every chunk applied by the two workers",
                   process=workers[1], log=logs[1])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=120) for worker in workers]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]

    assert_applied_in_production_order(migrated_database_url, chunks, importance)
    assert resources.depth(resources.dlq_url) == 0
    assert_each_worker_applied_and_one_chunk_waited(logs)
